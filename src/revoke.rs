//! Revoking OAuth2 tokens (RFC 7009, `spec.source.oauth2.revoke`): the
//! replaced token after a delay, in the background (a rotation never waits
//! for it), and the current one when the credential is deleted. A token to
//! revoke lives only in the task's memory: after an operator restart it
//! simply expires.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use crate::events::{Event, Recorder, Type as EventType};
use secrecy::SecretString;
use tracing::warn;

use crate::api::{OAuth2Source, Revocation as RevokeSettings};
use crate::context::Context;
use crate::metrics::{Metrics, RevocationLabels};
use crate::source::{self, NetPolicy, SecretReader};

/// The longest one revocation request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// What a revocation needs, detached from the reconcile.
pub struct RevokeTask {
    spec: Option<OAuth2Source>,
    secrets: SecretReader,
    net: NetPolicy,
    metrics: Arc<Metrics>,
    recorder: Arc<Recorder>,
    about: ObjectReference,
    /// (namespace, "" when cluster-scoped; name), for metric labels.
    labels: (String, String),
}

/// The revocation settings of a source (all off when it is not OAuth2).
pub fn settings(source: &crate::api::CredentialSource) -> RevokeSettings {
    source.oauth2.as_ref().and_then(|o| o.revoke.clone()).unwrap_or_default()
}

/// How long after a rotation the replaced token is revoked: the setting,
/// 60 s by default, at most an hour.
pub fn delay(s: &RevokeSettings) -> Duration {
    s.delay
        .as_deref()
        .and_then(|d| source::parse_duration("spec.source.oauth2.revoke.delay", d).ok())
        .and_then(|d| d.to_std().ok())
        .unwrap_or(Duration::from_secs(60))
        .min(Duration::from_secs(3600))
}

/// The replaced token to revoke after a rotation: the previous one, when
/// it is not also the new one.
pub fn replaced(previous: Option<String>, minted: &source::Minted) -> Option<SecretString> {
    let new = minted.entries.first().map(|e| secrecy::ExposeSecret::expose_secret(&e.password).to_string());
    previous.filter(|p| Some(p) != new.as_ref()).map(SecretString::from)
}

/// After a rotation (both kinds): when the source asks for it, revoke the
/// token `previous` held (the Secret as it was before the write, if ours),
/// after the configured delay, in the background.
pub fn after_rotation(ctx: &Context, source: &crate::api::CredentialSource, refs_namespace: &str, about: ObjectReference, labels: (String, String), previous: Option<String>, minted: &source::Minted) {
    let s = settings(source);
    if s.on_rotation != Some(true) {
        return;
    }
    if let Some(token) = replaced(previous, minted) {
        RevokeTask::new(ctx, source, refs_namespace, about, labels).spawn_after(token, delay(&s));
    }
}

/// On deletion (both kinds): when the source asks for it, revoke the token
/// `current` holds, once (deletion is not held up).
pub async fn on_delete(ctx: &Context, source: &crate::api::CredentialSource, refs_namespace: &str, about: ObjectReference, labels: (String, String), current: Option<String>) {
    if settings(source).on_delete != Some(true) {
        return;
    }
    if let Some(token) = current {
        RevokeTask::new(ctx, source, refs_namespace, about, labels).run(SecretString::from(token), 1).await;
    }
}

impl RevokeTask {
    /// For a credential whose source Secrets live in `refs_namespace`.
    pub fn new(ctx: &Context, source: &crate::api::CredentialSource, refs_namespace: &str, about: ObjectReference, labels: (String, String)) -> Self {
        Self {
            spec: source.oauth2.clone(),
            secrets: SecretReader::new(ctx.client.clone(), refs_namespace),
            net: ctx.settings.net.clone(),
            metrics: ctx.metrics.clone(),
            recorder: ctx.recorder.clone(),
            about,
            labels,
        }
    }

    /// Revoke `token` after `delay`, in the background, with three tries.
    pub fn spawn_after(self, token: SecretString, delay: Duration) {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            self.run(token, 3).await;
        });
    }

    /// Revoke now, with `attempts` tries; reported by Event and metric.
    pub async fn run(self, token: SecretString, attempts: u32) {
        let Some(spec) = &self.spec else { return };
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(5 * 3u64.pow(attempt - 1))).await;
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, source::oauth2::revoke(spec, &self.secrets, &self.net, &token)).await {
                Ok(Ok(())) => {
                    last = None;
                    break;
                }
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("the revocation endpoint did not answer within 15s".into()),
            }
        }
        self.report(last).await;
    }

    async fn report(self, error: Option<String>) {
        let (namespace, name) = self.labels.clone();
        let (result, type_, reason, note) = match error {
            None => ("revoked", EventType::Normal, "Revoked", "Revoked the previous token (RFC 7009)".to_string()),
            Some(e) => {
                warn!(namespace = %namespace, name = %name, error = %e, "revoking a token failed");
                ("failed", EventType::Warning, crate::status::reason::REVOCATION_FAILED, format!("Revoking a token failed: {e}"))
            }
        };
        self.metrics.revocations.get_or_create(&RevocationLabels { namespace, name, result: result.into() }).inc();
        let ev = Event { type_, reason, action: "Revoke", note };
        if let Err(e) = self.recorder.publish(ev, &self.about).await {
            warn!(error = %crate::source::summarize_kube_error(&e), "publishing an Event failed");
        }
    }
}
