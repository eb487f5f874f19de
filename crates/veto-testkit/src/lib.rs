//! The harness shared by veto's end-to-end tests (`crates/veto/tests`) and
//! its benchmark driver (`veto-bench`): real `veto serve` and `veto proxy`
//! processes on loopback, and what it takes to start, watch and stop them.
//!
//! - [`veto_bin`]: where the `veto` binary under test is (`VETO_TESTKIT_BIN`, or the
//!   `CARGO_BIN_EXE_veto` Cargo sets for the `veto` package's tests).
//! - [`TempDir`] and [`fresh_dir`]: directories no other run uses.
//! - [`Process`]: a child process killed on drop, started by waiting for its
//!   ready line, stopped gracefully with [`Process::terminate`];
//!   [`veto_command`] and [`clean_command`] give it a clean environment.
//! - [`Registry`], [`Proxy`], [`serve_refused`]: a running `veto serve` or
//!   `veto proxy` with a small HTTP client; [`Upstream`] and
//!   [`ok_upstream`]: an in-process upstream answering `ok`.
//! - [`wait_ok`]: readiness by polling an HTTP endpoint until it answers 2xx.
//! - [`EventStream`]: a server-sent event stream read through veto-core's parser.
//! - [`relay`]: a fault-injecting TCP relay (partition, half-open, reset).
//! - [`rss_kib`] and [`vm_rss_kib`]: a process's memory from `/proc`.
//! - [`Metrics`], [`Histogram`] and [`metric_value`]: Prometheus text parsing.
//! - [`tls`]: a test CA ([`tls::TestCa`]) issuing server and client
//!   certificates, and HTTPS clients that trust it.
//! - [`NatsServer`]: a `nats-server` of the test's own, configured by the
//!   test (JetStream, TLS, users), on a free port.
//! - [`Schema`] and [`schema_url`]: PostgreSQL schemas, one per test or run;
//!   `VETO_TEST_REGISTRY_STORE=postgres` puts every test registry on one.
//!
//! The parts the tests use fail the test at the failing step (they panic
//! with what went wrong); the parts `veto-bench` shares return errors.

mod dir;
mod events;
mod metrics;
mod nats;
mod pg;
mod process;
mod proxy;
mod registry;
pub mod relay;
pub mod tls;
mod upstream;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use veto_core::Clock as _;

pub use dir::{fresh_dir, TempDir};
pub use events::EventStream;
pub use metrics::{metric_value, Histogram, Metrics};
pub use nats::{nats_server_bin, NatsServer, REQUIRE_NATS_SERVER_VAR};
pub use pg::{schema_url, Schema};
pub use process::{
    clean_command, rss_kib, url_in, veto_command, vm_rss_kib, wait_ok, Process, READY_TIMEOUT,
};
pub use proxy::Proxy;
pub use registry::{serve_refused, Registry};
pub use upstream::{ok_upstream, Upstream};

/// The variable naming the `veto` binary to run, when the caller sets it.
pub const VETO_BIN_VAR: &str = "VETO_TESTKIT_BIN";

/// The `veto` binary under test: `VETO_TESTKIT_BIN` when set, else the
/// `CARGO_BIN_EXE_veto` Cargo sets when it runs the `veto` package's tests
/// (the path `env!("CARGO_BIN_EXE_veto")` gives there), else `veto` in the
/// directory above the running executable (`target/<profile>/deps/..`).
pub fn veto_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        [VETO_BIN_VAR, "CARGO_BIN_EXE_veto"]
            .iter()
            .find_map(|var| std::env::var_os(var).filter(|v| !v.is_empty()))
            .map(PathBuf::from)
            .or_else(|| {
                let exe = std::env::current_exe().ok()?;
                Some(exe.parent()?.parent()?.join("veto"))
            })
            .unwrap_or_else(|| PathBuf::from("veto"))
    })
}

/// The HTTP client a [`Registry`] or [`Proxy`] uses: a 30 s timeout, gzip
/// decompressed transparently. Panics when it cannot be built.
#[expect(
    clippy::expect_used,
    reason = "a test kit: the test fails at this step"
)]
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("building an HTTP client")
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    veto_core::SystemClock.now()
}
