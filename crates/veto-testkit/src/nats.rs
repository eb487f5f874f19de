//! A `nats-server` of a test's own: on a free port, with a configuration
//! file the test writes (JetStream, TLS, users), killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `nats-server` is looked for.
const NATS_SERVER_PATHS: [&str; 3] = [
    "/usr/sbin/nats-server",
    "/usr/bin/nats-server",
    "/usr/local/bin/nats-server",
];

/// The variable that turns a missing `nats-server` into a failure.
pub const REQUIRE_NATS_SERVER_VAR: &str = "VETO_TEST_REQUIRE_NATS_SERVER";

/// The `nats-server` binary, if installed.
pub fn nats_server_bin() -> Option<&'static str> {
    NATS_SERVER_PATHS
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// A running `nats-server`, killed on drop.
pub struct NatsServer {
    child: Child,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Its configuration file.
    pub config: PathBuf,
    log: PathBuf,
}

impl NatsServer {
    /// Starts `nats-server -c CONFIG` where CONFIG is `dir/nats.conf`
    /// holding `config(port, dir)` for a free port, and waits until the
    /// port accepts. `None` when no `nats-server` is installed (and
    /// `VETO_TEST_REQUIRE_NATS_SERVER` is not `1`: then it panics).
    ///
    /// Panics when the server does not start within 10 s.
    pub fn start(dir: &Path, config: impl Fn(u16, &Path) -> String) -> Option<Self> {
        Self::start_on(dir, free_port(), config)
    }

    /// As [`NatsServer::start`], on `port` (to restart a server where its
    /// clients expect it).
    #[expect(clippy::panic, reason = "a test kit: the test fails at this step")]
    pub fn start_on(dir: &Path, port: u16, config: impl Fn(u16, &Path) -> String) -> Option<Self> {
        let Some(bin) = nats_server_bin() else {
            assert!(
                std::env::var(REQUIRE_NATS_SERVER_VAR).as_deref() != Ok("1"),
                "no nats-server binary, and {REQUIRE_NATS_SERVER_VAR}=1: install nats-server"
            );
            return None;
        };
        let conf = dir.join("nats.conf");
        let log = dir.join("nats.log");
        std::fs::write(&conf, config(port, dir))
            .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let log_file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut server = Self {
            child,
            port,
            config: conf,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || !matches!(server.child.try_wait(), Ok(None)) {
                panic!(
                    "nats-server did not start on {port}:\n{}",
                    server.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now (bound and released).
#[expect(
    clippy::expect_used,
    reason = "a test kit: the test fails at this step"
)]
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port")
}
