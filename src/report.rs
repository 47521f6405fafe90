//! What an attempt's outcome tells the user, the same for both kinds: the
//! credential's status (the caller writes it, as each kind stores it
//! differently), its Events and its metrics. Messages reaching status and
//! Events were redacted by the attempt; Events are published when the state
//! changes, not on every retry.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ObjectReference;
use crate::events::Type as EventType;
use tracing::{info, warn};

use crate::api::{Condition, RegistryCredentialStatus, READY};
use crate::context::{publish_to, Context};
use crate::metrics::{CredentialLabels, FailureLabels};
use crate::schedule::{self, SecretState};
use crate::source::Minted;
use crate::status::{self, reason};

/// The credential being reported on.
pub struct Subject {
    pub about: ObjectReference,
    /// Namespace "" for a cluster-scoped credential.
    pub labels: CredentialLabels,
    pub generation: Option<i64>,
    pub seed: u64,
    /// Where its credential is written, for messages.
    pub secret_name: String,
}

impl Subject {
    pub async fn event(&self, ctx: &Context, type_: EventType, reason: &str, note: String) {
        publish_to(ctx, &self.about, type_, reason, Some(note)).await
    }
}

fn ready_of(st: &RegistryCredentialStatus) -> Option<&Condition> {
    st.conditions.iter().find(|c| c.type_ == READY)
}

/// A new credential was written.
pub async fn rotated(
    ctx: &Context,
    s: &Subject,
    prev: &RegistryCredentialStatus,
    inputs: &str,
    minted: &Minted,
    renewal: &schedule::Renewal,
    now: DateTime<Utc>,
) -> RegistryCredentialStatus {
    let mut st = status::rotated(prev, s.generation, inputs, &s.secret_name, minted.registries(), minted.expires_at, renewal.at, now);
    let lifetime = minted.expires_at.map(|t| (t - minted.issued_at).num_seconds()).unwrap_or_default();
    let short = (!renewal.safe).then(|| {
        format!(
            "credentials from this source live {lifetime}s; regcred mints at most once every {}s, so the Secret may hold an expired credential for part of each lifetime",
            ctx.settings.min_mint_interval.num_seconds()
        )
    });
    let was_short = prev.conditions.iter().any(|c| c.type_ == status::SHORT_LIVED && c.status == "True");
    status::set_short_lived(&mut st, short.clone(), now);
    let l = &s.labels;
    ctx.metrics.rotations.get_or_create(l).inc();
    ctx.metrics.ready.get_or_create(l).set(1);
    if let Some(na) = minted.expires_at {
        ctx.metrics.expiry.get_or_create(l).set(na.timestamp());
    }
    ctx.metrics.renewal.get_or_create(l).set(renewal.at.timestamp());
    match short {
        // Said once, when it starts; the rotations it causes are not Events.
        Some(note) if !was_short => s.event(ctx, EventType::Warning, reason::LIFETIME_TOO_SHORT, note).await,
        Some(_) => {}
        // The same note every time, so rotations count up one series
        // rather than add an Event each: no expiry here (status has it).
        None => s.event(ctx, EventType::Normal, reason::ROTATED, format!("Wrote a new credential to Secret {}", s.secret_name)).await,
    }
    info!(namespace = %l.namespace, name = %l.name, renewal = %renewal.at, not_after = ?minted.expires_at, "rotated");
    st
}

/// Why an attempt failed, and the expiry of the credential the Secret
/// still holds (the backoff keeps retries inside its life).
pub struct Failure {
    pub why: &'static str,
    /// Redacted already.
    pub message: String,
    pub current_not_after: Option<DateTime<Utc>>,
}

/// A failed attempt: the Secret stays as it is; status, Event and metrics
/// say why; the retry comes after the backoff (returned).
pub async fn failed(ctx: &Context, s: &Subject, prev: &RegistryCredentialStatus, inputs: &str, f: Failure, now: DateTime<Utc>) -> (RegistryCredentialStatus, DateTime<Utc>) {
    let Failure { why, message, current_not_after } = f;
    let failures = (prev.failed_attempts.max(0) as u32).saturating_add(1);
    let retry_at = schedule::add(now, schedule::backoff(failures, s.seed, now, current_not_after));
    let l = &s.labels;
    warn!(namespace = %l.namespace, name = %l.name, reason = why, error = %message, "mint failed");
    let st = status::failed(prev, s.generation, inputs, why, message.clone(), Some(retry_at), now);
    let same_state = ready_of(prev).is_some_and(|c| c.status == "False" && c.reason == why && c.message.starts_with(&message));
    let fl = FailureLabels { namespace: l.namespace.clone(), name: l.name.clone(), reason: why.into() };
    ctx.metrics.failures.get_or_create(&fl).inc();
    ctx.metrics.ready.get_or_create(l).set(0);
    if !same_state {
        let event_reason = if why == reason::SECRET_REJECTED { reason::SECRET_REJECTED } else { reason::MINT_FAILED };
        s.event(ctx, EventType::Warning, event_reason, format!("{why}: {message}")).await;
    }
    (st, retry_at)
}

/// The target Secret belongs to someone else: nothing is touched.
pub async fn blocked(ctx: &Context, s: &Subject, prev: &RegistryCredentialStatus, now: DateTime<Utc>) -> RegistryCredentialStatus {
    let was = ready_of(prev).map(|c| c.reason.as_str()) == Some(reason::SECRET_CONFLICT);
    let st = status::conflict(prev, s.generation, &s.secret_name, now);
    ctx.metrics.ready.get_or_create(&s.labels).set(0);
    if !was {
        if let Some(note) = ready_of(&st).map(|c| c.message.clone()) {
            s.event(ctx, EventType::Warning, reason::SECRET_CONFLICT, note).await;
        }
    }
    st
}

/// Nothing to do until `at`: keep the gauges true.
pub fn waiting(ctx: &Context, s: &Subject, prev: &RegistryCredentialStatus, state: &SecretState, at: DateTime<Utc>) {
    let l = &s.labels;
    if let SecretState::Ours(o) = state {
        if let Some(na) = o.not_after {
            ctx.metrics.expiry.get_or_create(l).set(na.timestamp());
        }
        ctx.metrics.renewal.get_or_create(l).set(at.timestamp());
    }
    ctx.metrics.ready.get_or_create(l).set(i64::from(ready_of(prev).is_some_and(|c| c.status == "True")));
}

/// ServiceAccount entries this credential wants but another credential owns
/// (`clash`, a message; `None` when there are none): the condition in `st`,
/// and one Warning Event when the clash starts.
pub async fn clash(ctx: &Context, s: &Subject, prev: &RegistryCredentialStatus, st: &mut RegistryCredentialStatus, clash: Option<String>, now: DateTime<Utc>) {
    let was = prev.conditions.iter().any(|c| c.type_ == status::SA_CLASH && c.status == "True");
    status::set_clash(st, clash.clone(), s.generation, now);
    if let (Some(note), false) = (clash, was) {
        warn!(namespace = %s.labels.namespace, name = %s.labels.name, "{note}");
        s.event(ctx, EventType::Warning, status::SA_CLASH, note).await;
    }
}
