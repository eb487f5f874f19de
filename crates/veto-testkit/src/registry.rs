//! A running `veto serve`, with a small HTTP client for its API, and a
//! `veto serve` expected to refuse to start.

#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a test kit: a step that fails fails the test there, with what went wrong"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use veto_core::wire::{path, DeltasPage};
use veto_core::{keyfile, KeySet, PublicKey, SrlVerifier, VerifiedSnapshot};

use crate::pg::registry_store;
use crate::process::{program_command, veto_command, Process, READY_TIMEOUT};
use crate::{now, TempDir};

/// A running `veto serve`.
#[derive(Debug)]
pub struct Registry {
    process: Process,
    /// `http://127.0.0.1:PORT` (`https://` when started with `--tls-cert`).
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    data_dir: PathBuf,
    http: reqwest::Client,
    /// Kept last so the directory outlives the process.
    dir: Arc<TempDir>,
}

/// Numbers the log files of the registries and proxies a test starts.
pub(crate) static STARTS: AtomicU32 = AtomicU32::new(0);

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
        let store = if args.contains(&"--store") {
            None
        } else {
            registry_store(dir.path())
        };
        let listen = "127.0.0.1:0";
        Self::launch(crate::veto_bin(), dir, data_dir, listen, args, &[], store)
    }

    /// Runs `PROGRAM serve --listen LISTEN --data-dir DATA_DIR ARGS
    /// [--store STORE]` with `envs` added to the clean environment, logging
    /// into `dir`, and waits for its banner.
    fn launch(
        program: &(impl AsRef<std::ffi::OsStr> + ?Sized),
        dir: Arc<TempDir>,
        data_dir: PathBuf,
        listen: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        store: Option<String>,
    ) -> Self {
        let log = dir.path().join(format!(
            "registry-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = program_command(program, dir.path());
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .envs(envs.iter().copied());
        if let Some(store) = store {
            cmd.arg("--store").arg(store);
        }
        let (process, url) =
            Process::start_registry(cmd, &log, READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        let addr = url
            .split_once("://")
            .map_or(url.as_str(), |(_, a)| a)
            .parse()
            .unwrap_or_else(|e| panic!("address in `{url}`: {e}"));
        Self {
            process,
            url,
            addr,
            data_dir,
            http: crate::http_client(),
            dir,
        }
    }

    /// Replaces the HTTP client its helpers use (such as one that trusts a
    /// test CA, see [`crate::tls::https_client`]).
    pub fn set_http(&mut self, http: reqwest::Client) {
        self.http = http;
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

    /// What the registry wrote to stderr so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
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

    /// `DELETE {path}` with the admin token.
    pub async fn admin_delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(self.at(path)).bearer_auth(self.token()))
            .await
    }

    /// `POST /v1/revocations {"entries": entries}`.
    pub async fn revoke(&self, entries: Value) -> (u16, Value) {
        self.admin_post(
            path::REVOCATIONS,
            &serde_json::json!({ "entries": entries }),
        )
        .await
    }

    /// The current version, from `/healthz`.
    pub async fn version(&self) -> u64 {
        let (status, body) = self.get(path::HEALTHZ).await;
        assert_eq!(status, 200, "healthz: {body}");
        body["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("healthz without a version: {body}"))
    }

    /// The current snapshot as served (its binary container), verified.
    pub async fn snapshot(&self) -> VerifiedSnapshot {
        let resp = self
            .http
            .get(self.at(path::SRL))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {}: {e}", path::SRL));
        assert_eq!(resp.status().as_u16(), 200);
        let body = resp.bytes().await.expect("snapshot body");
        self.verifier()
            .snapshot(&body, now())
            .unwrap_or_else(|e| panic!("snapshot does not verify: {e}"))
    }

    /// `GET {SRL_DELTAS}?since={since}`: status and JSON body.
    pub async fn deltas_since(&self, since: u64) -> (u16, Value) {
        self.get(&format!("{}?since={since}", path::SRL_DELTAS))
            .await
    }

    /// Every delta after `since`, following the 1000-per-response pages.
    pub async fn all_deltas(&self, since: u64) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        loop {
            let from = since + out.len() as u64;
            let (status, body) = self.deltas_since(from).await;
            assert_eq!(status, 200, "deltas since {from}: {body}");
            let DeltasPage { deltas: page } = serde_json::from_value(body.clone())
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
                .admin_get(&format!("{}?limit=1000&{query}{cursor}", path::REVOCATIONS))
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

impl Registry {
    /// Starts a registry listening on `addr` with data in `dir` (its `data`
    /// subdirectory): after [`Registry::kill`], the same registry comes
    /// back where its clients expect it.
    pub fn start_on(dir: Arc<TempDir>, addr: SocketAddr, args: &[&str]) -> Self {
        let data_dir = dir.path().join("data");
        let listen = addr.to_string();
        let registry = Self::launch(crate::veto_bin(), dir, data_dir, &listen, args, &[], None);
        assert_eq!(
            registry.url,
            format!("http://{addr}"),
            "restarted elsewhere: `{}`",
            registry.url
        );
        registry
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
        // The registry requires a holder key; without one given, a key
        // nobody holds is bound (for bearer tests against `--pop off`).
        let unheld = veto_core::SigningKey::from_seed(&[0x5a; 32]);
        let holder = holder.unwrap_or(unheld.public());
        let body = serde_json::json!({"agent": agent, "act": act, "ttl": 3600,
            "holder_key": serde_json::to_value(holder.to_jwk()).expect("a JWK is JSON")});
        let (status, resp) = self.admin_post(path::WARRANTS, &body).await;
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

impl Registry {
    /// Starts a registry on a fresh temporary directory with extra
    /// environment variables (such as `VETO_ADMIN_TOKEN`).
    pub fn start_env(envs: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_program(crate::veto_bin(), envs, args)
    }

    /// As [`Registry::start_env`], running the `veto` binary at `program`
    /// (an older build, for a before/after figure).
    pub fn start_program(
        program: &(impl AsRef<std::ffi::OsStr> + ?Sized),
        envs: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let dir = Arc::new(TempDir::new("registry"));
        let data_dir = dir.path().join("data");
        Self::launch(program, dir, data_dir, "127.0.0.1:0", args, envs, None)
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
