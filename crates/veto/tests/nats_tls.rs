//! The NATS bus in production shape: a `nats-server` of the test's own
//! with TLS (a CA made in the test), JetStream and two users with the
//! permissions the README documents — `registry` (user and password in
//! the URL) publishes, `authorizer` (an NKey via `--nats-creds`) only
//! subscribes — plus an `intruder` who may publish anywhere.
//!
//! Needs the `nats-server` binary; without it each test is skipped, saying
//! so, unless `VETO_TEST_REQUIRE_NATS_SERVER=1` (then it fails).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use veto_core::wire::nats::{DELTA_SUBJECT, STREAM};
use veto_testkit::tls::TestCa;
use veto_testkit::{ok_upstream, veto_command, NatsServer, Proxy, Registry, TempDir};

const REGISTRY_PASS: &str = "registry-pass-0123456789";
const INTRUDER_PASS: &str = "intruder-pass-0123456789";
/// Generous: push takes milliseconds; the bound only stops a hung test.
const WITHIN: Duration = Duration::from_secs(20);

/// The test's NATS: server, CA, the authorizer's seed file.
struct Bus {
    server: NatsServer,
    ca: PathBuf,
    authorizer_seed: PathBuf,
    authorizer_nkey: nkeys::KeyPair,
}

impl Bus {
    /// `None` when there is no nats-server (and it is not required).
    fn start(dir: &TempDir) -> Option<Self> {
        let ca = TestCa::new("veto test ca");
        let ca_file = ca.write_ca(dir.path(), "ca.pem");
        let (server_cert, server_key) =
            ca.write_server(dir.path(), "nats", &["localhost", "127.0.0.1"]);
        let authorizer_nkey = nkeys::KeyPair::new_user();
        let authorizer_seed = dir.path().join("authorizer.nk");
        std::fs::write(&authorizer_seed, authorizer_nkey.seed().unwrap()).unwrap();
        let public = authorizer_nkey.public_key();
        let config = |port: u16, dir: &Path| {
            format!(
                r#"
listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{store}" }}
tls {{ cert_file: "{cert}", key_file: "{key}" }}
authorization {{
  users = [
    {{ user: "registry", password: "{REGISTRY_PASS}",
       permissions: {{
         publish: ["veto.srl.>", "$JS.API.STREAM.INFO.{STREAM}", "$JS.API.STREAM.CREATE.{STREAM}", "$JS.API.STREAM.UPDATE.{STREAM}"],
         subscribe: ["_INBOX.>"] }} }}
    {{ nkey: "{public}",
       permissions: {{
         publish: ["$JS.API.CONSUMER.CREATE.{STREAM}", "$JS.FC.{STREAM}.>"],
         subscribe: ["_INBOX.>"] }} }}
    {{ user: "intruder", password: "{INTRUDER_PASS}" }}
  ]
}}
"#,
                store = dir.join("js").display(),
                cert = server_cert.display(),
                key = server_key.display(),
            )
        };
        let server = NatsServer::start(dir.path(), config)?;
        Some(Self {
            server,
            ca: ca_file,
            authorizer_seed,
            authorizer_nkey,
        })
    }

    fn url(&self, credentials: &str) -> String {
        format!("tls://{credentials}127.0.0.1:{}", self.server.port)
    }

    fn registry(&self) -> Registry {
        Registry::start(&[
            "--bus",
            &self.url(&format!("registry:{REGISTRY_PASS}@")),
            "--ca-file",
            self.ca.to_str().unwrap(),
            "--heartbeat",
            "1s",
        ])
    }

    /// A proxy pushed to only over NATS (polling once an hour).
    async fn proxy(&self, dir: &TempDir, registry: &Registry) -> Proxy {
        let upstream = ok_upstream().await;
        Proxy::start(
            dir,
            registry,
            &upstream,
            &[
                "--bus",
                &self.url(""),
                "--ca-file",
                self.ca.to_str().unwrap(),
                "--nats-creds",
                self.authorizer_seed.to_str().unwrap(),
                "--poll-interval",
                "3600s",
            ],
        )
    }

    /// A client of our own, for what veto never does.
    async fn client(&self, options: async_nats::ConnectOptions) -> async_nats::Client {
        options
            .add_root_certificates(self.ca.clone())
            .require_tls(true)
            .connect(self.url(""))
            .await
            .unwrap_or_else(|e| panic!("connecting: {e}\n{}", self.server.log_text()))
    }
}

fn skip() {
    eprintln!(
        "skipped: no nats-server binary (VETO_TEST_REQUIRE_NATS_SERVER=1 makes this a failure)"
    );
}

async fn status(proxy: &Proxy, chain: &str) -> u16 {
    reqwest::Client::new()
        .get(proxy.at("/orders/1"))
        .bearer_auth(chain)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn until_status(proxy: &Proxy, chain: &str, want: u16) {
    let start = Instant::now();
    loop {
        let got = status(proxy, chain).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < WITHIN,
            "the proxy still answers {got}, not {want}; proxy log:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_metric<F, Fut>(read: F, line: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let start = Instant::now();
    loop {
        let text = read().await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(start.elapsed() < WITHIN, "no `{line}` in:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const GAPS_REPAIRED: &str = "veto_authorizer_gaps_repaired_total";

/// The value of a series that must be there (a missing one is not 0).
fn series(text: &str, name: &str) -> f64 {
    assert!(
        text.lines().any(|l| l.starts_with(&format!("{name} "))),
        "no series `{name}` in:\n{text}"
    );
    veto_testkit::metric_value(text, name)
}

async fn registry_metrics(reg: &Registry) -> String {
    reg.get("/metrics")
        .await
        .1
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_pushed_over_tls_with_credentials_and_authorizers_cannot_publish() {
    let dir = TempDir::new("nats-tls");
    let Some(bus) = Bus::start(&dir) else {
        return skip();
    };
    let reg = bus.registry();
    let proxy = bus.proxy(&dir, &reg).await;
    until_metric(|| registry_metrics(&reg), "veto_registry_bus_connected 1").await;
    until_metric(|| proxy.metrics(), "veto_authorizer_push_connected 1").await;

    let (chain, jti) = reg.mint("planner", &["http:GET:/orders/*"], None).await;
    until_status(&proxy, &chain, 200).await;
    let version = reg.revoke_warrant(&jti).await;
    until_status(&proxy, &chain, 403).await;
    // It came by push (polling is hourly), with no gap to repair.
    assert_eq!(
        proxy.metric("veto_authorizer_applied_version").await,
        version as f64
    );
    assert_eq!(series(&proxy.metrics().await, GAPS_REPAIRED), 0.0);

    // The authorizer's credentials cannot publish to the delta subject:
    // the server refuses with a permissions violation.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let seed = bus.authorizer_nkey.seed().unwrap();
    let nc = bus
        .client(
            async_nats::ConnectOptions::with_nkey(seed).event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(event.to_string());
                }
            }),
        )
        .await;
    nc.publish(DELTA_SUBJECT, "forged".into()).await.unwrap();
    nc.flush().await.unwrap();
    let refused = tokio::time::timeout(WITHIN, async {
        while let Some(event) = rx.recv().await {
            if event
                .to_lowercase()
                .contains("permissions violation for publish")
            {
                return event;
            }
        }
        panic!("the event channel closed");
    })
    .await
    .expect("the server never refused the authorizer's publish");
    assert!(refused.contains(DELTA_SUBJECT), "{refused}");
    // Nor through JetStream: nothing acknowledges it.
    let js = async_nats::jetstream::new(nc.clone());
    let ack = async {
        js.publish(DELTA_SUBJECT, "forged".into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    };
    assert!(ack.await.is_err(), "an authorizer published a delta");
    // The stream holds the registry's deltas and checkpoints only.
    let intruder = bus
        .client(async_nats::ConnectOptions::with_user_and_password(
            "intruder".into(),
            INTRUDER_PASS.into(),
        ))
        .await;
    let mut stream = async_nats::jetstream::new(intruder)
        .get_stream(STREAM)
        .await
        .unwrap();
    let last = stream
        .get_last_raw_message_by_subject(DELTA_SUBJECT)
        .await
        .unwrap();
    assert_ne!(&last.payload[..], b"forged");
    let _ = stream.info().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_published_by_an_outsider_do_not_preempt_deltas() {
    let dir = TempDir::new("nats-preempt");
    let Some(bus) = Bus::start(&dir) else {
        return skip();
    };
    let reg = bus.registry();
    until_metric(|| registry_metrics(&reg), "veto_registry_bus_connected 1").await;
    // Someone who may publish to the subject takes the ids of the old
    // scheme (the bare versions) before the registry publishes them.
    let intruder = bus
        .client(async_nats::ConnectOptions::with_user_and_password(
            "intruder".into(),
            INTRUDER_PASS.into(),
        ))
        .await;
    let js = async_nats::jetstream::new(intruder);
    for ver in 1..=20u64 {
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload("junk".into())
            .message_id(ver.to_string());
        let ack = js.send_publish(DELTA_SUBJECT, msg).await.unwrap();
        assert!(!ack.await.unwrap().duplicate);
    }
    let proxy = bus.proxy(&dir, &reg).await;
    until_metric(|| proxy.metrics(), "veto_authorizer_push_connected 1").await;

    let mut chains = Vec::new();
    for i in 0..3 {
        let (chain, jti) = reg
            .mint(&format!("agent-{i}"), &["http:GET:/orders/*"], None)
            .await;
        until_status(&proxy, &chain, 200).await;
        chains.push((chain, jti));
    }
    for (chain, jti) in &chains {
        reg.revoke_warrant(jti).await;
        until_status(&proxy, chain, 403).await;
    }
    // Every delta was stored by JetStream (none counted as a duplicate of
    // the intruder's messages) and reached the proxy by push, not by a
    // repair over HTTP.
    // (The counter moves once the acknowledgement is recorded, which may
    // be just after the push reached the proxy.)
    let start = Instant::now();
    loop {
        let metrics = registry_metrics(&reg).await;
        let published = series(&metrics, "veto_registry_bus_published_total");
        if published >= 3.0 {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "deltas stored by JetStream: {published} of 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(series(&proxy.metrics().await, GAPS_REPAIRED), 0.0);
}

/// Runs `veto proxy` expecting it to refuse to start; returns its output.
fn proxy_refused(dir: &TempDir, args: &[&str]) -> String {
    let mut child = veto_command(dir.path())
        .arg("proxy")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args([
            "--upstream",
            "http://127.0.0.1:9",
            "--registry",
            "http://127.0.0.1:9",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WITHIN;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the proxy kept running: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_served_is_refused_at_start_naming_it() {
    let dir = TempDir::new("nats-refused");
    let Some(bus) = Bus::start(&dir) else {
        return skip();
    };
    let key = dir.path().join("authority.pub.jwk");
    let signing = veto_core::SigningKey::generate().unwrap();
    veto_core::keyfile::write_public_key(&key, signing.public()).unwrap();
    let key = key.to_str().unwrap();

    // A CA that did not issue the server's certificate.
    let other = TestCa::new("someone else's ca");
    let other_ca = other.write_ca(dir.path(), "other-ca.pem");
    let out = proxy_refused(
        &dir,
        &[
            "--authority-key",
            key,
            "--bus",
            &bus.url(""),
            "--ca-file",
            other_ca.to_str().unwrap(),
            "--nats-creds",
            bus.authorizer_seed.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("invalid peer certificate") && out.contains(&bus.url("")),
        "{out}"
    );

    // A scheme the build does not serve.
    let out = proxy_refused(
        &dir,
        &[
            "--authority-key",
            key,
            "--bus",
            "http://u:s3cret@127.0.0.1:4222",
        ],
    );
    assert!(
        out.contains("http://<credentials>@127.0.0.1:4222") && out.contains("tls://"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");

    // Credentials the server refuses: named, never shown.
    let out = proxy_refused(
        &dir,
        &[
            "--authority-key",
            key,
            "--bus",
            &bus.url("registry:wrong-password@"),
            "--ca-file",
            bus.ca.to_str().unwrap(),
        ],
    );
    assert!(out.contains("refused our credentials"), "{out}");
    assert!(!out.contains("wrong-password"), "{out}");

    // A CA file that is not one.
    let out = proxy_refused(
        &dir,
        &[
            "--authority-key",
            key,
            "--bus",
            &bus.url(""),
            "--ca-file",
            key,
        ],
    );
    // One --ca-file serves NATS and HTTPS: veto-tls reads it first and
    // names the file and the problem.
    assert!(out.contains(key) && out.contains("not PEM"), "{out}");
}
