// veto console. Every action goes through the registry's admin API with
// the token in the Authorization header; the token is kept in this tab's
// sessionStorage only (never in a URL, a cookie or a log).
"use strict";

const KEY = "veto-token";
const $ = (id) => document.getElementById(id);
let fleetAbort = null;
let auditNext = null;

function token() {
  return sessionStorage.getItem(KEY);
}

/// Calls the API; resolves to the parsed JSON, rejects with the registry's message.
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: "Bearer " + token() });
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!resp.ok) {
    const err = new Error((body && body.message) || ("HTTP " + resp.status));
    err.status = resp.status;
    err.code = body && body.error;
    throw err;
  }
  return body;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s.toFixed(1) + " s ago";
}

function utc(secs) {
  return secs ? new Date(secs * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
}

function unixFrom(input) {
  // datetime-local values are read as UTC, as the labels say.
  return input.value ? Math.floor(Date.parse(input.value + "Z") / 1000) : undefined;
}

// ---------------------------------------------------------------- sign-in

async function signIn(t) {
  sessionStorage.setItem(KEY, t);
  try {
    await api("/v1/fleet");
  } catch (e) {
    if (e.status === 401) {
      sessionStorage.removeItem(KEY);
      $("signin-error").textContent = "Not signed in: " + e.message;
      return;
    }
    // 403: the token has other scopes; the fleet sections say so.
  }
  $("signin-error").textContent = "";
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = "Signed in (the token is in this tab only).";
  startFleet();
  refreshChart();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  if (fleetAbort) fleetAbort.abort();
  location.reload();
}

// ---------------------------------------------------------------- fleet

function renderFleet(f) {
  const gws = f.gateways || [];
  const count = (s) => gws.filter((g) => g.state === s).length;
  $("fleet-summary").textContent =
    `Head version ${f.head}: ${gws.length} gateways, ${count("live")} live, ` +
    `${count("stale")} stale, ${count("lost")} lost.`;
  const tbody = $("fleet-table").tBodies[0];
  tbody.replaceChildren();
  for (const g of gws) {
    const tr = document.createElement("tr");
    tr.className = "state-" + g.state;
    tr.dataset.name = g.name;
    cell(tr, g.name);
    cell(tr, g.id.slice(0, 12));
    cell(tr, g.applied_version);
    cell(tr, g.lag);
    cell(tr, g.state === "live" ? "live" : g.state.toUpperCase(), "state");
    cell(tr, g.staleness_s === null || g.staleness_s === undefined ? null : g.staleness_s + " s");
    cell(tr, g.push ? g.push + (g.push_connected ? "" : " (disconnected)") : null);
    cell(tr, ago(g.last_report_ms));
    cell(tr, g.error || "");
    tbody.appendChild(tr);
  }
  const s = f.state || {};
  const dl = $("state-dl");
  dl.replaceChildren();
  const add = (k, v) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  };
  add("Version", s.version);
  add("Head", s.head);
  if (s.entries) add("Entries", `${s.entries.warrant} warrants, ${s.entries.agent} agents, ${s.entries.key} keys`);
  add("Last checkpoint", utc(s.checkpoint_iat));
}

/// Reads GET /v1/fleet/events (server-sent events) with the token in a
/// header, which EventSource cannot send; reconnects after a second.
async function startFleet() {
  if (fleetAbort) fleetAbort.abort();
  fleetAbort = new AbortController();
  const signal = fleetAbort.signal;
  while (!signal.aborted) {
    try {
      const resp = await fetch("/v1/fleet/events", {
        headers: { Authorization: "Bearer " + token() },
        signal,
        cache: "no-store",
      });
      if (resp.status === 403) {
        $("fleet-summary").textContent = "This token does not have the fleet scope.";
        return;
      }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) renderFleet(JSON.parse(data));
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      $("fleet-summary").textContent = "Fleet stream interrupted (" + e.message + "); reconnecting…";
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ---------------------------------------------------------------- revoke

async function revoke(ev) {
  ev.preventDefault();
  const entry = {
    kind: $("rv-kind").value,
    id: $("rv-id").value.trim(),
    reason: $("rv-reason").value,
  };
  if ($("rv-note").value) entry.note = $("rv-note").value;
  const exp = unixFrom($("rv-expires"));
  if (exp) entry.expires_at = exp;
  if (entry.kind === "agent") entry.before = Math.floor(Date.now() / 1000);
  $("conv-summary").textContent = "";
  $("conv-list").replaceChildren();
  try {
    const r = await api("/v1/revocations", { method: "POST", body: JSON.stringify({ entries: [entry] }) });
    const e = r.entries[0];
    $("revoke-result").textContent = e.created
      ? `Revoked ${e.kind} ${e.id} in version ${e.version}.`
      : `${e.kind} ${e.id} was already revoked in version ${e.version}.`;
    watchConvergence(e.version);
  } catch (err) {
    $("revoke-result").textContent = "Not revoked: " + err.message;
  }
}

/// Shows version `ver` reaching every gateway: "enforced by k of n".
async function watchConvergence(ver) {
  const started = Date.now();
  for (;;) {
    let v;
    try {
      v = await api(`/v1/fleet/versions/${ver}`);
    } catch (err) {
      $("conv-summary").textContent = "Cannot follow the convergence: " + err.message;
      return;
    }
    const done = v.enforced === v.of;
    $("conv-summary").textContent = done
      ? `Version ${ver}: enforced by ${v.enforced} of ${v.of} gateways, the last at +${v.last_after_ms} ms.`
      : `Version ${ver}: enforced by ${v.enforced} of ${v.of} gateways…`;
    const list = $("conv-list");
    list.replaceChildren();
    for (const g of v.gateways) {
      const li = document.createElement("li");
      li.dataset.name = g.name;
      li.textContent = g.applied_ms
        ? `${g.name}: in force, +${g.after_ms} ms`
        : `${g.name}: NOT YET (${g.state})`;
      list.appendChild(li);
    }
    if (done) {
      refreshChart();
      return;
    }
    if (Date.now() - started > 60000) return;
    await new Promise((r) => setTimeout(r, 250));
  }
}

// ---------------------------------------------------------------- audit

async function audit(ev, more) {
  if (ev) ev.preventDefault();
  const q = new URLSearchParams({ limit: "50" });
  for (const [k, id] of [["kind", "au-kind"], ["id", "au-id"], ["actor", "au-actor"]]) {
    if ($(id).value) q.set(k, $(id).value.trim());
  }
  const since = unixFrom($("au-since"));
  const until = unixFrom($("au-until"));
  if (since) q.set("since", since);
  if (until) q.set("until", until);
  if (more && auditNext !== null) q.set("after", auditNext);
  const tbody = $("audit-table").tBodies[0];
  if (!more) tbody.replaceChildren();
  try {
    const r = await api("/v1/revocations?" + q.toString());
    for (const a of r.items) {
      const tr = document.createElement("tr");
      cell(tr, a.seq); cell(tr, utc(a.at)); cell(tr, a.actor); cell(tr, a.action);
      cell(tr, a.kind); cell(tr, a.id); cell(tr, a.reason); cell(tr, a.version); cell(tr, a.note || "");
      tbody.appendChild(tr);
    }
    auditNext = r.next;
    $("audit-more").hidden = r.next === null || r.next === undefined;
    $("audit-status").textContent = `${tbody.rows.length} records shown.`;
  } catch (err) {
    $("audit-status").textContent = "Cannot read the audit log: " + err.message;
  }
}

// ---------------------------------------------------------------- chart

async function refreshChart() {
  let head;
  try {
    head = (await api("/v1/fleet")).head;
  } catch (_) {
    return;
  }
  const versions = [];
  for (let v = Math.max(1, head - 19); v <= head; v++) versions.push(v);
  const rows = [];
  for (const v of versions) {
    try {
      const r = await api(`/v1/fleet/versions/${v}`);
      rows.push({ v, ms: r.last_after_ms, enforced: r.enforced, of: r.of });
    } catch (_) {
      rows.push({ v, ms: null, enforced: null, of: null });
    }
  }
  const svg = $("chart-svg");
  const NS = "http://www.w3.org/2000/svg";
  for (const el of [...svg.querySelectorAll("rect, text, line")]) el.remove();
  const max = Math.max(1, ...rows.map((r) => r.ms || 0));
  const w = 600 / Math.max(1, rows.length);
  const axis = document.createElementNS(NS, "line");
  for (const [k, val] of [["x1", 30], ["y1", 180], ["x2", 640], ["y2", 180], ["class", "axis"]]) axis.setAttribute(k, val);
  svg.appendChild(axis);
  rows.forEach((r, i) => {
    const h = r.ms === null ? 6 : Math.max(2, (r.ms / max) * 160);
    const rect = document.createElementNS(NS, "rect");
    rect.setAttribute("x", String(32 + i * w));
    rect.setAttribute("y", String(180 - h));
    rect.setAttribute("width", String(Math.max(2, w - 4)));
    rect.setAttribute("height", String(h));
    rect.setAttribute("class", r.ms === null ? "bar-missing" : "bar");
    svg.appendChild(rect);
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", String(32 + i * w));
    label.setAttribute("y", "195");
    label.textContent = String(r.v);
    svg.appendChild(label);
  });
  const top = document.createElementNS(NS, "text");
  top.setAttribute("x", "0");
  top.setAttribute("y", "20");
  top.textContent = max + " ms";
  svg.appendChild(top);
  const tbody = $("chart-table").tBodies[0];
  tbody.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    cell(tr, r.v);
    cell(tr, r.of === null ? null : `${r.enforced} of ${r.of}`);
    cell(tr, r.ms === null ? "not everywhere yet (or not kept)" : `+${r.ms} ms`);
    tbody.appendChild(tr);
  }
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    $("token").value = "";
    if (t) signIn(t);
  });
  $("signout").addEventListener("click", signOut);
  $("revoke-form").addEventListener("submit", revoke);
  $("audit-form").addEventListener("submit", (ev) => audit(ev, false));
  $("audit-more").addEventListener("click", () => audit(null, true));
  $("chart-refresh").addEventListener("click", refreshChart);
  if (token()) signIn(token());
});
