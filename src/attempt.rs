//! One attempt, the same for both kinds: what the decision looks at
//! (inputs fingerprint, the Secret's state, the last attempt), a slot in
//! the fair queue ([`crate::slots`], waited for between two passes of the
//! reconcile: [`in_passes`]), then mint under one deadline → check → verify
//! → write. Reporting the outcome (status, Events, metrics) is
//! [`crate::report`]'s; what a kind targets and how it fans out is its own
//! reconcile's.
//!
//! Every attempt counts against the least interval between mints from the
//! moment it asks the source ([`crate::memo::Attempts`]), so a write that
//! loses a race or a reconcile cut short cannot make a loop; a write that
//! loses a race is tried once more with the same credential.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::controller::Action;
use tokio::time::Instant;

use crate::api::{self, CredentialSource, Renewal};
use crate::context::{kube_err, Context, Error};
use crate::metrics::SourceLabels;
use crate::schedule::{self, Observed, OurSecret, Policy, SecretState};
use crate::secret::{self, WriteError};
use crate::slots::{Ask, Key, Permit, Work};
use crate::source::{self, Minted, SecretReader, SourceContext, SourceError};
use crate::status::reason;

/// The kind of source, for metric labels.
pub fn source_kind(s: &CredentialSource) -> &'static str {
    if s.ecr.is_some() {
        "ecr"
    } else if s.oauth2.is_some() {
        "oauth2"
    } else if s.http.is_some() {
        "http"
    } else if s.rotate.is_some() {
        "rotate"
    } else {
        "basic"
    }
}

/// The renewal policy of a credential. Durations are clamped to what the
/// CRD admits, so an object stored before a bound existed is safe too.
pub fn policy(renewal: &Renewal, source: &CredentialSource, min_interval: chrono::Duration) -> Result<Policy, SourceError> {
    let renew_before = renewal
        .renew_before
        .as_deref()
        .map(|d| source::parse_duration("spec.renewBefore", d).map(|d| d.min(schedule::MAX_LIFETIME)))
        .transpose()?;
    let refresh_interval = match source.basic.as_ref().and_then(|b| b.refresh_interval.as_deref()) {
        Some(d) => source::parse_duration("spec.source.basic.refreshInterval", d)?
            .clamp(schedule::MIN_REFRESH_INTERVAL, schedule::MAX_REFRESH_INTERVAL),
        None => schedule::DEFAULT_REFRESH_INTERVAL,
    };
    Ok(Policy {
        renew_before,
        renew_before_percentage: renewal.renew_before_percentage.map(|p| p.clamp(1, 99) as u8),
        refresh_interval,
        min_interval,
    })
}

/// Fingerprint of what a mint depends on: `spec` (the generation) and the
/// resourceVersion of each referenced Secret (metadata only; no data read). Versions the Secret watch has seen
/// (`known`) are used as they are; others are read once and remembered.
pub async fn inputs(
    spec: &str,
    source_spec: &CredentialSource,
    secrets: &Api<Secret>,
    known: Option<&crate::memo::Versions>,
) -> Result<String, Error> {
    let mut parts = vec![spec.to_string()];
    let ns = secrets.namespace().unwrap_or_default().to_string();
    for name in source::referenced_secrets(source_spec) {
        let seen = known.and_then(|k| k.get(&ns, &name));
        let rv = match seen {
            Some(crate::memo::Seen::At(rv)) => rv,
            _ => {
                let rv = secrets
                    .get_metadata_opt(&name)
                    .await
                    .map_err(kube_err("reading referenced Secret metadata"))?
                    .and_then(|m| m.metadata.resource_version);
                match (rv, known) {
                    (Some(rv), Some(k)) => {
                        k.observe(&ns, &name, &rv);
                        rv
                    }
                    (Some(rv), None) => rv,
                    (None, _) => "missing".into(),
                }
            }
        };
        parts.push(format!("{name}@{rv}"));
    }
    let head: String = spec.chars().take(24).collect();
    Ok(format!("{head}-{:016x}", schedule::seed(&parts.join(","))))
}

/// What regcred knows of a Secret it may own.
pub fn secret_state(existing: Option<&Secret>, ours: impl Fn(&Secret) -> bool) -> SecretState {
    match existing {
        None => SecretState::Missing,
        Some(s) if !ours(s) => SecretState::Foreign,
        Some(s) => {
            let a = secret::read_annotations(s);
            SecretState::Ours(OurSecret { intact: a.intact, inputs: a.inputs, not_after: a.not_after, renewal_time: a.renewal_time })
        }
    }
}

/// The credential's current expiry, when its Secret holds a usable one.
pub fn current_not_after(state: &SecretState) -> Option<DateTime<Utc>> {
    match state {
        SecretState::Ours(s) if s.intact => s.not_after,
        _ => None,
    }
}

/// Everything the schedule's decision looks at: status, the Secret, and
/// when this process last saw the credential ask its source.
pub struct Seen<'a> {
    pub secret: SecretState,
    pub desired_inputs: String,
    pub prev: &'a api::RegistryCredentialStatus,
    pub renew_requested: bool,
    pub last_attempt: Option<DateTime<Utc>>,
    pub seed: u64,
}

pub fn observed(seen: Seen<'_>, min_interval: chrono::Duration) -> Observed {
    let prev = seen.prev;
    Observed {
        renew_requested: seen.renew_requested,
        secret: seen.secret,
        desired_inputs: seen.desired_inputs,
        attempted_inputs: prev.observed_inputs.clone(),
        failed_attempts: prev.failed_attempts.max(0) as u32,
        last_failure: prev.last_failure_time,
        last_attempt: prev.last_rotation_time.max(prev.last_failure_time).max(seen.last_attempt),
        min_interval,
        seed: seen.seed,
    }
}

/// Who is minting: where its referenced Secrets live, its name (for the
/// AWS session), whether it is cluster-scoped (an admin's object), and its
/// jitter seed.
pub struct Minter<'a> {
    pub refs_namespace: &'a str,
    pub name: &'a str,
    pub cluster_scoped: bool,
    pub seed: u64,
    /// Read referenced Secrets from this directory instead of the cluster.
    pub secrets_dir: Option<&'a std::path::Path>,
    /// For `rotate` sources: the name of the key to create (recorded in
    /// status before this attempt; see [`crate::keys`]).
    pub key_name: Option<&'a str>,
}

impl Minter<'_> {
    /// The credential, for the attempt memory: (its namespace, "" when
    /// cluster-scoped; its name). A namespaced credential's Secrets live in
    /// its own namespace.
    pub fn key(&self) -> (&str, &str) {
        (if self.cluster_scoped { "" } else { self.refs_namespace }, self.name)
    }
}

/// Run `f` until `deadline`; past it, a [`SourceError::Deadline`] saying `what`.
pub async fn within<T>(
    deadline: Instant,
    budget: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, SourceError>>,
) -> Result<T, SourceError> {
    tokio::time::timeout_at(deadline, f)
        .await
        .map_err(|_| SourceError::Deadline(format!("{what} did not answer within the attempt's {}s", budget.as_secs())))?
}

/// What a source may need beyond its spec, for this minter, outside an
/// attempt (tending keys, see [`crate::keys`]).
pub fn source_context_for(ctx: &Context, who: &Minter<'_>, source_spec: &CredentialSource) -> Result<SourceContext, SourceError> {
    // Any renewal policy will do: only `ecr` reads it, to share tokens.
    let policy = policy(&Renewal::default(), source_spec, ctx.settings.min_mint_interval)?;
    Ok(source_context(ctx, who, policy))
}

/// What a source may need beyond its spec, for this minter.
fn source_context(ctx: &Context, who: &Minter<'_>, policy: Policy) -> SourceContext {
    let reader = SecretReader::new(ctx.client.clone(), who.refs_namespace);
    SourceContext {
        secrets: match who.secrets_dir {
            Some(d) => reader.from_dir(d.to_path_buf()),
            None => reader,
        },
        namespace: who.refs_namespace.to_string(),
        name: who.name.to_string(),
        cluster_scoped: who.cluster_scoped,
        now: ctx.now,
        ecr: ctx.ecr.clone(),
        net: ctx.settings.net.clone(),
        policy,
        seed: who.seed,
        key_name: who.key_name.map(str::to_string),
    }
}

/// One mint under one deadline (the source, then verification at the
/// registries, share `mint_timeout`): the checked credential and its
/// renewal instant, or why not. Leaves nothing written, and no key at a
/// registry that nothing will use.
pub async fn mint(
    ctx: &Context,
    who: &Minter<'_>,
    source_spec: &CredentialSource,
    renewal: &Renewal,
    now: DateTime<Utc>,
) -> Result<(Minted, schedule::Renewal), SourceError> {
    let budget = ctx.settings.mint_timeout;
    let deadline = Instant::now() + budget;
    let policy = policy(renewal, source_spec, ctx.settings.min_mint_interval)?;
    let cx = source_context(ctx, who, policy);
    let minted = within(deadline, budget, "the source", async { source::from_spec(source_spec, cx)?.mint().await }).await?;
    ctx.metrics.mints.get_or_create(&SourceLabels { source: source_kind(source_spec).into() }).inc();
    let key = minted.key.clone();
    let checked = async {
        let minted = minted.checked()?;
        if minted.expires_at.is_some_and(|t| t <= now) {
            let problem = "the credential had already expired when it arrived".into();
            return Err(SourceError::InvalidResponse { endpoint: "source".into(), problem });
        }
        if let Some(allow_http) = source::verify_settings(source_spec) {
            // Verify before swap, under what is left of the same deadline.
            within(deadline, budget, "the registries", source::verify_at_registries(&minted, allow_http, &ctx.settings.net)).await?;
        }
        Ok(minted)
    }
    .await;
    match checked {
        Ok(minted) => {
            let renewal = schedule::renewal(minted.issued_at, minted.expires_at, &policy, who.seed);
            Ok((minted, renewal))
        }
        Err(e) => {
            if let Some(key) = &key {
                discard(ctx, who, source_spec, key).await;
            }
            Err(e)
        }
    }
}

/// Revoke a key a `rotate` source created for an attempt that will not
/// write it, at once (bounded). When that fails, the key still carries
/// the credential's name prefix and the pending mark in status: the next
/// pass's sweep ([`crate::keys`]) revokes it.
async fn discard(ctx: &Context, who: &Minter<'_>, source_spec: &CredentialSource, key: &source::KeyRef) {
    let (ns, name) = who.key();
    let revoked = async { source::discard(source_spec, &source_context_for(ctx, who, source_spec)?, key).await };
    match tokio::time::timeout(Duration::from_secs(15), revoked).await {
        Ok(Ok(())) => tracing::info!(namespace = %ns, name = %name, key = %key.name, "revoked a new key the attempt could not use"),
        Ok(Err(e)) => tracing::warn!(namespace = %ns, name = %name, key = %key.name, error = %e, "revoking an unused key failed; the next sweep revokes it"),
        Err(_) => tracing::warn!(namespace = %ns, name = %name, key = %key.name, "revoking an unused key timed out; the next sweep revokes it"),
    }
}

/// Remove every password of `minted` (as it is and as the `auth` field
/// spells it) from a message, and cap it: an API server error about the
/// Secret should never hold one, but an admission policy's message may
/// quote the object, and the message is shown to users.
pub fn redact(message: &str, minted: Option<&Minted>) -> String {
    use base64::Engine;
    use secrecy::ExposeSecret;
    let mut values = Vec::new();
    for e in minted.iter().flat_map(|m| m.entries.iter()) {
        let p = e.password.expose_secret();
        values.push(p.to_string());
        values.push(base64::engine::general_purpose::STANDARD.encode(format!("{}:{p}", e.username)));
    }
    redact_values(message, &values)
}

/// Remove `values` (longest first; those under 4 characters would match
/// too much) and any long base64 run (64 characters or more: an encoded
/// Secret's data, which could hold a value shifted out of recognition) from
/// a message, then cap it. Redact first, then cut: a cut could split a value
/// and leave part of it.
pub fn redact_values(message: &str, values: &[String]) -> String {
    let mut sorted: Vec<&String> = values.iter().filter(|v| v.len() >= 4).collect();
    sorted.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = message.to_string();
    for v in sorted {
        out = out.replace(v.as_str(), "[redacted]");
    }
    without_long_base64(&out).chars().take(512).collect()
}

fn without_long_base64(message: &str) -> String {
    const LONG: usize = 64;
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    let mut out = String::with_capacity(message.len());
    let mut run = String::new();
    for c in message.chars().chain(std::iter::once('\n')) {
        if is_b64(c) {
            run.push(c);
            continue;
        }
        out.push_str(if run.chars().count() >= LONG { "[redacted]" } else { &run });
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// Where an attempt writes its Secret.
pub struct Target<'a> {
    pub secrets: &'a Api<Secret>,
    pub name: &'a str,
    /// What we believe is there (its resourceVersion is the precondition);
    /// `None`: create.
    pub existing: Option<ObjectMeta>,
    /// Is a Secret of that name ours to overwrite?
    pub ours: &'a (dyn Fn(&Secret) -> bool + Sync),
    /// The Secret holding a minted credential.
    pub render: &'a (dyn Fn(&Minted, schedule::Renewal) -> Result<Secret, WriteError> + Sync),
}

/// What one attempt asks of its source.
pub struct Request<'a> {
    pub who: Minter<'a>,
    pub source: &'a CredentialSource,
    pub renewal: &'a Renewal,
}

/// How an attempt ended.
pub enum Outcome {
    /// A new credential is in the Secret; `at`: when its source was asked.
    Rotated { minted: Minted, renewal: schedule::Renewal, written: Secret, at: DateTime<Utc> },
    /// The source or the API server refused; the Secret is as it was.
    Failed { reason: &'static str, message: String },
    /// The Secret kept changing under us (or someone else's appeared):
    /// nothing written, nothing to report; the attempt still counts against
    /// the least interval between mints.
    Contended,
}

/// The slot an attempt needs (see [`crate::slots`]): `namespace` is the
/// credential's (`""` for cluster-scoped ones).
pub fn ask(namespace: &str, source: &CredentialSource, work: Work) -> Ask {
    Ask { work, key: Key { namespace: namespace.to_string(), origin: source::origin(source) }, source: source_kind(source) }
}

/// How one pass of a reconcile ended: done, or it found a mint due and
/// holds no slot for it (see [`in_passes`]). `next`: what the next pass
/// starts from.
pub enum Pass<S> {
    Done(Action),
    NeedSlot { ask: Ask, next: S },
}

/// At most this many passes per reconcile: a pass that needs another slot
/// than the one it got (its spec changed the origin meanwhile) asks again,
/// but not for ever.
const MAX_PASSES: usize = 3;

/// Run a reconcile in passes, the same for both kinds. A pass decides; when
/// a mint is due and no slot is free for it, it ends asking for one. The
/// slot is waited for here, between passes: outside the pass's deadline,
/// holding nothing but the ask (thousands may wait during a burst). The
/// next pass decides again with the slot in hand, from what is true after
/// the wait, and mints only if that is still due.
pub async fn in_passes<S, F, Fut>(ctx: &Context, first: S, mut pass: F) -> Result<Action, Error>
where
    F: FnMut(S, Option<Permit>) -> Fut,
    Fut: std::future::Future<Output = Result<Pass<S>, Error>>,
{
    let (mut state, mut slot) = (first, None);
    for _ in 0..MAX_PASSES {
        match pass(state, slot.take()).await? {
            Pass::Done(action) => return Ok(action),
            Pass::NeedSlot { ask, next } => {
                state = next;
                match ctx.slots.acquire(ask).await {
                    Some(p) => slot = Some(p),
                    // Stopping: nothing asked, nothing written.
                    None => return Ok(Action::requeue(Duration::from_secs(1))),
                }
            }
        }
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// The slot in hand when it is the one asked for, else a free one taken
/// at once; else the ask (the pass ends and [`in_passes`] waits for it).
pub fn slot_for(ctx: &Context, ask: Ask, slot: Option<Permit>) -> Result<Permit, Ask> {
    match slot {
        Some(p) if p.fits(&ask) => Ok(p),
        other => {
            // One that does not fit is freed first: it may be what is full.
            drop(other);
            ctx.slots.try_acquire(ask)
        }
    }
}

/// Mint with the slot in hand (see [`in_passes`]), then write; a write that
/// lost a race is tried once more with the same credential against a fresh
/// read.
pub async fn attempt(ctx: &Context, req: &Request<'_>, target: &Target<'_>, slot: Permit) -> Result<Outcome, Error> {
    let (ns, name) = req.who.key();
    let now = (ctx.now)();
    ctx.attempts.started(ns, name, now);
    // On failure: why, and the credential if one was minted (its key, if
    // any, must not outlive the attempt).
    let minted: Result<_, (SourceError, Option<Minted>)> = async {
        // Boxed: a reconcile waiting for its slot holds only a pointer to
        // the mint's state, not the state itself.
        let (minted, renewal) = Box::pin(mint(ctx, &req.who, req.source, req.renewal, now)).await.map_err(|e| (e, None))?;
        // Empty or oversized: the source's answer is unusable.
        match (target.render)(&minted, renewal) {
            Ok(desired) => Ok((minted, renewal, desired)),
            Err(e) => Err((SourceError::InvalidResponse { endpoint: "source".into(), problem: e.to_string() }, Some(minted))),
        }
    }
    .await;
    // The slot bounds what is asked of sources; the write is the API server's.
    drop(slot);
    let (minted, renewal, desired) = match minted {
        Ok(v) => v,
        Err((e, unused)) => {
            if let Some(m) = unused {
                unwritten(ctx, req, &m).await;
            }
            return Ok(Outcome::Failed { reason: e.category(), message: redact(&e.to_string(), None) });
        }
    };
    let written = Box::pin(async {
        match secret::write_over(target.secrets, target.existing.as_ref(), desired.clone()).await {
            Err(WriteError::Conflict | WriteError::Stale) => rewrite(target, desired).await,
            other => other.map(Some),
        }
    })
    .await;
    match written {
        Ok(Some(written)) => Ok(Outcome::Rotated { minted, renewal, written, at: now }),
        Ok(None) => {
            unwritten(ctx, req, &minted).await;
            Ok(Outcome::Contended)
        }
        // The API server refused what we wrote (an admission policy, a
        // quota, a forbidden namespace): a failure like a failed mint.
        Err(e @ WriteError::Rejected { .. }) => {
            unwritten(ctx, req, &minted).await;
            Ok(Outcome::Failed { reason: reason::SECRET_REJECTED, message: redact(&e.to_string(), Some(&minted)) })
        }
        // Perhaps written after all (the API server did not answer): the
        // key stays; the next pass compares it with the Secret's.
        Err(e) => Err(e.into()),
    }
}

/// A credential that was minted and not written: its key, if a `rotate`
/// source created one, is revoked.
async fn unwritten(ctx: &Context, req: &Request<'_>, minted: &Minted) {
    if let Some(key) = &minted.key {
        discard(ctx, &req.who, req.source, key).await;
    }
}

/// The second try of a write whose precondition failed: read the Secret,
/// write over it if it is ours (or create it if it is gone). `None` when it
/// is someone else's or changed again.
async fn rewrite(target: &Target<'_>, desired: Secret) -> Result<Option<Secret>, WriteError> {
    let fresh = target.secrets.get_opt(target.name).await.map_err(|_| WriteError::Unreachable)?;
    if fresh.as_ref().is_some_and(|s| !(target.ours)(s)) {
        return Ok(None);
    }
    match secret::write_over(target.secrets, fresh.as_ref().map(|s| &s.metadata), desired).await {
        Ok(s) => Ok(Some(s)),
        Err(WriteError::Conflict | WriteError::Stale) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_deadline_covers_the_source_and_verification() {
        // The source takes 3 s of a 5 s budget; verification would hang:
        // it gets what is left (2 s), not a budget of its own.
        let budget = Duration::from_secs(5);
        let started = Instant::now();
        let deadline = started + budget;
        let first = within(deadline, budget, "the source", async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, SourceError>(())
        })
        .await;
        assert!(first.is_ok());
        let second = within(deadline, budget, "the registries", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, SourceError>(())
        })
        .await;
        assert_eq!(Instant::now() - started, budget, "verification outlived the attempt's deadline");
        let e = second.unwrap_err();
        assert_eq!(e.category(), "MintFailed");
        assert!(e.to_string().contains("the registries did not answer within the attempt's 5s"), "{e}");
    }

    #[test]
    fn an_attempt_status_does_not_show_still_holds_the_interval() {
        use crate::schedule::{decide, test_instant as t, Decision, MintReason};
        // Rotated at t(0); someone changed the Secret's data since.
        let prev = api::RegistryCredentialStatus { last_rotation_time: Some(t(0)), observed_inputs: Some("g1".into()), ..Default::default() };
        let secret = SecretState::Ours(OurSecret { intact: false, inputs: Some("g1".into()), not_after: Some(t(3600)), renewal_time: Some(t(1800)) });
        let seen = |last_attempt| Seen { secret: secret.clone(), desired_inputs: "g1".into(), prev: &prev, renew_requested: false, last_attempt, seed: 0 };
        let ten = chrono::Duration::seconds(10);
        assert_eq!(decide(t(21), &observed(seen(None), ten)), Decision::Mint(MintReason::SecretChanged));
        // The attempt at t(21) lost its write to another change: status
        // does not show it, the memory does, and the next mint waits.
        assert_eq!(decide(t(22), &observed(seen(Some(t(21))), ten)), Decision::WaitUntil(t(31)));
        assert_eq!(decide(t(31), &observed(seen(Some(t(21))), ten)), Decision::Mint(MintReason::SecretChanged));
    }

    #[test]
    fn redaction_covers_every_password_and_caps() {
        let entry = |r: &str, p: &str| source::RegistryAuth { registry: r.into(), username: "u".into(), password: p.to_string().into() };
        let m = Minted { entries: vec![entry("r1", "hunter2-secret"), entry("r2", "other-pass")], issued_at: Utc::now(), expires_at: None, key: None };
        let msg = format!("refused hunter2-secret and other-pass {}", "x ".repeat(500));
        let out = redact(&msg, Some(&m));
        assert!(!out.contains("hunter2") && !out.contains("other-pass"), "{out}");
        assert_eq!(out.chars().count(), 512);
    }

    #[test]
    fn redaction_covers_the_auth_field_and_encoded_data() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let entry = source::RegistryAuth { registry: "r".into(), username: "robot".into(), password: "s3cret-token".to_string().into() };
        let m = Minted { entries: vec![entry], issued_at: Utc::now(), expires_at: None, key: None };
        let config = format!(r#"{{"auths":{{"r":{{"username":"robot","password":"s3cret-token","auth":"{}"}}}}}}"#, b64("robot:s3cret-token"));
        let quoted = format!("denied: {config}");
        let out = redact(&quoted, Some(&m));
        assert!(!out.contains("s3cret") && !out.contains(&b64("robot:s3cret-token")), "{out}");
        // the whole data, encoded: the password is in there shifted
        let encoded = format!("denied: data: {} (policy p)", b64(&config));
        let out = redact(&encoded, Some(&m));
        assert_eq!(out, "denied: data: [redacted] (policy p)");
        // short runs and names stay readable
        let plain = "secrets \"pull\" is forbidden: ValidatingAdmissionPolicy 'regcred-test-refuse-refuse-1-ngbsj' denied request";
        assert_eq!(redact(plain, Some(&m)), plain);
        // values from a Secret, longest first
        assert_eq!(redact_values("x abcdef y", &["abcd".into(), "abcdef".into(), "ab".into()]), "x [redacted] y");
    }
}
