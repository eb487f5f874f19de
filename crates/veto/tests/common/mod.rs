//! Helpers for end-to-end tests that run the real `veto` binary: a
//! temporary directory removed on drop, a child process killed on drop
//! (its stderr kept in a log file for the failure message), and a running
//! registry with a small HTTP client for it.
//!
//! Each test binary uses a different part of this module.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this kit"
)]

pub mod relay;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde_json::Value;
use veto_core::{
    keyfile, Clock as _, KeySet, PublicKey, SrlVerifier, SystemClock, VerifiedSnapshot,
};

/// The `veto` binary under test.
pub const VETO: &str = env!("CARGO_BIN_EXE_veto");

/// How long a process may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Now, in Unix seconds.
pub fn now() -> u64 {
    SystemClock.now()
}

/// A fresh directory under the system temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a directory whose name no other test (or test run) uses.
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "veto-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating `{}`: {e}", path.display()));
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A PostgreSQL schema the registries in this directory used.
        if let (Ok(name), Ok(base)) = (
            std::fs::read_to_string(self.0.join(PG_SCHEMA_FILE)),
            std::env::var("VETO_TEST_POSTGRES_URL"),
        ) {
            pg_execute(&base, &format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// With `VETO_TEST_REGISTRY_STORE=postgres`, every registry these tests
/// start runs on PostgreSQL (`VETO_TEST_POSTGRES_URL`, one schema per
/// registry directory, kept across restarts in that directory) instead of
/// SQLite, so the same suite covers both stores.
const REGISTRY_STORE_VAR: &str = "VETO_TEST_REGISTRY_STORE";

/// Where a directory records its PostgreSQL schema.
const PG_SCHEMA_FILE: &str = "pg-schema";

/// Runs `sql` on the database at `base`, on a runtime of its own (callers
/// may be inside or outside one).
fn pg_execute(base: &str, sql: &str) {
    let (base, sql) = (base.to_owned(), sql.to_owned());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for PostgreSQL");
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connecting to VETO_TEST_POSTGRES_URL `{base}`: {e}"));
            tokio::spawn(conn);
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
        });
    })
    .join();
}

/// A URL for the database at `base` with `schema` as the search path.
fn schema_url(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

/// The `--store` URL for a registry in `dir` under
/// `VETO_TEST_REGISTRY_STORE=postgres`; `None` for the default store.
fn registry_store(dir: &Path) -> Option<String> {
    match std::env::var(REGISTRY_STORE_VAR).as_deref() {
        Ok("postgres") => {}
        Ok("sqlite") | Ok("") | Err(_) => return None,
        Ok(other) => panic!("{REGISTRY_STORE_VAR}=`{other}`: use `postgres` or `sqlite`"),
    }
    let base = std::env::var("VETO_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| panic!("{REGISTRY_STORE_VAR}=postgres needs VETO_TEST_POSTGRES_URL"));
    let file = dir.join(PG_SCHEMA_FILE);
    let name = match std::fs::read_to_string(&file) {
        Ok(name) => name,
        Err(_) => {
            static N: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "veto_r_{}_{}_{}",
                std::process::id(),
                now(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            pg_execute(&base, &format!("CREATE SCHEMA {name}"));
            std::fs::write(&file, &name).expect("recording the schema");
            name
        }
    };
    Some(schema_url(&base, &name))
}

/// A child process, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Process {
    /// Spawns `cmd` with stdout piped and stderr written to `log`, and
    /// waits until a stdout line satisfies `ready`; returns the process and
    /// that line. Later stdout is drained so the child never blocks on it.
    pub fn spawn(
        mut cmd: Command,
        name: &str,
        log: &Path,
        ready: impl Fn(&str) -> bool + Send + 'static,
    ) -> (Self, String) {
        let stderr = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("creating `{}`: {e}", log.display()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.as_ref().is_some_and(|_| ready(&line)) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let mut process = Self {
            child,
            name: name.to_owned(),
            log: log.to_owned(),
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => (process, line),
            Err(_) => {
                let status = process.child.try_wait().ok().flatten();
                process.kill();
                panic!(
                    "{name} did not become ready within {READY_TIMEOUT:?} (exit status {status:?}); its stderr:\n{}",
                    process.log_text()
                );
            }
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGKILL (no chance to clean up) and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident set size and its peak, in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// An upstream in this process answering `ok` to everything; its URL.
pub async fn ok_upstream() -> String {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the upstream");
    let url = format!(
        "http://{}",
        listener.local_addr().expect("upstream address")
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The first `http://…` URL in a line, without a trailing slash.
pub fn url_in(line: &str) -> String {
    let start = line
        .find("http://")
        .unwrap_or_else(|| panic!("no URL in `{line}`"));
    line[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned()
}

/// A `veto` command with a clean environment: no `VETO_*` variables from
/// the caller, no user config file.
pub fn veto_command(config_home: &Path) -> Command {
    let mut cmd = Command::new(VETO);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VETO_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("XDG_CONFIG_HOME", config_home)
        .env("HOME", config_home);
    cmd
}

/// A running `veto serve`.
#[derive(Debug)]
pub struct Registry {
    process: Process,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    data_dir: PathBuf,
    http: reqwest::Client,
    /// Kept last so the directory outlives the process.
    dir: Arc<TempDir>,
}

static STARTS: AtomicU32 = AtomicU32::new(0);

impl Registry {
    /// Starts a registry on a fresh temporary directory; `args` are added
    /// to `veto serve --listen 127.0.0.1:0 --data-dir DIR`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_in(Arc::new(TempDir::new("registry")), args)
    }

    /// Starts a registry with data in `dir` (its `data` subdirectory), for
    /// example again after [`Registry::kill`].
    pub fn start_in(dir: Arc<TempDir>, args: &[&str]) -> Self {
        let data_dir = dir.path().join("data");
        Self::start_with_data(dir, data_dir, args)
    }

    /// Starts a registry with its data in `data_dir` and its logs in `dir`.
    pub fn start_with_data(dir: Arc<TempDir>, data_dir: PathBuf, args: &[&str]) -> Self {
        let log = dir.path().join(format!(
            "registry-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = veto_command(dir.path());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args);
        if !args.contains(&"--store") {
            if let Some(store) = registry_store(dir.path()) {
                cmd.arg("--store").arg(store);
            }
        }
        let (process, line) = Process::spawn(cmd, "veto serve", &log, |l| {
            l.starts_with("veto registry listening on http://")
        });
        let url = url_in(&line);
        let addr = url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("address in `{line}`: {e}"));
        Self::started(process, url, addr, data_dir, dir)
    }

    fn started(
        process: Process,
        url: String,
        addr: SocketAddr,
        data_dir: PathBuf,
        dir: Arc<TempDir>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("building an HTTP client");
        Self {
            process,
            url,
            addr,
            data_dir,
            http,
            dir,
        }
    }

    /// The temporary directory holding the data directory and the logs.
    pub fn dir(&self) -> Arc<TempDir> {
        self.dir.clone()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The admin token file.
    pub fn token_file(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// The admin token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.token_file())
            .expect("reading admin.token")
            .trim()
            .to_owned()
    }

    /// The authority public key, as authorizers pin it.
    pub fn authority_key(&self) -> PublicKey {
        keyfile::read_public_key(&self.data_dir.join("authority.pub.jwk"))
            .expect("reading authority.pub.jwk")
    }

    /// A verifier for the published state, pinned to the authority key.
    pub fn verifier(&self) -> SrlVerifier {
        SrlVerifier::new(KeySet::new([self.authority_key()]), "veto")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The process.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Kills the registry with SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The HTTP client (it decompresses gzip transparently).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `{url}{path}`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Status and JSON body of a request (the body is `Null` when empty,
    /// a JSON string when it is not JSON).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("request to the registry");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// A public GET, as JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.at(path))).await
    }

    /// An admin GET, as JSON.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.at(path)).bearer_auth(self.token()))
            .await
    }

    /// An admin POST of a JSON value.
    pub async fn admin_post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.http
                .post(self.at(path))
                .bearer_auth(self.token())
                .json(body),
        )
        .await
    }

    /// `POST /v1/revocations {"entries": entries}`.
    pub async fn revoke(&self, entries: Value) -> (u16, Value) {
        self.admin_post(
            "/v1/revocations",
            &serde_json::json!({ "entries": entries }),
        )
        .await
    }

    /// The current version, from `/healthz`.
    pub async fn version(&self) -> u64 {
        let (status, body) = self.get("/healthz").await;
        assert_eq!(status, 200, "healthz: {body}");
        body["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("healthz without a version: {body}"))
    }

    /// The current snapshot as served, verified.
    pub async fn snapshot(&self) -> VerifiedSnapshot {
        let resp = self
            .http
            .get(self.at("/v1/srl"))
            .send()
            .await
            .expect("GET /v1/srl");
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.text().await.expect("snapshot body");
        self.verifier()
            .snapshot(&text, now())
            .unwrap_or_else(|e| panic!("snapshot does not verify: {e}"))
    }

    /// Every delta after `since`, following the 1000-per-response pages.
    pub async fn all_deltas(&self, since: u64) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        loop {
            let from = since + out.len() as u64;
            let (status, body) = self.get(&format!("/v1/srl/deltas?since={from}")).await;
            assert_eq!(status, 200, "deltas since {from}: {body}");
            let page: Vec<String> = serde_json::from_value(body["deltas"].clone())
                .unwrap_or_else(|e| panic!("deltas: {e}: {body}"));
            if page.is_empty() {
                return out;
            }
            out.extend(page);
        }
    }

    /// Every audit record matching `query` (such as `kind=warrant`),
    /// following the `next` cursor.
    pub async fn audit_all(&self, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<i64> = None;
        loop {
            let cursor = after.map(|a| format!("&after={a}")).unwrap_or_default();
            let (status, body) = self
                .admin_get(&format!("/v1/revocations?limit=1000&{query}{cursor}"))
                .await;
            assert_eq!(status, 200, "audit log: {body}");
            out.extend(body["items"].as_array().cloned().unwrap_or_default());
            match body["next"].as_i64() {
                Some(n) => after = Some(n),
                None => return out,
            }
        }
    }
}

/// A server-sent event stream read through [`veto_core::SseParser`].
pub struct EventStream {
    resp: reqwest::Response,
    parser: veto_core::SseParser,
    ready: std::collections::VecDeque<veto_core::SseEvent>,
}

impl EventStream {
    /// Opens `GET {url}` as an event stream (`Last-Event-ID` when given).
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let mut req = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {url}");
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            ctype.starts_with("text/event-stream"),
            "content type `{ctype}`"
        );
        Self {
            resp,
            parser: veto_core::SseParser::new(64 << 20),
            ready: Default::default(),
        }
    }

    /// The last event id seen, as a reconnect sends it in `Last-Event-ID`.
    pub fn last_id(&self) -> Option<&str> {
        self.parser.last_id()
    }

    /// The next event, or a panic after `timeout` or at the end of the stream.
    pub async fn next(&mut self, timeout: Duration) -> veto_core::SseEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return e;
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {timeout:?}"))
                .unwrap_or_else(|e| panic!("event stream failed: {e}"))
                .unwrap_or_else(|| panic!("event stream ended"));
            let events = self
                .parser
                .feed(&chunk)
                .unwrap_or_else(|e| panic!("bad event stream: {e}"));
            self.ready.extend(events);
        }
    }

    /// The next event that is not of kind `skip` (such as heartbeat checkpoints).
    pub async fn next_except(&mut self, skip: &str, timeout: Duration) -> veto_core::SseEvent {
        loop {
            let e = self.next(timeout).await;
            if e.event != skip {
                return e;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Added for tests/proxy.rs: a registry on a chosen address (to restart it
// on the same port) and a running `veto proxy`.

impl Registry {
    /// Starts a registry listening on `addr` with data in `dir` (its `data`
    /// subdirectory): after [`Registry::kill`], the same registry comes
    /// back where its clients expect it.
    pub fn start_on(dir: Arc<TempDir>, addr: SocketAddr, args: &[&str]) -> Self {
        let data_dir = dir.path().join("data");
        let log = dir.path().join(format!(
            "registry-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = veto_command(dir.path());
        cmd.arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args);
        let (process, line) = Process::spawn(cmd, "veto serve", &log, |l| {
            l.starts_with("veto registry listening on http://")
        });
        let url = url_in(&line);
        assert_eq!(
            url,
            format!("http://{addr}"),
            "restarted elsewhere: `{line}`"
        );
        Self::started(process, url, addr, data_dir, dir)
    }

    /// The authority public key file authorizers pin (`--authority-key`).
    pub fn authority_key_file(&self) -> PathBuf {
        self.data_dir.join("authority.pub.jwk")
    }

    /// Mints a root warrant through `POST /v1/warrants`; returns the chain
    /// and its `jti`.
    pub async fn mint(
        &self,
        agent: &str,
        act: &[&str],
        holder: Option<&PublicKey>,
    ) -> (String, String) {
        let mut body = serde_json::json!({"agent": agent, "act": act, "ttl": 3600});
        if let Some(k) = holder {
            body["holder_key"] = serde_json::to_value(k.to_jwk()).expect("a JWK is JSON");
        }
        let (status, resp) = self.admin_post("/v1/warrants", &body).await;
        assert_eq!(status, 201, "minting a warrant: {resp}");
        let chain = resp["warrant"]
            .as_str()
            .unwrap_or_else(|| panic!("no warrant: {resp}"));
        let jti = resp["jti"]
            .as_str()
            .unwrap_or_else(|| panic!("no jti: {resp}"));
        (chain.to_owned(), jti.to_owned())
    }

    /// Revokes one warrant by `jti`; returns the new version.
    pub async fn revoke_warrant(&self, jti: &str) -> u64 {
        let (status, body) = self
            .revoke(serde_json::json!([{"kind": "warrant", "id": jti, "reason": "key_compromise"}]))
            .await;
        assert_eq!(status, 201, "revoking `{jti}`: {body}");
        body["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no version: {body}"))
    }
}

/// A running `veto proxy`.
#[derive(Debug)]
pub struct Proxy {
    process: Process,
    /// Where agents send requests.
    pub url: String,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_url: String,
    http: reqwest::Client,
}

impl Proxy {
    /// Starts `veto proxy --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
    /// --upstream UPSTREAM --registry URL --authority-key FILE`, plus `args`,
    /// logging into `dir`.
    pub fn start(dir: &TempDir, registry: &Registry, upstream: &str, args: &[&str]) -> Self {
        Self::start_via(dir, registry, &registry.url, upstream, args)
    }

    /// As [`Proxy::start`], reaching the registry at `via` (such as a
    /// fault-injecting relay in front of it).
    pub fn start_via(
        dir: &TempDir,
        registry: &Registry,
        via: &str,
        upstream: &str,
        args: &[&str],
    ) -> Self {
        let log = dir.path().join(format!(
            "proxy-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = veto_command(dir.path());
        cmd.arg("proxy")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--upstream", upstream, "--registry", via])
            .arg("--authority-key")
            .arg(registry.authority_key_file())
            .args(args);
        // The listen address is the first line, the admin address the second.
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        let (process, admin_line) = Process::spawn(cmd, "veto proxy", &log, move |l| {
            seen.lock().expect("lines").push(l.to_owned());
            l.starts_with("  admin (metrics, health): http://")
        });
        let first = lines
            .lock()
            .expect("lines")
            .first()
            .cloned()
            .unwrap_or_default();
        assert!(
            first.starts_with("veto proxy listening on http://"),
            "first line `{first}`"
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("building an HTTP client");
        Self {
            process,
            url: url_in(&first),
            admin_url: url_in(&admin_line),
            http,
        }
    }

    /// What the proxy wrote to stderr so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// `{url}{path}`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `GET {admin_url}{path}`.
    async fn admin(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.admin_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the proxy's admin address: {e}"))
    }

    /// The admin `/healthz` body.
    pub async fn health(&self) -> Value {
        self.admin("/healthz")
            .await
            .json()
            .await
            .expect("healthz is JSON")
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin("/metrics")
            .await
            .text()
            .await
            .expect("metrics text")
    }

    /// One series (`name` or `name{labels}`) from `/metrics`; 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

/// The value of one series (`name` or `name{labels}`) in Prometheus text;
/// 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("metric `{series}` value `{v}`: {e}"))
        })
        .unwrap_or(0.0)
}

/// A fresh schema in the test database, dropped on drop.
pub struct Schema {
    base: String,
    name: String,
}

impl Schema {
    pub async fn create(base: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "veto_t_{}_{}_{}",
            std::process::id(),
            now(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        pg_execute(base, &format!("CREATE SCHEMA {name}"));
        Self {
            base: base.to_owned(),
            name,
        }
    }

    /// The URL with this schema as the search path.
    pub fn url(&self) -> String {
        schema_url(&self.base, &self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        pg_execute(&self.base, &format!("DROP SCHEMA {} CASCADE", self.name));
    }
}

impl Proxy {
    /// The status of the admin `/readyz` (200 fresh, 503 stale).
    pub async fn readyz_status(&self) -> u16 {
        self.admin("/readyz").await.status().as_u16()
    }
}

impl Registry {
    /// Starts a registry on a fresh temporary directory with extra
    /// environment variables (such as `VETO_ADMIN_TOKEN`).
    pub fn start_env(envs: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_program(VETO, envs, args)
    }

    /// As [`Registry::start_env`], running the `veto` binary at `program`
    /// (an older build, for a before/after figure).
    pub fn start_program(program: &str, envs: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = Arc::new(TempDir::new("registry"));
        let data_dir = dir.path().join("data");
        let log = dir.path().join(format!(
            "registry-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        // The environment `veto_command` prepares, for another binary.
        let base = veto_command(dir.path());
        let mut cmd = Command::new(program);
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .envs(envs.iter().copied());
        let (process, line) = Process::spawn(cmd, "veto serve", &log, |l| {
            l.starts_with("veto registry listening on http://")
        });
        let url = url_in(&line);
        let addr = url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("address in `{line}`: {e}"));
        Self::started(process, url, addr, data_dir, dir)
    }
}

/// Runs `veto serve` on `data_dir` with extra environment variables,
/// expecting it to refuse to start: returns its exit code and everything
/// it wrote (stdout, then stderr). Panics if it is still running after 20 s.
pub fn serve_refused(data_dir: &Path, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let home = data_dir.parent().unwrap_or(data_dir);
    let mut child = veto_command(home)
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning veto serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while matches!(child.try_wait(), Ok(None)) {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("veto serve started although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("veto serve output");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
