//! Prometheus metrics for the registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindReason {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Code {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub state: String,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub version: Gauge,
    pub entries: Gauge,
    pub revocations: Family<KindReason, Counter>,
    pub subscribers: Gauge,
    pub commit_to_broadcast: Histogram,
    pub commit_seconds: Histogram,
    pub group_size: Histogram,
    pub errors: Family<Code, Counter>,
    pub snapshots_signed: Counter,
    pub checkpoints_signed: Counter,
    pub lagged_subscribers: Counter,
    pub stalled_connections: Counter,
    pub bus_connected: Gauge,
    pub bus_published: Counter,
    pub bus_errors: Counter,
    pub outbox: Gauge,
    /// Bytes of the client budget in use (set when scraped).
    pub client_buffer_bytes: Gauge,
    /// Gateway reports accepted.
    pub fleet_reports: Counter,
    /// Gateway reports refused, by error code.
    pub fleet_refused: Family<Code, Counter>,
    /// Enrolled gateways by state (`live`, `stale`, `lost`).
    pub fleet_gateways: Family<StateLabel, Gauge>,
    /// The largest version lag of a live or stale gateway.
    pub fleet_max_lag: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("veto_registry");
        let m = Self {
            version: Gauge::default(),
            entries: Gauge::default(),
            revocations: Family::default(),
            subscribers: Gauge::default(),
            commit_to_broadcast: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 18)),
            group_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            errors: Family::default(),
            snapshots_signed: Counter::default(),
            checkpoints_signed: Counter::default(),
            lagged_subscribers: Counter::default(),
            stalled_connections: Counter::default(),
            bus_connected: Gauge::default(),
            bus_published: Counter::default(),
            bus_errors: Counter::default(),
            outbox: Gauge::default(),
            client_buffer_bytes: Gauge::default(),
            fleet_reports: Counter::default(),
            fleet_refused: Family::default(),
            fleet_gateways: Family::default(),
            fleet_max_lag: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("version", "Newest committed version", m.version.clone());
        registry.register(
            "entries",
            "Live (unpruned) revocation entries",
            m.entries.clone(),
        );
        registry.register(
            "revocations",
            "Revocations committed, by kind and reason",
            m.revocations.clone(),
        );
        registry.register(
            "sse_subscribers",
            "Connected SSE subscribers",
            m.subscribers.clone(),
        );
        registry.register(
            "commit_to_broadcast_seconds",
            "Time from a durable commit to its delta being handed to every push channel",
            m.commit_to_broadcast.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time to commit one group of writes durably",
            m.commit_seconds.clone(),
        );
        registry.register(
            "commit_group_size",
            "Requests committed per transaction",
            m.group_size.clone(),
        );
        registry.register(
            "errors",
            "Requests refused, by error code",
            m.errors.clone(),
        );
        registry.register(
            "snapshots_signed",
            "Snapshots signed",
            m.snapshots_signed.clone(),
        );
        registry.register(
            "checkpoints_signed",
            "Checkpoints signed",
            m.checkpoints_signed.clone(),
        );
        registry.register(
            "sse_lagged",
            "Times a slow SSE subscriber was sent a snapshot instead of missed deltas",
            m.lagged_subscribers.clone(),
        );
        registry.register(
            "stalled_connections",
            "Connections closed because the client took no bytes for the subscriber timeout",
            m.stalled_connections.clone(),
        );
        registry.register(
            "bus_connected",
            "1 while the NATS relay is connected",
            m.bus_connected.clone(),
        );
        registry.register(
            "bus_published",
            "Deltas stored by JetStream (not counting duplicates)",
            m.bus_published.clone(),
        );
        registry.register("bus_errors", "NATS relay failures", m.bus_errors.clone());
        registry.register(
            "outbox",
            "Committed deltas not yet accepted by the bus",
            m.outbox.clone(),
        );
        registry.register(
            "client_buffer_bytes",
            "Bytes of deltas and snapshots held for clients (replays, queued events, delta listings), of a fixed budget",
            m.client_buffer_bytes.clone(),
        );
        registry.register(
            "fleet_reports",
            "Gateway reports accepted",
            m.fleet_reports.clone(),
        );
        registry.register(
            "fleet_reports_refused",
            "Gateway reports refused (forged, unenrolled, out of order), by error code",
            m.fleet_refused.clone(),
        );
        registry.register(
            "fleet_gateways",
            "Enrolled gateways by state (live, stale, lost), as of the last fleet read",
            m.fleet_gateways.clone(),
        );
        registry.register(
            "fleet_max_version_lag",
            "Most versions a live or stale gateway is behind the head, as of the last fleet read",
            m.fleet_max_lag.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts a gateway report refused with `code`.
    pub fn report_refused(&self, code: veto_core::wire::ErrorCode) {
        self.fleet_refused
            .get_or_create(&Code {
                code: code.as_str().into(),
            })
            .inc();
    }

    /// Counts a request refused with `code`.
    pub fn refused(&self, code: veto_core::wire::ErrorCode) {
        self.errors
            .get_or_create(&Code {
                code: code.as_str().into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
