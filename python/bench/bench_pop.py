#!/usr/bin/env python3
"""Checking a delegation chain with proof of possession, from Python:
Tenuo 0.3.3's `Authorizer.check_chain` with its PoP signature beside
`veto.Authorizer.check` with a DPoP proof, same depth, one run.

    python3 -m pip install ./python tenuo==0.3.3
    python3 python/bench/bench_pop.py [--depth 4] [--rounds 20] [--batch 250] [--entries 100]

(run from the repository root, not from ./python, or the source directory
shadows the installed `veto` package).

Pinned: tenuo==0.3.3 (native `tenuo_core`, ed25519-dalek, CBOR warrants).

Chains: `--depth` links (default 4: a root plus three delegations, each to
a new holder key), the leaf holder signs one proof per call. Every call
gets a fresh proof for a different request (`/orders/<i>`), made before
the timed section: each round first makes `--batch` proofs, then times
`--batch` checks one by one (`time.perf_counter_ns` around each call, GC
off). Variants run in rotation within each round, so drift on a shared
machine hits all of them alike. Reported per variant over rounds x batch
calls: median, p99 and mean µs per check, and the range of the
per-round medians. Every result is checked after its batch (all
allowed); a denial aborts the run.

Tenuo (all from `tenuo`, trusted root pinned, an SRL of `--entries` ids
from that root installed with `set_revocation_list`):

    root  = Warrant.issue(root_key, capabilities={"orders_get": {"path": Pattern("/orders/*")}},
                          ttl_seconds=3600, holder=k0.public_key)
    child = parent.attenuate({...same...}, k_parent, ttl_seconds=600, holder=k_child.public_key)
    sig   = leaf.sign(k_leaf, "orders_get", {"path": "/orders/<i>"}, int(time.time()))  # PoP, 64 bytes
    authz = Authorizer(trusted_roots=[root_key.public_key])
    authz.check_chain(chain, "orders_get", {"path": "/orders/<i>"}, sig)       # measured
    authz.check_chain(decode_warrant_stack_base64(stack), ...same...)          # measured (from the wire)
    authz.verify_chain(chain)                                                  # measured (no PoP, no action)
    leaf.verify(leaf.issuer.to_bytes())                                        # measured: one Ed25519

`check_chain` keeps no state between calls: every call checks the SRL
for each link, batch-verifies every link's signature
(`ed25519_dalek::verify_batch` over `depth` signatures), walks the links
(linkage, narrowing, expiry), then verifies the PoP signature on the leaf
(`verify_strict`, first for the current 30 s window; a proof made in an
earlier window costs one more verification per window stepped back),
matches the constraints and base64-encodes the warrant stack into its
result. `decode_warrant_stack_base64` (like `Warrant.from_bytes`)
verifies each warrant's signature as it deserializes it, so a service
that receives the stack on the wire (`X-Tenuo-Warrant`) and checks it
verifies every link twice per call: `depth` single verifications in the
decode, `depth` batched ones in `check_chain`, plus the PoP.
Tenuo 0.3.3 has no verified-chain cache (none in `Authorizer`,
none in the Python layer), so there is no cached Tenuo variant to
measure. Its PoP has no nonce: the same signature is accepted again
within the window (replay protection is a separate `NonceStore` in the
Python enforcement layer, not used by `Authorizer`). A Tenuo batch whose
signing and checking fall in different 30-s windows is redone (counted
in the output) so that every Tenuo figure is for the one-PoP-verify case.

Tenuo's check also costs time linear in the installed SRL's size, once
per call whatever the depth (measured with 0.3.3 here: 0.07-0.11 µs
per revoked id, so ~0.8 ms more per check at 10,000 ids and ~11 ms at
100,000, `--entries 10000` shows it; the cause is inside the native
extension). To keep this a comparison of
chain and proof checking, `--entries` defaults to 100, and
`verify_chain` is also measured on an authorizer with no SRL installed.
veto's revocation probes (a Bloom filter, then a binary search) grow at
most with the log of the state's size.

veto: a real `veto serve` (VETO_BIN, or the newest build under
CARGO_TARGET_DIR or ./target) holding `--entries` revoked ids; the root
minted by it, the delegations made offline (`Chain.delegate`); an
in-process `veto.Authorizer` (pop="required") synced to it:

    proof = veto.dpop_proof(chain, k_leaf, "GET", "http://svc.test/orders/<i>")
    authz.check(chain, action="http:GET:/orders/<i>", dpop=proof,
                method="GET", url="http://svc.test/orders/<i>")                # measured

  * warm: the same chain every call, so the verified-chain cache (keyed by
    the chain text, primed by the first check, as in normal use) holds
    it: per call one Ed25519 verification (the proof's), the proof's
    JWS/claims parse, `ath` (SHA-256 of the chain), `htu`/`htm`, the
    replay-cache insert of its `jti`, and revocation (every link), time
    and action checks. The chain's signatures are NOT re-verified.
  * cold: a distinct chain every call (the last delegation made anew per
    call, outside the timed section), so every call misses the cache and
    parses the chain from its text and verifies all `depth` link
    signatures one by one (`verify_strict`) plus the proof: the
    like-for-like of Tenuo's `check_chain`, which verifies every
    signature on every call (Tenuo batches its chain's signatures).
  * bearer: the warm chain on a second authorizer with pop="off" and no
    proof: the warm check without the proof, so warm - bearer is what the
    proof costs.

veto's own single-signature verification is not exposed to Python; the
Ed25519 reference shown beside Tenuo's is `cryptography`'s (OpenSSL)
`Ed25519PublicKey.verify` of a 300-byte message, when installed, and
veto's warm - bearer difference (one verification plus the proof's parse
and bookkeeping). Every figure includes the Python -> native call; the
`len()` line is the floor of a timed Python call.
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import veto
from bench_check import veto_bin  # the same binary lookup (VETO_BIN, then target/)

try:
    import tenuo
    from tenuo import Authorizer as TenuoAuthorizer
    from tenuo import Pattern, SigningKey, SrlBuilder, Warrant, decode_warrant_stack_base64, encode_warrant_stack
except ImportError as exc:  # pragma: no cover
    sys.exit(f"cannot import tenuo ({exc}): pip install tenuo==0.3.3")

TOOL = "orders_get"
BASE = "http://svc.test"
POP_WINDOW = 30  # Tenuo's PoP window (POP_TIMESTAMP_WINDOW_SECS, Authorizer pop_window_secs default)


def start_registry(data):
    proc = subprocess.Popen([veto_bin(), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("veto registry listening on"):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, next(w for w in line.split() if w.startswith("http"))
    proc.kill()
    sys.exit("veto serve did not start:\n" + "".join(lines))


def timed(fn, inputs):
    """ns per call, each call timed on its own; and the results."""
    pc = time.perf_counter_ns
    ns, out = [], []
    gc.disable()
    try:
        for args in inputs:
            t0 = pc()
            r = fn(*args)
            t1 = pc()
            ns.append(t1 - t0)
            out.append(r)
    finally:
        gc.enable()
    return ns, out


def pct(sorted_xs, p):
    return sorted_xs[min(len(sorted_xs) - 1, int(round(p / 100 * (len(sorted_xs) - 1))))]


class Variant:
    def __init__(self, name, sigs, prepare, fn, ok):
        self.name, self.sigs, self.prepare, self.fn, self.ok = name, sigs, prepare, fn, ok
        self.ns, self.round_medians = [], []

    def run(self, r, batch):
        inputs = self.prepare(r, batch)
        ns, out = timed(self.fn, inputs)
        bad = [o for o in out if not self.ok(o)]
        if bad:
            sys.exit(f"{self.name}: {len(bad)} of {len(out)} not allowed, e.g. {bad[0]!r}")
        self.ns += ns
        self.round_medians.append(statistics.median(ns))

    def row(self, floor_us=None):
        xs = sorted(self.ns)
        med, p99, mean = pct(xs, 50) / 1e3, pct(xs, 99) / 1e3, statistics.fmean(xs) / 1e3
        lo, hi = min(self.round_medians) / 1e3, max(self.round_medians) / 1e3
        rel = f"  {med / floor_us:4.1f}x" if floor_us else ""
        return f"  {self.name:<44} {med:8.1f} {p99:8.1f} {mean:8.1f}   {lo:7.1f}-{hi:<7.1f} {self.sigs:>7}{rel}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4, help="links in the chain: root + depth-1 delegations (default 4)")
    ap.add_argument("--rounds", type=int, default=20, help="rounds; each times one batch of every variant (default 20)")
    ap.add_argument("--batch", type=int, default=250, help="checks per variant per round, one fresh proof each (default 250)")
    ap.add_argument("--entries", type=int, default=100, help="revoked ids in each side's revocation state (default 100)")
    a = ap.parse_args()
    if not 1 <= a.depth <= 8:
        sys.exit("--depth 1..8 (veto's limit is 8 links)")
    d = a.depth

    # ---------------- Tenuo ----------------
    root_key = SigningKey.generate()
    tkeys = [SigningKey.generate() for _ in range(d)]
    caps = {TOOL: {"path": Pattern("/orders/*")}}
    tchain = [Warrant.issue(root_key, capabilities=caps, ttl_seconds=3600, holder=tkeys[0].public_key)]
    for i in range(1, d):
        tchain.append(tchain[-1].attenuate(caps, tkeys[i - 1], ttl_seconds=600, holder=tkeys[i].public_key))
    tleaf, tleaf_key = tchain[-1], tkeys[-1]
    stack = encode_warrant_stack(tchain)
    assert [w.id for w in decode_warrant_stack_base64(stack)] == [w.id for w in tchain]
    tauthz = TenuoAuthorizer(trusted_roots=[root_key.public_key])
    tbare = TenuoAuthorizer(trusted_roots=[root_key.public_key])  # no SRL installed
    ids = [str(uuid.UUID(int=i, version=4)) for i in range(a.entries)]
    if ids:
        tauthz.set_revocation_list(SrlBuilder().revoke_all(ids).version(1).build(root_key))
    leaf_issuer = tleaf.issuer.to_bytes()
    assert tleaf.verify(leaf_issuer)

    tenuo_state = {"redone": 0}

    def tenuo_proofs(r, n, wire):
        chain = stack if wire else tchain
        now = int(time.time())
        if (now + 2) // POP_WINDOW != now // POP_WINDOW:  # too near a window edge: wait it out
            time.sleep(POP_WINDOW - now % POP_WINDOW + 0.01)
            now = int(time.time())
        tenuo_state["window"] = now // POP_WINDOW
        out = []
        for i in range(n):
            args = {"path": f"/orders/{r}-{i}"}
            out.append((chain, TOOL, args, tleaf.sign(tleaf_key, TOOL, args, now)))
        return out

    def check_chain_wire(stack_b64, tool, args, sig):
        return tauthz.check_chain(decode_warrant_stack_base64(stack_b64), tool, args, sig)

    class TenuoVariant(Variant):
        def run(self, r, batch):
            for _ in range(3):
                before = len(self.ns)
                super().run(r, batch)
                if int(time.time()) // POP_WINDOW == tenuo_state["window"]:
                    return
                del self.ns[before:]  # crossed a window edge: some checks needed a second verification
                self.round_medians.pop()
                tenuo_state["redone"] += 1
            sys.exit("Tenuo batches keep crossing PoP windows: use a smaller --batch")

    t_ok = lambda res: res is not None and getattr(res, "chain_length", d) == d
    variants = [
        TenuoVariant(f"tenuo check_chain + PoP (Warrant list)", f"{d}b+1",
                     lambda r, n: tenuo_proofs(r, n, False), tauthz.check_chain, t_ok),
        TenuoVariant(f"tenuo decode stack + check_chain + PoP", f"{d}+{d}b+1",
                     lambda r, n: tenuo_proofs(r, n, True), check_chain_wire, t_ok),
        Variant(f"tenuo verify_chain (no PoP, no action)", f"{d}b",
                lambda r, n: [(tchain,)] * n, tauthz.verify_chain, t_ok),
        Variant(f"tenuo verify_chain, no SRL installed", f"{d}b",
                lambda r, n: [(tchain,)] * n, tbare.verify_chain, t_ok),
        Variant("tenuo leaf.verify(issuer): one Ed25519", "1",
                lambda r, n: [(leaf_issuer,)] * n, tleaf.verify, lambda ok: ok is True),
    ]

    # ---------------- veto ----------------
    tmp = Path(tempfile.mkdtemp(prefix="veto-popbench-"))
    proc, url = start_registry(tmp / "data")
    try:
        token = (tmp / "data" / "admin.token").read_text().strip()
        reg = veto.Registry(url, token=token)
        for i in range(0, a.entries, 1000):
            body = {"entries": [{"kind": "warrant", "id": f"bench-{j}", "reason": "superseded"}
                                for j in range(i, min(i + 1000, a.entries))]}
            req = urllib.request.Request(url + "/v1/revocations", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
            urllib.request.urlopen(req).read()
        vkeys = [veto.Key.generate() for _ in range(d)]
        vchain = [reg.mint(agent="a0", act=["http:*:/orders/*"], ttl=3600, holder=vkeys[0].public)]
        for i in range(1, d):
            vchain.append(vchain[-1].delegate(vkeys[i - 1], agent=f"a{i}", act=["http:GET:/orders/*"], ttl=3000 - 100 * i,
                                              to=vkeys[i].public))
        leaf, leaf_key = vchain[-1], vkeys[-1]
        chain_text = str(leaf)
        assert len(leaf.links) == d
        authority = tmp / "data" / "authority.pub.jwk"
        vauthz = veto.Authorizer(registry=url, authority_key=authority)
        bauthz = veto.Authorizer(registry=url, authority_key=authority, pop="off")
        for z in (vauthz, bauthz):
            while z.status()["entries"] < a.entries:
                time.sleep(0.05)

        def veto_proofs(r, n, chains=None):
            out = []
            for i in range(n):
                u = f"{BASE}/orders/{r}-{i}"
                c = chains[i] if chains else chain_text
                out.append((c, f"http:GET:/orders/{r}-{i}", veto.dpop_proof(c, leaf_key, "GET", u), "GET", u))
            return out

        def cold_proofs(r, n):
            if d == 1:  # a root only: a new root per call from the registry
                chains = [str(reg.mint(agent=f"c{r}-{i}", act=["http:*:/orders/*"], ttl=3600, holder=leaf_key.public))
                          for i in range(n)]
            else:
                parent = vchain[-2]
                chains = [str(parent.delegate(vkeys[-2], agent=f"c{r}-{i}", act=["http:GET:/orders/*"], ttl=1200,
                                              to=leaf_key.public)) for i in range(n)]
            return veto_proofs(r, n, chains)

        def vcheck(chain, action, proof, method, u):
            return vauthz.check(chain, action=action, dpop=proof, method=method, url=u)

        v_ok = lambda dec: dec.allowed and not dec.stale
        # Prime the verified-chain caches as normal use would: one check each.
        assert v_ok(vcheck(*veto_proofs("prime", 1)[0])), "veto: the warm chain is not allowed"
        assert v_ok(bauthz.check(chain_text, "http:GET:/orders/prime")), "veto: bearer check not allowed"
        variants += [
            Variant("veto check + DPoP, warm (cached chain)", "1", veto_proofs, vcheck, v_ok),
            Variant("veto check + DPoP, cold (new chain each call)", f"{d}+1", cold_proofs, vcheck, v_ok),
            Variant("veto check, pop=off, warm (no proof)", "0",
                    lambda r, n: [(chain_text, f"http:GET:/orders/{r}-{i}") for i in range(n)], bauthz.check, v_ok),
        ]

        try:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
            sk = Ed25519PrivateKey.generate()
            msg = os.urandom(300)
            sig, pk = sk.sign(msg), sk.public_key()
            variants.append(Variant("reference: cryptography (OpenSSL) Ed25519", "1",
                                    lambda r, n: [(sig, msg)] * n, pk.verify, lambda x: x is None))
        except ImportError:
            pass
        variants.append(Variant("floor: len() on a str", "-", lambda r, n: [(chain_text,)] * n, len, lambda x: True))

        # Warm-up: one batch of every variant, discarded.
        for v in variants:
            v.run("warm", min(a.batch, 50))
            v.ns.clear()
            v.round_medians.clear()
        for r in range(a.rounds):
            for v in variants:
                v.run(r, a.batch)
        st = vauthz.status()
        vauthz.close()
        bauthz.close()
    finally:
        proc.terminate()
        proc.wait(10)

    floor = next(v for v in variants if v.name.startswith("tenuo leaf.verify"))
    floor_us = pct(sorted(floor.ns), 50) / 1e3
    n = a.rounds * a.batch
    print(f"tenuo {tenuo.__version__}, veto {veto.__version__}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    links = "a root only" if d == 1 else f"root + {d - 1} delegations, each to a new holder key"
    print(f"depth {d} ({links}); {n} checks per variant "
          f"({a.rounds} rounds x {a.batch}), one fresh proof per check made outside the timed section")
    print(f"chain on the wire: tenuo stack {len(stack)} B base64 (CBOR), veto {len(chain_text)} B (JWS chain); "
          f"revoked ids: {a.entries} each side (veto state {st['entries']} entries, fresh={st['fresh']})")
    print(f"tenuo batches redone because they crossed a {POP_WINDOW}-s PoP window: {tenuo_state['redone']}")
    print()
    print(f"  {'µs per check':<44} {'median':>8} {'p99':>8} {'mean':>8}   {'round medians':<15} {'sigs':>7}  x1 sig")
    for v in variants:
        print(v.row(floor_us))
    warm, bearer = (next(v for v in variants if v.name.startswith(p)) for p in ("veto check + DPoP, warm", "veto check, pop=off"))
    proof_us = (pct(sorted(warm.ns), 50) - pct(sorted(bearer.ns), 50)) / 1e3
    print(f"veto's proof, warm - bearer medians: {proof_us:.1f} µs = {proof_us / floor_us:.2f}x Tenuo's one-signature median")
    print()
    print("sigs: Ed25519 verifications per call; 'b' = batch-verified together (ed25519_dalek::verify_batch);")
    print("  Tenuo's stack decode verifies each warrant's signature again (one by one) as it deserializes.")
    print(f"x1 sig: median / Tenuo's one-signature median ({floor_us:.1f} µs).")
    print("Tenuo calls measured: Authorizer.check_chain(chain, tool, args, signature);")
    print("  decode_warrant_stack_base64(stack) then Authorizer.check_chain(...); Authorizer.verify_chain(chain);")
    print("  Warrant.verify(issuer_public_key_bytes) (the leaf's signature: one verify_strict).")
    print("veto call measured: veto.Authorizer.check(chain, action=..., dpop=proof, method='GET', url=...).")
    print("Caching: Tenuo's check_chain re-verifies every link's signature on every call (it has no")
    print("  verified-chain cache); veto verifies a chain's signatures once and caches it by its text, so a")
    print("  warm veto check verifies only the proof (revocation of every link, time, action and the")
    print("  proof's replay are checked every call). 'cold' is veto without the cache's help.")
    print("Replay: veto refuses a proof seen before (jti replay cache, every call); Tenuo's Authorizer accepts")
    print(f"  the same PoP signature again within its window ({POP_WINDOW} s x 5 windows); no nonce here.")


if __name__ == "__main__":
    main()
