//! The operator console in a real browser: Debian's Chromium driven over
//! WebDriver (chromedriver) against a real `veto serve` and real
//! `veto proxy` gateways. Sign in, watch the fleet live, revoke and see
//! the revocation reach every gateway, freeze one gateway and see it turn
//! lost, search the audit log; a token with fewer scopes gets no more from
//! the page than from the API. Screenshots are kept under the test's
//! output directory (`CARGO_TARGET_TMPDIR/console-screenshots`).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's
//! `chromium` and `chromium-driver`); skipped, saying so, without them
//! unless `VETO_TEST_REQUIRE_BROWSER=1` (CI installs them and sets it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use veto_core::wire::path;
use veto_testkit::{ok_upstream, Proxy, Registry, TempDir};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WITHIN: Duration = Duration::from_secs(20);

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver on a free loopback port, or `None` (with a note)
/// when the browser is not installed and not required.
fn driver(dir: &Path) -> Option<Driver> {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        if std::env::var("VETO_TEST_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("VETO_TEST_REQUIRE_BROWSER=1 but {CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver");
        }
        eprintln!(
            "skipped: no {CHROMIUM} / {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < WITHIN, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with Chromium")
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = shots().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Waits until the element `id`'s text satisfies `ok`; returns the text.
async fn until_text(c: &Client, id: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        if let Ok(e) = c.find(Locator::Id(id)).await {
            if let Ok(t) = e.text().await {
                if ok(&t) {
                    return t;
                }
                assert!(
                    start.elapsed() < WITHIN,
                    "{what}: `#{id}` still says `{t}` after {WITHIN:?}"
                );
            }
        }
        assert!(start.elapsed() < WITHIN, "{what}: no `#{id}`");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types `text` into the field `#id`.
async fn type_into(c: &Client, id: &str, text: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

/// Clicks the element `css` names.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn sign_in(c: &Client, token: &str) {
    type_into(c, "token", token).await;
    click(c, "#signin-form button").await;
}

/// The state cell of gateway `name`'s row in the fleet table.
async fn gateway_state(c: &Client, name: &str) -> Option<String> {
    let row = c
        .find(Locator::Css(&format!(
            "#fleet-table tr[data-name=\"{name}\"] td.state"
        )))
        .await
        .ok()?;
    row.text().await.ok()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let dir = TempDir::new("console");
    let Some(driver) = driver(dir.path()) else {
        return;
    };
    let registry = Registry::start(&[]);
    let upstream = ok_upstream().await;
    let fleet_token = registry.data_dir().join("fleet.token");
    let gateways: Vec<Proxy> = (0..2)
        .map(|i| {
            let cache = dir.path().join(format!("gw-{i}"));
            Proxy::start(
                &dir,
                &registry,
                &upstream,
                &[
                    "--name",
                    &format!("gw-{i}"),
                    "--fleet-token-file",
                    fleet_token.to_str().unwrap(),
                    "--report-interval",
                    "1s",
                    "--cache-dir",
                    cache.to_str().unwrap(),
                ],
            )
        })
        .collect();

    // The page's own headers: same-origin only, no framing.
    let resp = reqwest::get(registry.at(path::UI)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for needed in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(needed), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("http"),
        "{csp}"
    );
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    let html = resp.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "inline script or style"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "another origin"
    );

    let c = browser(&driver, &dir.path().join("profile")).await;
    c.goto(&registry.at(path::UI)).await.unwrap();

    // A wrong token is refused, and not kept.
    sign_in(&c, "not-a-token-at-all").await;
    until_text(&c, "signin-error", "a wrong token", |t| {
        t.contains("Not signed in")
    })
    .await;

    // The admin token: the fleet, live.
    sign_in(&c, &registry.token()).await;
    until_text(&c, "fleet-summary", "two live gateways", |t| {
        t.contains("2 gateways, 2 live")
    })
    .await;
    until_text(&c, "state-dl", "the state", |t| t.contains("Entries")).await;
    shot(&c, "fleet.png").await;

    // The token is in this tab's session storage only: not in the URL,
    // a cookie or local storage.
    let url = c.current_url().await.unwrap();
    assert!(!url.as_str().contains(&registry.token()), "{url}");
    let stored = c
        .execute(
            "return [sessionStorage.getItem('veto-token'), document.cookie, localStorage.length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!([registry.token(), "", 0]));

    // Revoke, and watch it reach both gateways.
    type_into(&c, "rv-id", "jti-from-the-console").await;
    c.find(Locator::Id("rv-reason"))
        .await
        .unwrap()
        .select_by_value("key_compromise")
        .await
        .unwrap();
    click(&c, "#revoke-form button").await;
    let conv = until_text(&c, "conv-summary", "the convergence", |t| {
        t.contains("enforced by 2 of 2 gateways")
    })
    .await;
    eprintln!("console: {conv}");
    until_text(&c, "chart-table", "the propagation chart", |t| {
        t.contains("2 of 2")
    })
    .await;
    shot(&c, "revoked.png").await;

    // The audit log shows it, with the actor.
    type_into(&c, "au-actor", "admin").await;
    click(&c, "#audit-form button").await;
    until_text(&c, "audit-table", "the audit log", |t| {
        t.contains("jti-from-the-console") && t.contains("key_compromise")
    })
    .await;

    // Freeze a gateway: it turns lost, in words, not only in colour.
    signal(gateways[1].pid(), "-STOP");
    let start = Instant::now();
    loop {
        if gateway_state(&c, "gw-1").await.as_deref() == Some("LOST") {
            break;
        }
        assert!(start.elapsed() < WITHIN, "gw-1 never showed LOST");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(gateway_state(&c, "gw-0").await.as_deref(), Some("live"));
    shot(&c, "lost.png").await;
    signal(gateways[1].pid(), "-CONT");

    // Every input has a label.
    let unlabelled = c
        .execute(
            "return [...document.querySelectorAll('input, select')].filter(e => !document.querySelector(`label[for=\"${e.id}\"]`)).map(e => e.id)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]));

    // A token with only the audit scope: the page gives it no more.
    let (status, made) = registry
        .admin_post(
            path::TOKENS,
            &json!({"name": "auditor", "scopes": ["audit"]}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let auditor = made["token"].as_str().unwrap().to_owned();
    click(&c, "#signout").await;
    sign_in(&c, &auditor).await;
    until_text(&c, "fleet-summary", "no fleet scope", |t| {
        t.contains("does not have the fleet scope")
    })
    .await;
    type_into(&c, "rv-id", "jti-the-auditor-may-not-revoke").await;
    click(&c, "#revoke-form button").await;
    until_text(&c, "revoke-result", "a refused revocation", |t| {
        t.contains("Not revoked") && t.contains("revoke")
    })
    .await;
    let (_, log) = registry.admin_get(path::REVOCATIONS).await;
    assert!(!log.to_string().contains("jti-the-auditor-may-not-revoke"));
    c.close().await.unwrap();
}
