//! The one reconcile and its wiring: gather → decide → act → report.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::{self, RegistryCredential};
use crate::metrics::{CredentialLabels, FailureLabels, Metrics, SourceLabels};
use crate::schedule::{self, Decision, Observed, OurSecret, Policy, SecretState};
use crate::secret::{self, WriteError};
use crate::source::{self, EcrMinter, SecretReader, SourceContext, SourceError};
use crate::status;

/// Operator settings the reconcile needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Credentials reconciled at once.
    pub concurrency: u16,
    /// This replica's name, for Events.
    pub instance: String,
    pub ecr: source::EcrSettings,
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub ecr: EcrMinter,
    pub now: fn() -> DateTime<Utc>,
}

impl Context {
    pub fn new(client: Client, settings: &Settings, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: "regcred".into(), instance: Some(settings.instance.clone()) };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            ecr: EcrMinter::new(client.clone(), settings.ecr.clone()),
            client,
            metrics,
            now: clock,
        }
    }
}

/// The wall clock in whole seconds: credentials are treated as issued at the
/// start of the second they were requested in, so their expiry is never
/// computed later than it really is, and timestamps stay readable.
pub fn clock() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// Failures that are not the source's fault: the API server. They are
/// retried by the controller's error policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Summarised (status code and reason): a whole kube error can carry a
    // response body, and some of these responses are Secrets.
    #[error("{step}: {}", crate::source::summarize_kube_error(source))]
    Kube { step: &'static str, source: kube::Error },
    #[error(transparent)]
    Write(#[from] WriteError),
}

fn kube_err(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { step, source }
}

/// The kind of source, for metric labels.
fn source_kind(cr: &RegistryCredential) -> &'static str {
    let s = &cr.spec.source;
    if s.ecr.is_some() {
        "ecr"
    } else if s.oauth2.is_some() {
        "oauth2"
    } else if s.http.is_some() {
        "http"
    } else {
        "basic"
    }
}

fn policy(cr: &RegistryCredential) -> Result<Policy, SourceError> {
    let renew_before = cr
        .spec
        .renew_before
        .as_deref()
        .map(|d| source::parse_duration("spec.renewBefore", d))
        .transpose()?;
    let refresh_interval = match cr.spec.source.basic.as_ref().and_then(|b| b.refresh_interval.as_deref()) {
        Some(d) => source::parse_duration("spec.source.basic.refreshInterval", d)?,
        None => schedule::DEFAULT_REFRESH_INTERVAL,
    };
    Ok(Policy {
        renew_before,
        renew_before_percentage: cr.spec.renew_before_percentage.map(|p| p.clamp(1, 99) as u8),
        refresh_interval,
    })
}

/// Fingerprint of what a mint depends on: the spec generation and the
/// resourceVersion of each referenced Secret (metadata only; no data read).
async fn inputs(cr: &RegistryCredential, secrets: &Api<Secret>) -> Result<String, Error> {
    let mut parts = vec![format!("g{}", cr.metadata.generation.unwrap_or(0))];
    for name in source::referenced_secrets(&cr.spec.source) {
        let rv = secrets
            .get_metadata_opt(&name)
            .await
            .map_err(kube_err("reading referenced Secret metadata"))?
            .and_then(|m| m.metadata.resource_version)
            .unwrap_or_else(|| "missing".into());
        parts.push(format!("{name}@{rv}"));
    }
    Ok(format!("g{}-{:016x}", cr.metadata.generation.unwrap_or(0), schedule::seed(&parts.join(","))))
}

pub async fn reconcile(cr: Arc<RegistryCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&cr, &ctx).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(cached: &RegistryCredential, ctx: &Context) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let crs: Api<RegistryCredential> = Api::namespaced(ctx.client.clone(), &ns);
    // gather: the credential itself from the API server, not the cache. The
    // cache can lag our own status write (a reconcile triggered by the Secret
    // we just wrote would see the old status and mint a second time).
    let Some(fresh) = crs.get_opt(&name).await.map_err(kube_err("reading the RegistryCredential"))? else {
        return Ok(Action::await_change());
    };
    let cr = &fresh;
    if cr.metadata.deletion_timestamp.is_some() {
        // The owner reference lets garbage collection remove the Secret.
        return Ok(Action::await_change());
    }
    let now = (ctx.now)();
    let secret_name = cr.secret_name();
    let prev = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    let seed = schedule::seed(cr.metadata.uid.as_deref().unwrap_or(&name));
    let labels = CredentialLabels { namespace: ns.clone(), name: name.clone() };

    let existing = secrets.get_opt(&secret_name).await.map_err(kube_err("reading the target Secret"))?;
    let state = match &existing {
        None => SecretState::Missing,
        Some(s) if !secret::is_ours(s, cr) => SecretState::Foreign,
        Some(s) => {
            let a = secret::read_annotations(s);
            SecretState::Ours(OurSecret { intact: a.intact, inputs: a.inputs, not_after: a.not_after, renewal_time: a.renewal_time })
        }
    };
    let desired_inputs = inputs(cr, &secrets).await?;
    let observed = Observed {
        secret: state.clone(),
        desired_inputs: desired_inputs.clone(),
        attempted_inputs: prev.observed_inputs.clone(),
        failed_attempts: prev.failed_attempts.max(0) as u32,
        last_failure: prev.last_failure_time,
        seed,
    };

    // decide
    let reason = match schedule::decide(now, &observed) {
        Decision::Blocked => {
            let was = cr.ready().map(|c| c.reason.as_str()) == Some(status::reason::SECRET_CONFLICT);
            let st = status::conflict(&prev, generation, &secret_name, now);
            status::patch(&crs, cr, &st).await.map_err(kube_err("writing status"))?;
            ctx.metrics.ready.get_or_create(&labels).set(0);
            if !was {
                let note = st.conditions.iter().find(|c| c.type_ == api::READY).map(|c| c.message.clone());
                publish(ctx, cr, EventType::Warning, status::reason::SECRET_CONFLICT, note).await;
            }
            return Ok(Action::requeue(schedule::requeue_after(now, now + schedule::BLOCKED_RECHECK)));
        }
        Decision::WaitUntil(at) | Decision::BackOffUntil(at) => {
            debug!(namespace = %ns, name = %name, until = %at, "nothing to do yet");
            if let SecretState::Ours(s) = &state {
                if let Some(na) = s.not_after {
                    ctx.metrics.expiry.get_or_create(&labels).set(na.timestamp());
                }
                ctx.metrics.renewal.get_or_create(&labels).set(at.timestamp());
            }
            ctx.metrics.ready.get_or_create(&labels).set(i64::from(cr.ready().is_some_and(|c| c.status == "True")));
            return Ok(Action::requeue(schedule::requeue_after(now, at)));
        }
        Decision::Mint(reason) => reason,
    };

    // act
    info!(namespace = %ns, name = %name, ?reason, "minting");
    let current_not_after = match &state {
        SecretState::Ours(s) if s.intact => s.not_after,
        _ => None,
    };
    // Everything that can fail because of the source, in one place: any
    // failure here leaves the current Secret exactly as it is.
    let attempt = async {
        let policy = policy(cr)?;
        let minted = source::from_spec(&cr.spec.source, source_cx(ctx, &ns))?.mint().await?;
        ctx.metrics.mints.get_or_create(&SourceLabels { source: source_kind(cr).into() }).inc();
        if minted.expires_at.is_some_and(|t| t <= now) {
            let problem = "the credential had already expired when it arrived".into();
            return Err(SourceError::InvalidResponse { endpoint: "source".into(), problem });
        }
        let renewal = schedule::renewal_time(minted.issued_at, minted.expires_at, &policy, seed);
        // Empty or oversized: the source's answer is unusable.
        let desired = secret::desired(cr, &minted, &desired_inputs, renewal)
            .map_err(|e| SourceError::InvalidResponse { endpoint: "source".into(), problem: e.to_string() })?;
        Ok((minted, renewal, desired))
    }
    .await;
    let (minted, renewal, desired) = match attempt {
        Ok(v) => v,
        Err(e) => return fail(ctx, cr, &crs, &prev, &desired_inputs, &labels, e, current_not_after, now).await,
    };
    match secret::write(&secrets, existing.as_ref(), desired).await {
        Ok(_) => {}
        Err(WriteError::Conflict) => return Ok(Action::requeue(Duration::from_secs(1))),
        Err(e) => return Err(e.into()),
    }

    // report
    let registries = minted.registries();
    let st = status::rotated(&prev, generation, &desired_inputs, &secret_name, registries, minted.expires_at, renewal, now);
    status::patch(&crs, cr, &st).await.map_err(kube_err("writing status"))?;
    ctx.metrics.rotations.get_or_create(&labels).inc();
    ctx.metrics.ready.get_or_create(&labels).set(1);
    if let Some(na) = minted.expires_at {
        ctx.metrics.expiry.get_or_create(&labels).set(na.timestamp());
    }
    ctx.metrics.renewal.get_or_create(&labels).set(renewal.timestamp());
    let until = minted.expires_at.map(|t| format!(", valid until {}", t.to_rfc3339())).unwrap_or_default();
    publish(ctx, cr, EventType::Normal, status::reason::ROTATED, Some(format!("Wrote Secret {secret_name}{until}"))).await;
    info!(namespace = %ns, name = %name, renewal = %renewal, not_after = ?minted.expires_at, "rotated");
    Ok(Action::requeue(schedule::requeue_after((ctx.now)(), renewal)))
}

fn source_cx(ctx: &Context, ns: &str) -> SourceContext {
    SourceContext {
        secrets: SecretReader::new(ctx.client.clone(), ns),
        namespace: ns.to_string(),
        now: ctx.now,
        ecr: ctx.ecr.clone(),
    }
}

/// A failed mint: the Secret stays as it is; status, Event and metrics say
/// why; retry after the backoff.
#[allow(clippy::too_many_arguments)]
async fn fail(
    ctx: &Context,
    cr: &RegistryCredential,
    crs: &Api<RegistryCredential>,
    prev: &api::RegistryCredentialStatus,
    inputs: &str,
    labels: &CredentialLabels,
    e: SourceError,
    current_not_after: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let reason = e.category();
    let failures = prev.failed_attempts.max(0) as u32 + 1;
    let seed = schedule::seed(cr.metadata.uid.as_deref().unwrap_or_default());
    let retry_at = now + schedule::backoff(failures, seed, now, current_not_after);
    warn!(namespace = %labels.namespace, name = %labels.name, reason, error = %e, "mint failed");
    let st = status::failed(prev, cr.metadata.generation, inputs, reason, e.to_string(), Some(retry_at), now);
    status::patch(crs, cr, &st).await.map_err(kube_err("writing status"))?;
    ctx.metrics
        .failures
        .get_or_create(&FailureLabels { namespace: labels.namespace.clone(), name: labels.name.clone(), reason: reason.into() })
        .inc();
    ctx.metrics.ready.get_or_create(labels).set(0);
    publish(ctx, cr, EventType::Warning, "MintFailed", Some(format!("{reason}: {e}"))).await;
    Ok(Action::requeue(schedule::requeue_after(now, retry_at)))
}

async fn publish(ctx: &Context, cr: &RegistryCredential, type_: EventType, reason: &str, note: Option<String>) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: note.map(|n| n.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cr.object_ref(&())).await {
        warn!(error = %crate::source::summarize_kube_error(&e), "publishing an Event failed");
    }
}

pub fn error_policy(cr: Arc<RegistryCredential>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(namespace = ?cr.namespace(), name = %cr.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Credentials that reference a Secret by name, in its namespace.
fn referencing(store: &Store<RegistryCredential>, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<RegistryCredential>> {
    let (Some(ns), Some(name)) = (secret.metadata.namespace.as_deref(), secret.metadata.name.as_deref()) else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|cr| cr.metadata.namespace.as_deref() == Some(ns))
        .filter(|cr| source::referenced_secrets(&cr.spec.source).iter().any(|n| n == name))
        .map(|cr| ObjectRef::from_obj(cr.as_ref()))
        .collect()
}

/// Run the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Secrets are watched as metadata only (`PartialObjectMeta`): their data
    // never reaches this process except when a source reads one to mint.
    let (crs, secrets): (Api<RegistryCredential>, Api<PartialObjectMeta<Secret>>) = match &settings.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (reader, writer) = reflector::store();
    let forget = metrics.clone();
    let cr_stream = watcher(crs, watcher::Config::default())
        .default_backoff()
        .modify(|cr| {
            cr.managed_fields_mut().clear();
        })
        .reflect(writer)
        .inspect(move |ev| {
            if let Ok(watcher::Event::Delete(cr)) = ev {
                forget.forget(&cr.namespace().unwrap_or_default(), &cr.name_any());
            }
        })
        .touched_objects();
    // Our Secrets only, by label, metadata only: edits and deletions trigger a repair.
    let managed = format!("{}={}", api::MANAGED_BY_LABEL, api::MANAGED_BY_VALUE);
    let owned = watcher(secrets.clone(), watcher::Config::default().labels(&managed))
        .default_backoff()
        .touched_objects();
    // Secrets the sources read: metadata only and nothing stored, mapped to
    // the credentials that name them.
    let store = reader.clone();
    let referenced = watcher(secrets, watcher::Config::default().labels(&format!("{}!={}", api::MANAGED_BY_LABEL, api::MANAGED_BY_VALUE)))
        .default_backoff()
        .touched_objects();
    let ctx = Arc::new(Context::new(client, &settings, metrics));
    Controller::for_stream(cr_stream, reader)
        .owns_stream(owned)
        .watches_stream(referenced, move |s| referencing(&store, &s))
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "reconcile error");
            }
        })
        .await;
}
