//! Reporting to the registry's fleet view (DESIGN 5): the gateway's key is
//! enrolled once (with the fleet enrolment token, when given), then a
//! signed report (`veto-report+jwt`) goes out at start, after every newly
//! applied version (at most one per `min_gap`, so a storm of revocations
//! is a handful of reports) and every `interval`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use veto_core::report::{self, ReportPayload};
use veto_core::wire::{path, ErrorBody, ErrorCode};
use veto_core::StalenessPolicy;

use crate::config::{FleetConfig, Push};
use crate::state::State;

/// What the reporter needs from the authorizer.
pub(crate) struct Reporter {
    pub(crate) fleet: FleetConfig,
    pub(crate) registry: String,
    pub(crate) iss: String,
    pub(crate) push: &'static str,
    pub(crate) policy: &'static str,
    pub(crate) state: Arc<State>,
    pub(crate) http: reqwest::Client,
}

/// Why an enrolment did not happen.
pub(crate) enum Enrol {
    /// The registry answered and refused (a wrong token, a name taken, a
    /// removed gateway): retrying will not help.
    Refused(String),
    /// The registry could not be reached, or failed: retry.
    Unreachable(String),
}

/// Enrols the gateway's key under its name with the fleet token. An
/// already enrolled key is fine (a restart); under another name, the
/// registry keeps the name it has, and that is logged.
pub(crate) async fn enrol(
    http: &reqwest::Client,
    registry: &str,
    fleet: &FleetConfig,
    token: &str,
) -> Result<(), Enrol> {
    let body = serde_json::json!({
        "name": fleet.name,
        "key": fleet.key.public().to_jwk(),
    });
    let resp = http
        .post(format!("{registry}{}", path::FLEET_GATEWAYS))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .map_err(|e| Enrol::Unreachable(veto_tls::error_chain(&e)))?;
    let status = resp.status().as_u16();
    if status == 201 {
        tracing::info!(id = fleet.key.kid(), name = %fleet.name, "enrolled in the registry's fleet");
        return Ok(());
    }
    let err: Option<ErrorBody> = resp.json().await.ok();
    match err {
        Some(e) if e.error == ErrorCode::AlreadyEnrolled.as_str() => {
            if !e.message.contains(&format!("`{}`", fleet.name)) {
                tracing::warn!(message = %e.message, name = %fleet.name, "this key is enrolled under another name; the registry keeps that one (veto fleet remove, then restart, to rename)");
            }
            Ok(())
        }
        Some(e) if (400..500).contains(&status) => Err(Enrol::Refused(format!(
            "registry answered {status} {}: {}",
            e.error, e.message
        ))),
        Some(e) => Err(Enrol::Unreachable(format!(
            "registry answered {status}: {}",
            e.message
        ))),
        None => Err(Enrol::Unreachable(format!("registry answered {status}"))),
    }
}

/// The `push` a report names for a transport.
pub(crate) fn push_name(push: &Push) -> &'static str {
    match push {
        Push::Sse => "sse",
        Push::Nats(_) => "nats",
        Push::Off => "off",
    }
}

/// The `policy` a report names.
pub(crate) fn policy_name(policy: StalenessPolicy) -> &'static str {
    match policy {
        StalenessPolicy::FailClosed => "fail-closed",
        StalenessPolicy::FailOpen => "fail-open",
    }
}

impl Reporter {
    /// Enrols (when a token is given and `enrolled` is false), then
    /// reports until `stop`.
    pub(crate) async fn run(self, enrolled: bool, mut stop: watch::Receiver<bool>) {
        if let (Some(token), false) = (self.fleet.enrol_token.clone(), enrolled) {
            let mut backoff = Duration::from_millis(200);
            loop {
                match enrol(&self.http, &self.registry, &self.fleet, &token).await {
                    Ok(()) => break,
                    Err(Enrol::Refused(e)) => {
                        tracing::error!(error = %e, "the registry refused to enrol this gateway; reports will be refused until an operator enrols its key (veto fleet enrol)");
                        break;
                    }
                    Err(Enrol::Unreachable(e)) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot enrol with the registry's fleet yet");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(self.fleet.interval);
            }
        }
        let mut versions = self.state.subscribe_versions();
        let mut seq = 0u64;
        loop {
            // Milliseconds since the epoch, or one more than the last:
            // increasing across restarts too (unless the clock steps back).
            seq = (seq + 1).max(veto_core::SystemClock::now_ms());
            if let Err(e) = self.report(seq).await {
                self.state.metrics().sync_error("fleet_report");
                tracing::warn!(error = %e, "fleet report not accepted");
            }
            // Wait at least `min_gap`, then until a new version or the
            // interval, whichever comes first.
            let gap = tokio::time::sleep(self.fleet.min_gap);
            tokio::select! {
                _ = gap => {}
                _ = stop.changed() => return,
            }
            tokio::select! {
                changed = versions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(self.fleet.interval.saturating_sub(self.fleet.min_gap)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn report(&self, seq: u64) -> Result<(), String> {
        let s = self.state.status();
        let payload = ReportPayload {
            aud: self.iss.clone(),
            name: self.fleet.name.clone(),
            iat: self.state.now(),
            seq,
            ver: s.version,
            head: s.head,
            fresh: s.fresh,
            staleness_s: s.age,
            fresh_until: s.fresh_until,
            push: self.push.into(),
            push_connected: s.push_connected,
            policy: self.policy.into(),
            error: s.last_error.as_deref().map(ReportPayload::new_error),
            interval_s: self.fleet.interval.as_secs().clamp(1, 3600),
            veto: env!("CARGO_PKG_VERSION").into(),
        };
        let jws = report::sign(&self.fleet.key, &payload);
        let resp = self
            .http
            .post(format!("{}{}", self.registry, path::FLEET_REPORTS))
            .header("content-type", "application/jose")
            .body(jws)
            .send()
            .await
            .map_err(|e| veto_tls::error_chain(&e))?;
        let status = resp.status().as_u16();
        if status == 204 || status == 200 {
            return Ok(());
        }
        let err: Option<ErrorBody> = resp.json().await.ok();
        Err(match err {
            Some(e) => format!("registry answered {status} {}: {}", e.error, e.message),
            None => format!("registry answered {status}"),
        })
    }
}
