//! Prometheus metrics for an authorizer.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use veto_core::DenyReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Label {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

/// What the gauges show, read when the metrics are scraped.
pub(crate) struct Gauges {
    pub version: u64,
    pub age: Option<u64>,
    pub fresh: bool,
    pub push_connected: bool,
    pub cache_bytes: usize,
    pub cache_chains: usize,
    pub replay_bytes: usize,
}

pub(crate) struct Metrics {
    registry: Registry,
    /// allow, allow_stale, then one per deny reason (DenyReason::ALL order).
    decisions: Vec<Counter>,
    version: Gauge,
    staleness: Gauge,
    fresh: Gauge,
    push_connected: Gauge,
    sync_errors: Family<Label, Counter>,
    rejected: Family<Label, Counter>,
    gaps_repaired: Counter,
    equivocations: Counter,
    applied: Family<Label, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_bytes: Gauge,
    cache_chains: Gauge,
    replay_bytes: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("veto_authorizer");
        let decisions_family: Family<Outcome, Counter> = Family::default();
        let mut decisions = Vec::new();
        for name in ["allow", "allow_stale"]
            .into_iter()
            .chain(DenyReason::ALL.iter().map(|r| r.as_str()))
        {
            decisions.push(
                decisions_family
                    .get_or_create(&Outcome {
                        outcome: name.into(),
                    })
                    .clone(),
            );
        }
        registry.register(
            "decisions",
            "Decisions, by outcome (allow, allow_stale, or the denial reason)",
            decisions_family,
        );
        let m = Self {
            decisions,
            version: Gauge::default(),
            staleness: Gauge::default(),
            fresh: Gauge::default(),
            push_connected: Gauge::default(),
            sync_errors: Family::default(),
            rejected: Family::default(),
            gaps_repaired: Counter::default(),
            equivocations: Counter::default(),
            applied: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_bytes: Gauge::default(),
            cache_chains: Gauge::default(),
            replay_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "applied_version",
            "Applied revocation-state version",
            m.version.clone(),
        );
        registry.register(
            "staleness_seconds",
            "Seconds since the newest attestation of the applied state was signed",
            m.staleness.clone(),
        );
        registry.register(
            "fresh",
            "1 while the revocation state is fresh, else 0",
            m.fresh.clone(),
        );
        registry.register(
            "push_connected",
            "1 while the push subscription is connected",
            m.push_connected.clone(),
        );
        registry.register(
            "sync_errors",
            "Sync failures, by kind",
            m.sync_errors.clone(),
        );
        registry.register(
            "rejected_objects",
            "Signed objects refused (forged, rolled back, wrong prev, equivocating, from the future), by kind",
            m.rejected.clone(),
        );
        registry.register(
            "gaps_repaired",
            "Gaps detected and repaired by catching up",
            m.gaps_repaired.clone(),
        );
        registry.register(
            "equivocations",
            "Two heads signed for one version (alarm)",
            m.equivocations.clone(),
        );
        registry.register(
            "applied_objects",
            "Objects applied, by kind",
            m.applied.clone(),
        );
        registry.register(
            "chain_cache_hits",
            "Verified-chain cache hits",
            m.cache_hits.clone(),
        );
        registry.register(
            "chain_cache_misses",
            "Verified-chain cache misses",
            m.cache_misses.clone(),
        );
        registry.register(
            "dpop_replay_bytes",
            "Bytes charged to the DPoP replay cache (proofs seen inside their window)",
            m.replay_bytes.clone(),
        );
        registry.register(
            "chain_cache_bytes",
            "Estimated bytes held by the verified-chain cache",
            m.cache_bytes.clone(),
        );
        registry.register(
            "chain_cache_chains",
            "Chains held by the verified-chain cache",
            m.cache_chains.clone(),
        );
        Self { registry, ..m }
    }

    #[inline]
    pub fn decision(&self, decision: &veto_core::Decision) {
        let i = match decision {
            veto_core::Decision::Allow { stale: false } => 0,
            veto_core::Decision::Allow { stale: true } => 1,
            veto_core::Decision::Deny(d) => {
                2 + DenyReason::ALL
                    .iter()
                    .position(|r| *r == d.reason)
                    .unwrap_or(0)
            }
        };
        self.decisions[i].inc();
    }

    fn label(kind: &str) -> Label {
        Label { kind: kind.into() }
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    /// A signed object applied (`snapshot`, `delta` or `checkpoint`).
    pub fn applied(&self, kind: &str) {
        self.applied.get_or_create(&Self::label(kind)).inc();
    }

    /// A signed object refused, by why.
    pub fn rejected(&self, kind: &str) {
        self.rejected.get_or_create(&Self::label(kind)).inc();
    }

    pub fn equivocation(&self) {
        self.equivocations.inc();
    }

    pub fn sync_error(&self, kind: &str) {
        self.sync_errors.get_or_create(&Self::label(kind)).inc();
    }

    pub fn gap_repaired(&self) {
        self.gaps_repaired.inc();
    }

    /// The text format, with the gauges set from `now` first.
    pub fn encode(&self, now: &Gauges) -> String {
        self.staleness.set(now.age.map_or(-1, |a| a as i64));
        self.fresh.set(i64::from(now.fresh));
        self.push_connected.set(i64::from(now.push_connected));
        self.version.set(now.version as i64);
        self.cache_bytes
            .set(i64::try_from(now.cache_bytes).unwrap_or(i64::MAX));
        self.cache_chains
            .set(i64::try_from(now.cache_chains).unwrap_or(i64::MAX));
        self.replay_bytes
            .set(i64::try_from(now.replay_bytes).unwrap_or(i64::MAX));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
