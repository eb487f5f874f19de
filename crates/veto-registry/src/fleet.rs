//! The fleet view (DESIGN 5): gateways enrol an Ed25519 key, then report
//! what they applied in signed `veto-report+jwt` objects; the registry
//! keeps, in the store (so every replica sees the same fleet), each
//! gateway's newest report and, per version, when each gateway was first
//! heard to have applied it.
//!
//! Trust: enrolment takes the fleet enrolment token (`<data-dir>/fleet.token`
//! or `VETO_FLEET_TOKEN`) or an admin token with the `fleet` scope; a
//! report is accepted only signed by an enrolled key, for this registry,
//! signed within [`REPORT_SKEW`] of now and newer (by `iat`, `seq`) than
//! the gateway's last. Anything else is refused and counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use veto_core::report::{ReportError, ReportPayload};
use veto_core::PublicKey;

use crate::admin::AdminToken;
use crate::store::{GatewayRow, ReportRow};

/// How far a report's `iat` may be from now, either way (seconds).
pub const REPORT_SKEW: u64 = 60;
/// A gateway is lost after this many of its report intervals without a
/// report.
pub const LOST_AFTER_INTERVALS: u64 = 3;
/// How long per-version application times are kept.
pub const HISTORY: Duration = Duration::from_secs(24 * 3600);
/// Most versions whose commit time is remembered (in memory).
const MAX_COMMIT_TIMES: usize = 100_000;
/// Most gateways enrolled at once (removed ones not counted).
pub const MAX_GATEWAYS: usize = 10_000;
/// Reports one gateway may send per second, on average (gateways send at
/// most 10): an enrolled gateway cannot turn the store into a queue of
/// its reports.
pub const REPORTS_PER_SECOND: f64 = 20.0;
/// Reports one gateway may send in a burst.
pub const REPORT_BURST: f64 = 10.0;
/// Least time between two reloads of the enrolled keys on a miss (a
/// stranger sending reports under unknown key ids cannot turn each into a
/// store read).
const RELOAD_GAP: Duration = Duration::from_secs(1);

/// Now in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    veto_core::SystemClock::now_ms()
}

/// The enrolment token, the enrolled keys as read from the store, and the
/// versions' commit times seen here.
pub(crate) struct Fleet {
    token: AdminToken,
    keys: RwLock<HashMap<String, PublicKey>>,
    /// Each enrolled gateway's report budget: tokens left and when they
    /// were counted (one entry per enrolled key at most).
    budgets: Mutex<HashMap<String, (f64, Instant)>>,
    /// Each enrolled gateway's newest accepted `(iat, seq)`: an old report
    /// replayed is refused here, before it costs the gateway's budget.
    newest: Mutex<HashMap<String, (u64, u64)>>,
    reloaded: Mutex<Option<Instant>>,
    committed: Mutex<BTreeMap<u64, u64>>,
    /// Bumped when a report is accepted or a gateway enrolled or removed
    /// here: wakes the console's fleet streams.
    changes: tokio::sync::watch::Sender<u64>,
    /// Open console fleet streams.
    streams: std::sync::atomic::AtomicUsize,
}

/// Most console fleet streams open at once.
pub const MAX_FLEET_STREAMS: usize = 32;

impl Fleet {
    pub(crate) fn new(token: AdminToken) -> Self {
        Self {
            token,
            keys: RwLock::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            newest: Mutex::new(HashMap::new()),
            reloaded: Mutex::new(None),
            committed: Mutex::new(BTreeMap::new()),
            changes: tokio::sync::watch::channel(0).0,
            streams: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Notes a change to the fleet seen here.
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every change noted from now on.
    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Takes one of the [`MAX_FLEET_STREAMS`] stream slots; `None` when all
    /// are taken. The slot is given back when the guard drops.
    pub(crate) fn open_stream(self: &std::sync::Arc<Self>) -> Option<StreamSlot> {
        use std::sync::atomic::Ordering;
        let taken = self.streams.fetch_add(1, Ordering::AcqRel);
        let slot = StreamSlot(self.clone());
        (taken < MAX_FLEET_STREAMS).then_some(slot)
    }

    /// Whether `given` is the fleet enrolment token (constant time).
    pub(crate) fn is_enrolment_token(&self, given: &str) -> bool {
        self.token.matches(given)
    }

    /// Replaces the enrolled keys with the live gateways of `rows`.
    pub(crate) fn load(&self, rows: &[GatewayRow]) {
        let keys: HashMap<String, PublicKey> = rows
            .iter()
            .filter(|r| r.removed_at.is_none())
            .filter_map(|r| {
                let jwk = serde_json::from_str(&r.public_jwk).ok()?;
                let key = PublicKey::from_jwk(&jwk).ok()?;
                Some((r.id.clone(), key))
            })
            .collect();
        self.budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keys.contains_key(id));
        self.newest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keys.contains_key(id));
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        *self.reloaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Adds one enrolled key (without reading the others again).
    pub(crate) fn add_key(&self, id: &str, key: PublicKey) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), key);
    }

    /// Forgets one key (its gateway was removed).
    pub(crate) fn remove_key(&self, id: &str) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.newest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Whether `(iat, seq)` is newer than gateway `id`'s newest accepted
    /// report seen here.
    pub(crate) fn is_newer(&self, id: &str, iat: u64, seq: u64) -> bool {
        self.newest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_none_or(|last| (iat, seq) > *last)
    }

    /// Notes gateway `id`'s newest accepted report.
    pub(crate) fn accepted(&self, id: &str, iat: u64, seq: u64) {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let e = newest.entry(id.to_owned()).or_insert((iat, seq));
        *e = (*e).max((iat, seq));
    }

    /// The enrolled key `id`, if known.
    pub(crate) fn key(&self, id: &str) -> Option<PublicKey> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Whether a verified report of enrolled gateway `id` fits its budget
    /// ([`REPORTS_PER_SECOND`], bursts of [`REPORT_BURST`]); takes one
    /// from it if so.
    pub(crate) fn take_report(&self, id: &str) -> bool {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, at) = budgets.entry(id.to_owned()).or_insert((REPORT_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * REPORTS_PER_SECOND)
            .min(REPORT_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a miss may reload the keys from the store now (at most once
    /// per [`RELOAD_GAP`]); claims the reload when it may.
    pub(crate) fn may_reload(&self) -> bool {
        let mut last = self.reloaded.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(t) if t.elapsed() < RELOAD_GAP => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    /// Records that version `ver` was committed (or learnt) at `at_ms`.
    pub(crate) fn committed(&self, ver: u64, at_ms: u64) {
        let mut c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        c.entry(ver).or_insert(at_ms);
        while c.len() > MAX_COMMIT_TIMES {
            c.pop_first();
        }
    }

    /// When version `ver` was committed, if remembered.
    pub(crate) fn commit_time(&self, ver: u64) -> Option<u64> {
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ver)
            .copied()
    }
}

/// A console fleet stream's slot (see [`Fleet::open_stream`]).
pub(crate) struct StreamSlot(std::sync::Arc<Fleet>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0
            .streams
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Verifies a report against the enrolled key `key`.
pub(crate) fn verify(
    token: &str,
    key: &PublicKey,
    iss: &str,
    now: u64,
) -> Result<ReportPayload, ReportError> {
    veto_core::report::verify(token, key, iss, now, REPORT_SKEW)
}

/// A gateway's state in the fleet view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayState {
    /// Reporting on time, fresh.
    Live,
    /// Its state is not fresh, or its report is late.
    Stale,
    /// No report for [`LOST_AFTER_INTERVALS`] intervals (or never).
    Lost,
}

impl GatewayState {
    /// Every state.
    pub const ALL: [GatewayState; 3] = [Self::Live, Self::Stale, Self::Lost];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Stale => "stale",
            Self::Lost => "lost",
        }
    }
}

/// One row of `GET /v1/fleet`.
#[derive(Clone, Debug, Serialize)]
pub struct GatewayView {
    /// The gateway's id (its key's RFC 7638 thumbprint).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The version it reported applied (none before its first report).
    pub applied_version: Option<u64>,
    /// The head it reported.
    pub head: Option<String>,
    /// Whether its state was fresh.
    pub fresh: Option<bool>,
    /// Seconds since its newest attestation was signed.
    pub staleness_s: Option<u64>,
    /// Until when (Unix seconds) its state stays fresh without news: past
    /// it, a fail-closed gateway denies every request.
    pub fresh_until: Option<u64>,
    /// Its push transport (`sse`, `nats`, `off`).
    pub push: Option<String>,
    /// Whether its push subscription was connected.
    pub push_connected: Option<bool>,
    /// Its staleness policy.
    pub policy: Option<String>,
    /// When its newest report arrived (Unix milliseconds).
    pub last_report_ms: Option<u64>,
    /// `live`, `stale` or `lost`.
    pub state: GatewayState,
    /// Its last sync error, if any.
    pub error: Option<String>,
    /// Its veto version.
    pub veto: Option<String>,
    /// How many versions behind the registry's head it is.
    pub lag: Option<u64>,
}

/// The fleet view: every enrolled gateway (not removed) with its newest
/// report, judged at `now_ms` against the registry's `head`.
pub(crate) fn view(
    gateways: &[GatewayRow],
    reports: &[ReportRow],
    head: u64,
    now_ms: u64,
) -> Vec<GatewayView> {
    let by_id: HashMap<&str, &ReportRow> = reports.iter().map(|r| (r.id.as_str(), r)).collect();
    gateways
        .iter()
        .filter(|g| g.removed_at.is_none())
        .map(|g| {
            let row = by_id.get(g.id.as_str());
            let report: Option<ReportPayload> =
                row.and_then(|r| serde_json::from_str(&r.report).ok());
            let state = match (row, &report) {
                (Some(r), Some(p)) => {
                    let age = now_ms.saturating_sub(r.received_ms);
                    let interval = p.interval_s.max(1) * 1000;
                    if age > LOST_AFTER_INTERVALS * interval {
                        GatewayState::Lost
                    } else if !p.fresh || age > interval + interval / 2 {
                        GatewayState::Stale
                    } else {
                        GatewayState::Live
                    }
                }
                _ => GatewayState::Lost,
            };
            GatewayView {
                id: g.id.clone(),
                name: g.name.clone(),
                applied_version: report.as_ref().map(|p| p.ver),
                head: report.as_ref().map(|p| p.head.clone()),
                fresh: report.as_ref().map(|p| p.fresh),
                staleness_s: report.as_ref().and_then(|p| p.staleness_s),
                fresh_until: report.as_ref().and_then(|p| p.fresh_until),
                push: report.as_ref().map(|p| p.push.clone()),
                push_connected: report.as_ref().map(|p| p.push_connected),
                policy: report.as_ref().map(|p| p.policy.clone()),
                last_report_ms: row.map(|r| r.received_ms),
                state,
                error: report.as_ref().and_then(|p| p.error.clone()),
                veto: report.as_ref().map(|p| p.veto.clone()),
                lag: report.as_ref().map(|p| head.saturating_sub(p.ver)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(id: &str) -> GatewayRow {
        GatewayRow {
            id: id.into(),
            name: format!("gw-{id}"),
            public_jwk: "{}".into(),
            enrolled_at: 1,
            removed_at: None,
        }
    }

    fn report(id: &str, ver: u64, fresh: bool, received_ms: u64) -> ReportRow {
        let p = ReportPayload {
            aud: "veto".into(),
            name: format!("gw-{id}"),
            iat: 1,
            seq: 1,
            ver,
            head: "h".into(),
            fresh,
            staleness_s: Some(1),
            fresh_until: Some(300),
            push: "sse".into(),
            push_connected: true,
            policy: "fail-closed".into(),
            error: None,
            interval_s: 10,
            veto: "0".into(),
        };
        ReportRow {
            id: id.into(),
            iat: 1,
            seq: 1,
            received_ms,
            ver,
            report: serde_json::to_string(&p).unwrap_or_default(),
        }
    }

    #[test]
    fn states_follow_freshness_and_report_age() {
        let now = 1_000_000;
        let mut removed = gateway("e");
        removed.removed_at = Some(2);
        let gateways = [
            gateway("a"),
            gateway("b"),
            gateway("c"),
            gateway("d"),
            removed,
        ];
        let reports = [
            report("a", 7, true, now - 9_000),
            report("b", 5, false, now - 1_000),
            report("c", 7, true, now - 16_000),
            report("d", 7, true, now - 31_000),
        ];
        let v = view(&gateways, &reports, 7, now);
        let states: Vec<_> = v.iter().map(|g| (g.id.as_str(), g.state)).collect();
        assert_eq!(
            states,
            [
                ("a", GatewayState::Live),
                ("b", GatewayState::Stale),
                ("c", GatewayState::Stale),
                ("d", GatewayState::Lost),
            ]
        );
        assert_eq!(v[1].lag, Some(2));
        // Enrolled, never reported: lost, with nothing to show.
        let v = view(&[gateway("z")], &[], 7, now);
        assert_eq!(
            (v[0].state, v[0].applied_version),
            (GatewayState::Lost, None)
        );
    }
}
