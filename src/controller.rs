//! The one reconcile and its wiring: gather → decide → act → report.
//!
//! Around it, what keeps one tenant from hurting the others: a share of the
//! concurrency per namespace, a deadline on every mint and every reconcile,
//! a panic backstop that fails one credential instead of the process, and
//! progress tracking for the health endpoint.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Semaphore;
use secrecy::SecretString;
use tracing::{debug, error, info, warn};

use crate::api::{self, RegistryCredential};
use crate::metrics::{CredentialLabels, FailureLabels, Metrics, SourceLabels};
use crate::schedule::{self, Decision, Observed, OurSecret, Policy, SecretState};
use crate::secret::{self, WriteError};
use crate::source::{self, EcrMinter, NetPolicy, SecretReader, SourceContext, SourceError};
use crate::status::{self, reason};

/// Operator settings the reconcile needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Reconcile only credentials matching this label selector.
    pub selector: Option<String>,
    /// Credentials reconciled at once.
    pub concurrency: u16,
    /// Credentials of one namespace reconciled at once.
    pub namespace_concurrency: u16,
    /// This replica's name, for Events.
    pub instance: String,
    pub ecr: source::EcrSettings,
    pub net: NetPolicy,
    /// The least time between two mints of one credential.
    pub min_mint_interval: chrono::Duration,
    /// The longest a mint (every request of it) may take.
    pub mint_timeout: Duration,
    /// The operator's own namespace: home of ClusterRegistryCredentials'
    /// Secrets and the default namespace of what their sources read.
    pub operator_namespace: String,
    /// Credentials may ask for Pods stuck pulling to be restarted.
    pub restart_stuck_pods: bool,
}

impl Settings {
    /// The longest one reconcile may take: the mint plus room for the API calls.
    pub fn reconcile_timeout(&self) -> Duration {
        self.mint_timeout + Duration::from_secs(30)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: None,
            selector: None,
            concurrency: 32,
            namespace_concurrency: 8,
            instance: "regcred".into(),
            ecr: Default::default(),
            net: Default::default(),
            min_mint_interval: schedule::DEFAULT_MIN_MINT_INTERVAL,
            mint_timeout: Duration::from_secs(60),
            restart_stuck_pods: false,
            operator_namespace: "default".into(),
        }
    }
}

/// Reconciles in flight and the last time one finished: a controller with
/// work in flight and nothing finished for longer than any reconcile may
/// take is stalled, and `/healthz` says so.
pub struct Progress {
    started: Instant,
    in_flight: AtomicUsize,
    last_done_ms: AtomicU64,
    pub stall_after: Duration,
}

impl Progress {
    pub fn new(stall_after: Duration) -> Self {
        Self { started: Instant::now(), in_flight: AtomicUsize::new(0), last_done_ms: AtomicU64::new(0), stall_after }
    }

    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            // Idle until now: the stall clock starts with this reconcile.
            self.mark_done();
        }
        InFlight(self.clone())
    }

    fn mark_done(&self) {
        self.last_done_ms.store(self.started.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    /// Stalled as of `at` (an instant after this was created).
    pub fn stalled_at(&self, at: Instant) -> bool {
        let now_ms = at.saturating_duration_since(self.started).as_millis() as u64;
        let idle = now_ms.saturating_sub(self.last_done_ms.load(Ordering::SeqCst));
        self.in_flight.load(Ordering::SeqCst) > 0 && idle > self.stall_after.as_millis() as u64
    }

    pub fn stalled(&self) -> bool {
        self.stalled_at(Instant::now())
    }
}

pub(crate) struct InFlight(Arc<Progress>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.mark_done();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long a reconcile waits for a slot of its namespace before it is
/// requeued (1–2 s later).
const NAMESPACE_SLOT_WAIT: Duration = Duration::from_millis(250);

/// A share of the concurrency per namespace: a namespace whose endpoints
/// hang holds at most its share of the reconcile slots.
struct NamespaceLimits {
    per_namespace: usize,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl NamespaceLimits {
    /// A slot of this namespace, waiting at most `wait` for one: a burst of
    /// quick reconciles in one namespace flows through, while a namespace
    /// whose reconciles hang sends the rest away after `wait`.
    async fn acquire(&self, namespace: &str, wait: Duration) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() > 1024 {
                // Forget idle namespaces so the map does not grow for ever.
                let max = self.per_namespace;
                slots.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < max);
            }
            slots.entry(namespace.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.per_namespace))).clone()
        };
        match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => tokio::time::timeout(wait, sem.acquire_owned()).await.ok()?.ok(),
        }
    }
}

/// Which credentials read which Secret: (namespace, Secret name) →
/// credential names. Kept up to date from the credential watch, so a Secret
/// event costs a lookup, not a scan of every credential.
#[derive(Default)]
pub struct ReferenceIndex {
    inner: Mutex<IndexState>,
}

#[derive(Default)]
struct IndexState {
    by_credential: HashMap<(String, String), Vec<String>>,
    by_secret: HashMap<(String, String), BTreeSet<String>>,
}

impl ReferenceIndex {
    fn set(&self, cr: &RegistryCredential) {
        let ns = cr.namespace().unwrap_or_default();
        let name = cr.name_any();
        let refs = source::referenced_secrets(&cr.spec.source);
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.remove(&ns, &name);
        for s in &refs {
            st.by_secret.entry((ns.clone(), s.clone())).or_default().insert(name.clone());
        }
        st.by_credential.insert((ns, name), refs);
    }

    fn remove(&self, cr: &RegistryCredential) {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.remove(&cr.namespace().unwrap_or_default(), &cr.name_any());
    }

    fn clear(&self) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = IndexState::default();
    }

    /// Credentials that read this Secret.
    pub fn lookup(&self, namespace: &str, secret: &str) -> Vec<String> {
        let st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.by_secret.get(&(namespace.to_string(), secret.to_string())).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }
}

impl IndexState {
    fn remove(&mut self, ns: &str, name: &str) {
        if let Some(old) = self.by_credential.remove(&(ns.to_string(), name.to_string())) {
            for s in old {
                let key = (ns.to_string(), s);
                if let Some(set) = self.by_secret.get_mut(&key) {
                    set.remove(name);
                    if set.is_empty() {
                        self.by_secret.remove(&key);
                    }
                }
            }
        }
    }
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub ecr: EcrMinter,
    pub now: fn() -> DateTime<Utc>,
    pub settings: Settings,
    pub progress: Arc<Progress>,
    limits: NamespaceLimits,
    /// Our own writes, to serve reads from the watch caches safely.
    pub memo: crate::memo::Memo,
    /// Versions of our Secrets, from their watch.
    pub owned_versions: crate::memo::Versions,
    /// Versions of the Secrets sources read, from their watch.
    pub source_versions: crate::memo::Versions,
}

impl Context {
    pub fn new(client: Client, settings: &Settings, metrics: Arc<Metrics>, progress: Arc<Progress>) -> Self {
        let reporter = Reporter { controller: "regcred".into(), instance: Some(settings.instance.clone()) };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            ecr: EcrMinter::new(client.clone(), settings.ecr.clone()),
            client,
            metrics,
            now: clock,
            limits: NamespaceLimits { per_namespace: usize::from(settings.namespace_concurrency.max(1)), slots: Mutex::new(HashMap::new()) },
            settings: settings.clone(),
            progress,
            memo: Default::default(),
            owned_versions: Default::default(),
            source_versions: Default::default(),
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
    #[error("the reconcile did not finish within {0:?}")]
    Deadline(Duration),
}

pub(crate) fn kube_err(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { step, source }
}

/// The kind of source, for metric labels.
fn source_kind(s: &api::CredentialSource) -> &'static str {
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

/// The renewal policy of a credential. Durations are clamped to what the
/// CRD admits, so an object stored before a bound existed is safe too.
pub(crate) fn policy(renewal: &api::Renewal, source: &api::CredentialSource, min_interval: chrono::Duration) -> Result<Policy, SourceError> {
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

/// Fingerprint of what a mint depends on: the spec generation and the
/// resourceVersion of each referenced Secret (metadata only; no data read).
/// Versions the Secret watch has seen (`known`) are used as they are; others
/// are read once and remembered.
pub(crate) async fn inputs(
    generation: Option<i64>,
    source_spec: &api::CredentialSource,
    secrets: &Api<Secret>,
    known: Option<&crate::memo::Versions>,
) -> Result<String, Error> {
    let generation = generation.unwrap_or(0);
    let mut parts = vec![format!("g{generation}")];
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
    Ok(format!("g{generation}-{:016x}", schedule::seed(&parts.join(","))))
}

/// What regcred knows of a Secret it may own.
pub(crate) fn secret_state(existing: Option<&Secret>, ours: impl Fn(&Secret) -> bool) -> SecretState {
    match existing {
        None => SecretState::Missing,
        Some(s) if !ours(s) => SecretState::Foreign,
        Some(s) => {
            let a = secret::read_annotations(s);
            SecretState::Ours(OurSecret { intact: a.intact, inputs: a.inputs, not_after: a.not_after, renewal_time: a.renewal_time })
        }
    }
}

/// Everything the schedule's decision looks at, from status and the Secret.
pub(crate) fn observed(
    secret: SecretState,
    desired_inputs: String,
    prev: &api::RegistryCredentialStatus,
    renew_request: Option<&String>,
    min_interval: chrono::Duration,
    seed: u64,
) -> Observed {
    Observed {
        renew_requested: renew_request.is_some(),
        secret,
        desired_inputs,
        attempted_inputs: prev.observed_inputs.clone(),
        failed_attempts: prev.failed_attempts.max(0) as u32,
        last_failure: prev.last_failure_time,
        last_attempt: prev.last_rotation_time.max(prev.last_failure_time),
        min_interval,
        seed,
    }
}

/// Run a future, turning a panic inside it into an `Err` with its message,
/// so one credential's bug cannot end the process (kube-runtime re-raises
/// panics from a reconcile).
pub async fn contain_panic<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    std::panic::AssertUnwindSafe(f).catch_unwind().await.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

pub async fn reconcile(cr: Arc<RegistryCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cr.namespace().unwrap_or_default();
    // A namespace gets its share of the slots and no more; waiting long for
    // one here would hold a global slot, so after a short wait come back later.
    let Some(_slot) = ctx.limits.acquire(&ns, NAMESPACE_SLOT_WAIT).await else {
        let jitter = schedule::seed(&cr.name_any()) % 1000;
        return Ok(Action::requeue(Duration::from_millis(1000 + jitter)));
    };
    let _in_flight = ctx.progress.begin();
    let started = Instant::now();
    let deadline = ctx.settings.reconcile_timeout();
    let span = reconcile_span(&ns, &cr.name_any());
    let work = tracing::Instrument::instrument(tokio::time::timeout(deadline, reconcile_inner(&cr, &ctx)), span);
    let result = match contain_panic(work).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(Error::Deadline(deadline)),
        Err(panic) => internal_error(&ctx, &cr, &panic).await,
    };
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

/// A span per reconcile with the credential and a trace id, so one rotation
/// can be followed through the logs (JSON logs carry the span's fields).
pub(crate) fn reconcile_span(namespace: &str, name: &str) -> tracing::Span {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let a = schedule::seed(&format!("{namespace}/{name}/{nanos}/{n}"));
    let b = schedule::seed(&format!("{n}/{nanos}/{name}/{namespace}"));
    tracing::info_span!("reconcile", namespace = %namespace, name = %name, trace_id = %format!("{a:016x}{b:016x}"))
}

/// A panic in one reconcile: that credential is failed (Ready=False,
/// InternalError) and retried with backoff; the process carries on.
async fn internal_error(ctx: &Context, cached: &RegistryCredential, panic: &str) -> Result<Action, Error> {
    let (ns, name) = (cached.namespace().unwrap_or_default(), cached.name_any());
    // The panic message is ours (never secret material), but keep it in the log only.
    error!(namespace = %ns, name = %name, panic = %panic, "a reconcile panicked; the credential is failed and retried");
    let crs: Api<RegistryCredential> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(cr) = crs.get_opt(&name).await.map_err(kube_err("reading the RegistryCredential"))? else {
        return Ok(Action::await_change());
    };
    let prev = cr.status.clone().unwrap_or_default();
    let inputs = prev.observed_inputs.clone().unwrap_or_default();
    let labels = CredentialLabels { namespace: ns, name };
    ctx.metrics.seen(&labels);
    let message = "an internal error stopped this reconcile (see the operator log); retrying with backoff".to_string();
    fail(ctx, &cr, &crs, &prev, &inputs, &labels, reason::INTERNAL_ERROR, message, None, (ctx.now)()).await
}

async fn reconcile_inner(cached: &RegistryCredential, ctx: &Context) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let crs: Api<RegistryCredential> = Api::namespaced(ctx.client.clone(), &ns);
    // gather: the cached credential unless it may be older than our own last
    // status write (a reconcile that saw the old status would mint a second
    // time); then, and once for credentials from the initial list, read it.
    let fresh;
    let cr: &RegistryCredential = match ctx.memo.cached(&ns, &name, cached.metadata.resource_version.as_deref()) {
        crate::memo::Cached::Use => cached,
        // The watch event of our own status write triggers the next
        // reconcile; a requeue covers the case where none comes.
        crate::memo::Cached::AwaitOwnWrite => return Ok(Action::requeue(Duration::from_secs(5))),
        crate::memo::Cached::Read => {
            let Some(f) = crs.get_opt(&name).await.map_err(kube_err("reading the RegistryCredential"))? else {
                return Ok(Action::await_change());
            };
            ctx.memo.read(&ns, &name);
            fresh = f;
            &fresh
        }
    };
    let wants_accounts = cr.spec.service_accounts.is_some();
    let revocation = cr.spec.source.oauth2.as_ref().and_then(|o| o.revoke.clone()).unwrap_or_default();
    let needs_finalizer = wants_accounts || revocation.on_delete == Some(true);
    if cr.metadata.deletion_timestamp.is_some() || (!needs_finalizer && has_finalizer(cr)) {
        // The owner reference lets garbage collection remove the Secret;
        // the ServiceAccount entries are ours to remove, and the current
        // token ours to revoke (one attempt: deletion is not held up).
        if cr.metadata.deletion_timestamp.is_some() && has_finalizer(cr) && revocation.on_delete == Some(true) {
            if let Some(current) = secrets.get_opt(&cr.secret_name()).await.ok().flatten().filter(|s| secret::is_ours(s, cr)) {
                if let Some(token) = secret::password_of(&current) {
                    revoke_now(ctx, cr, SecretString::from(token), 1).await;
                }
            }
        }
        if has_finalizer(cr) {
            let accounts = list_accounts(ctx, &ns).await?;
            crate::serviceaccounts::sync_namespace(&ctx.client, &ns, &accounts, &cr.secret_name(), None)
                .await
                .map_err(kube_err("removing ServiceAccount entries"))?;
            set_finalizer(&crs, cr, false).await.map_err(kube_err("removing the finalizer"))?;
        }
        return Ok(Action::await_change());
    }
    if needs_finalizer && !has_finalizer(cr) {
        // Before the first entry is added (or token minted): they must be
        // removable (revocable) when the credential goes.
        set_finalizer(&crs, cr, true).await.map_err(kube_err("adding the finalizer"))?;
    }
    let now = (ctx.now)();
    let secret_name = cr.secret_name();
    let mut prev = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    let seed = schedule::seed(cr.metadata.uid.as_deref().unwrap_or(&name));
    let labels = CredentialLabels { namespace: ns.clone(), name: name.clone() };
    ctx.metrics.seen(&labels);
    let min_interval = ctx.settings.min_mint_interval;

    // The Secret as we last wrote it while the watch has seen no other
    // version; else (and when the replaced token must be revoked) read it.
    let known = if revocation.on_rotation == Some(true) {
        None
    } else {
        ctx.memo.secret(&ns, &name, &secret_name, ctx.owned_versions.get(&ns, &secret_name))
    };
    let (state, existing, existing_meta) = match known {
        Some((rv, state)) => (state, None, Some(ObjectMeta { resource_version: Some(rv), ..Default::default() })),
        // A credential whose Secret our watch has never seen (a new one):
        // create it without reading first. A Secret that is there after all
        // (not ours, or not yet seen) fails the create with a conflict, and
        // the next attempt reads it.
        None if revocation.on_rotation != Some(true) && ctx.owned_versions.never_seen(&ns, &secret_name) => (SecretState::Missing, None, None),
        None => {
            let existing = secrets.get_opt(&secret_name).await.map_err(kube_err("reading the target Secret"))?;
            let state = secret_state(existing.as_ref(), |s| secret::is_ours(s, cr));
            let meta = existing.as_ref().map(|s| s.metadata.clone());
            (state, existing, meta)
        }
    };
    let desired_inputs = inputs(cr.metadata.generation, &cr.spec.source, &secrets, Some(&ctx.source_versions)).await?;
    let renew_request = api::pending_renew_request(&cr.metadata, cr.status.as_ref());
    let observed = observed(state.clone(), desired_inputs.clone(), &prev, renew_request.as_ref(), min_interval, seed);

    // decide
    let why = match schedule::decide(now, &observed) {
        Decision::Blocked => {
            let was = cr.ready().map(|c| c.reason.as_str()) == Some(reason::SECRET_CONFLICT);
            let st = status::conflict(&prev, generation, &secret_name, now);
            write_status(ctx, &crs, cr, &st).await?;
            ctx.metrics.ready.get_or_create(&labels).set(0);
            if !was {
                let note = st.conditions.iter().find(|c| c.type_ == api::READY).map(|c| c.message.clone());
                publish(ctx, cr, EventType::Warning, reason::SECRET_CONFLICT, note).await;
            }
            return Ok(Action::requeue(schedule::requeue_after(now, schedule::add(now, schedule::BLOCKED_RECHECK))));
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
            if matches!(&state, SecretState::Ours(s) if s.intact) {
                sync_accounts(ctx, cr, &ns).await?;
            }
            return Ok(Action::requeue(schedule::requeue_after(now, at)));
        }
        Decision::Mint(why) => why,
    };

    // act. A renew request is served by this attempt, whatever its outcome.
    if renew_request.is_some() {
        prev.renew_request_served = renew_request.clone();
    }
    info!(namespace = %ns, name = %name, reason = ?why, "minting");
    let current_not_after = match &state {
        SecretState::Ours(s) if s.intact => s.not_after,
        _ => None,
    };
    // Everything that can fail because of the source, in one place and under
    // one deadline: any failure here leaves the current Secret as it is.
    let attempt = async {
        let who = Minter { refs_namespace: &ns, name: &name, cluster_scoped: false, seed, secrets_dir: None };
        let (minted, renewal) = mint(ctx, &who, &cr.spec.source, &cr.spec.renewal, now).await?;
        // Empty or oversized: the source's answer is unusable.
        let desired = secret::desired(cr, &minted, &desired_inputs, renewal.at)
            .map_err(|e| SourceError::InvalidResponse { endpoint: "source".into(), problem: e.to_string() })?;
        Ok::<_, SourceError>((minted, renewal, desired))
    }
    .await;
    let (minted, renewal, desired) = match attempt {
        Ok(v) => v,
        Err(e) => {
            let r = e.category();
            return fail(ctx, cr, &crs, &prev, &desired_inputs, &labels, r, e.to_string(), current_not_after, now).await;
        }
    };
    match secret::write_over(&secrets, existing_meta.as_ref(), desired).await {
        Ok(written) => {
            let state = secret_state(Some(&written), |s| secret::is_ours(s, cr));
            ctx.memo.secret_written(&ns, &name, &secret_name, written.metadata.resource_version.clone(), state);
        }
        Err(WriteError::Conflict | WriteError::Stale) => {
            // What we thought of the Secret was wrong: read it next time
            // (the marker is replaced by the watch's next sight of it).
            ctx.memo.forget_secret(&ns, &name);
            ctx.owned_versions.deleted(&ns, &secret_name);
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Err(e @ WriteError::Rejected { .. }) => {
            // The API server refused what we wrote (an admission policy, a
            // quota, a forbidden namespace): a failure like a failed mint.
            let message = redact(&e.to_string(), &minted);
            return fail(ctx, cr, &crs, &prev, &desired_inputs, &labels, reason::SECRET_REJECTED, message, current_not_after, now).await;
        }
        Err(e) => return Err(e.into()),
    }

    // report
    let registries = minted.registries();
    let mut st = status::rotated(&prev, generation, &desired_inputs, &secret_name, registries, minted.expires_at, renewal.at, now);
    let lifetime = minted.expires_at.map(|t| (t - minted.issued_at).num_seconds()).unwrap_or_default();
    let short = (!renewal.safe).then(|| {
        format!(
            "credentials from this source live {lifetime}s; regcred mints at most once every {}s, so the Secret may hold an expired credential for part of each lifetime",
            min_interval.num_seconds()
        )
    });
    let was_short = prev.conditions.iter().any(|c| c.type_ == status::SHORT_LIVED && c.status == "True");
    status::set_short_lived(&mut st, short.clone(), now);
    write_status(ctx, &crs, cr, &st).await?;
    ctx.metrics.rotations.get_or_create(&labels).inc();
    ctx.metrics.ready.get_or_create(&labels).set(1);
    if let Some(na) = minted.expires_at {
        ctx.metrics.expiry.get_or_create(&labels).set(na.timestamp());
    }
    ctx.metrics.renewal.get_or_create(&labels).set(renewal.at.timestamp());
    match short {
        // Said once, when it starts; the rotations it causes are not Events.
        Some(note) if !was_short => publish(ctx, cr, EventType::Warning, reason::LIFETIME_TOO_SHORT, Some(note)).await,
        Some(_) => {}
        // The note stays true when the recorder folds repeats into one
        // series under the first note: no expiry here (status has it).
        None => publish(ctx, cr, EventType::Normal, reason::ROTATED, Some(format!("Wrote a new credential to Secret {secret_name}"))).await,
    }
    info!(namespace = %ns, name = %name, renewal = %renewal.at, not_after = ?minted.expires_at, "rotated");
    if revocation.on_rotation == Some(true) {
        let previous = existing.as_ref().filter(|s| secret::is_ours(s, cr)).and_then(secret::password_of);
        let new = minted.entries.first().map(|e| secrecy::ExposeSecret::expose_secret(&e.password).to_string());
        if let Some(previous) = previous.filter(|p| Some(p) != new.as_ref()) {
            let delay = revocation
                .delay
                .as_deref()
                .and_then(|d| source::parse_duration("spec.source.oauth2.revoke.delay", d).ok())
                .and_then(|d| d.to_std().ok())
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(3600));
            spawn_revocation(ctx, cr, SecretString::from(previous), delay);
        }
    }
    sync_accounts(ctx, cr, &ns).await?;
    if ctx.settings.restart_stuck_pods && cr.spec.restart_stuck_pods == Some(true) {
        // After the ServiceAccounts: a recreated Pod gets the Secret from its
        // ServiceAccount at admission.
        let outcome = crate::remediate::restart_stuck(ctx, &ns, &secret_name).await;
        if !outcome.is_empty() {
            for (result, n) in crate::metrics::POD_RESTART_RESULTS.iter().zip([outcome.evicted, outcome.blocked, outcome.notified, outcome.failed]) {
                if n > 0 {
                    let l = crate::metrics::PodRestartLabels { namespace: ns.clone(), name: name.clone(), result: result.to_string() };
                    ctx.metrics.pod_restarts.get_or_create(&l).inc_by(u64::from(n));
                }
            }
            st.restarted_pods = Some(i32::try_from(outcome.evicted).unwrap_or(i32::MAX));
            write_status(ctx, &crs, cr, &st).await?;
            let summary = outcome.summary(&secret_name);
            info!(namespace = %ns, name = %name, "{summary}");
            publish(ctx, cr, EventType::Normal, crate::remediate::RESTARTED_REASON, Some(summary)).await;
        }
    }
    Ok(Action::requeue(schedule::requeue_after((ctx.now)(), renewal.at)))
}

/// Apply the status and remember the version it produced (see [`crate::memo`]).
async fn write_status(ctx: &Context, crs: &Api<RegistryCredential>, cr: &RegistryCredential, st: &api::RegistryCredentialStatus) -> Result<(), Error> {
    let rv = status::patch(crs, cr, st).await.map_err(kube_err("writing status"))?;
    ctx.memo.status_written(&cr.namespace().unwrap_or_default(), &cr.name_any(), rv);
    Ok(())
}

/// Revoke a replaced token after `delay`, in the background (a rotation
/// never waits for it). The token lives only in this task's memory: after an
/// operator restart it simply expires.
fn spawn_revocation(ctx: &Context, cr: &RegistryCredential, token: SecretString, delay: Duration) {
    let task = RevokeTask::from(ctx, cr);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        task.run(token, 3).await;
    });
}

/// Revoke now, with `attempts` tries; reported by Event and metric.
async fn revoke_now(ctx: &Context, cr: &RegistryCredential, token: SecretString, attempts: u32) {
    RevokeTask::from(ctx, cr).run(token, attempts).await
}

/// What a revocation needs, detached from the reconcile.
struct RevokeTask {
    spec: Option<api::OAuth2Source>,
    secrets: SecretReader,
    net: NetPolicy,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    about: k8s_openapi::api::core::v1::ObjectReference,
    labels: (String, String),
}

impl RevokeTask {
    fn from(ctx: &Context, cr: &RegistryCredential) -> Self {
        let ns = cr.namespace().unwrap_or_default();
        Self {
            spec: cr.spec.source.oauth2.clone(),
            secrets: SecretReader::new(ctx.client.clone(), &ns),
            net: ctx.settings.net.clone(),
            metrics: ctx.metrics.clone(),
            recorder: ctx.recorder.clone(),
            about: cr.object_ref(&()),
            labels: (ns, cr.name_any()),
        }
    }

    async fn run(self, token: SecretString, attempts: u32) {
        let Some(spec) = &self.spec else { return };
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(5 * 3u64.pow(attempt - 1))).await;
            }
            match tokio::time::timeout(Duration::from_secs(15), source::oauth2::revoke(spec, &self.secrets, &self.net, &token)).await {
                Ok(Ok(())) => {
                    last = None;
                    break;
                }
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("the revocation endpoint did not answer within 15s".into()),
            }
        }
        let (namespace, name) = self.labels.clone();
        let (result, type_, reason, note) = match last {
            None => ("revoked", EventType::Normal, "Revoked", "Revoked the previous token (RFC 7009)".to_string()),
            Some(e) => {
                warn!(namespace = %namespace, name = %name, error = %e, "revoking a token failed");
                ("failed", EventType::Warning, "RevocationFailed", format!("Revoking a token failed: {e}"))
            }
        };
        self.metrics.revocations.get_or_create(&crate::metrics::RevocationLabels { namespace, name, result: result.into() }).inc();
        let ev = Event { type_, reason: reason.into(), note: Some(note.chars().take(1000).collect()), action: "Revoke".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &self.about).await {
            warn!(error = %crate::source::summarize_kube_error(&e), "publishing an Event failed");
        }
    }
}

/// Bring the namespace's ServiceAccounts in line with `spec.serviceAccounts`.
async fn sync_accounts(ctx: &Context, cr: &RegistryCredential, ns: &str) -> Result<(), Error> {
    let Some(selection) = cr.spec.service_accounts.as_ref() else { return Ok(()) };
    let accounts = list_accounts(ctx, ns).await?;
    crate::serviceaccounts::sync_namespace(&ctx.client, ns, &accounts, &cr.secret_name(), Some(selection))
        .await
        .map_err(kube_err("updating ServiceAccounts"))?;
    Ok(())
}

async fn list_accounts(ctx: &Context, ns: &str) -> Result<Vec<k8s_openapi::api::core::v1::ServiceAccount>, Error> {
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api.list(&Default::default()).await.map_err(kube_err("listing ServiceAccounts"))?.items)
}

pub(crate) fn has_finalizer<K: Resource>(obj: &K) -> bool {
    obj.meta().finalizers.iter().flatten().any(|f| f == api::FINALIZER)
}

/// Add or remove regcred's finalizer, conditional on the resourceVersion
/// read (a merge patch carrying it is a precondition), keeping others'.
pub(crate) async fn set_finalizer<K>(api: &Api<K>, obj: &K, present: bool) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if has_finalizer(obj) == present {
        return Ok(());
    }
    let mut list: Vec<String> = obj.meta().finalizers.clone().unwrap_or_default();
    if present {
        list.push(api::FINALIZER.into());
    } else {
        list.retain(|f| f != api::FINALIZER);
    }
    let patch = serde_json::json!({"metadata": {"finalizers": list, "resourceVersion": obj.meta().resource_version}});
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch)).await?;
    Ok(())
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
}

/// One mint under the deadline: the checked credential and its renewal
/// instant, or why not. Leaves nothing written.
pub async fn mint(
    ctx: &Context,
    who: &Minter<'_>,
    source_spec: &api::CredentialSource,
    renewal: &api::Renewal,
    now: DateTime<Utc>,
) -> Result<(source::Minted, schedule::Renewal), SourceError> {
    let policy = policy(renewal, source_spec, ctx.settings.min_mint_interval)?;
    let cx = SourceContext {
        secrets: match who.secrets_dir {
            Some(d) => SecretReader::new(ctx.client.clone(), who.refs_namespace).from_dir(d.to_path_buf()),
            None => SecretReader::new(ctx.client.clone(), who.refs_namespace),
        },
        namespace: who.refs_namespace.to_string(),
        name: who.name.to_string(),
        cluster_scoped: who.cluster_scoped,
        now: ctx.now,
        ecr: ctx.ecr.clone(),
        net: ctx.settings.net.clone(),
        policy,
        seed: who.seed,
    };
    let mint_timeout = ctx.settings.mint_timeout;
    let minted = tokio::time::timeout(mint_timeout, async { source::from_spec(source_spec, cx)?.mint().await })
        .await
        .map_err(|_| SourceError::Deadline(format!("the source did not answer within {}s", mint_timeout.as_secs())))??;
    ctx.metrics.mints.get_or_create(&SourceLabels { source: source_kind(source_spec).into() }).inc();
    let minted = minted.checked()?;
    if minted.expires_at.is_some_and(|t| t <= now) {
        let problem = "the credential had already expired when it arrived".into();
        return Err(SourceError::InvalidResponse { endpoint: "source".into(), problem });
    }
    if let Some(allow_http) = source::verify_settings(source_spec) {
        // Verify before swap, under what is left of the same deadline.
        tokio::time::timeout(mint_timeout, source::verify_at_registries(&minted, allow_http, &ctx.settings.net))
            .await
            .map_err(|_| SourceError::Deadline(format!("the registries did not answer within {}s", mint_timeout.as_secs())))??;
    }
    let renewal = schedule::renewal(minted.issued_at, minted.expires_at, &policy, who.seed);
    Ok((minted, renewal))
}

/// Remove every password of `minted` from a message (an API server error
/// about the Secret should never hold one, but the message is shown to
/// users, so make sure).
pub(crate) fn redact(message: &str, minted: &source::Minted) -> String {
    use secrecy::ExposeSecret;
    // Redact first, then cut: a cut could split a password and leave part of it.
    let mut out = message.to_string();
    for e in &minted.entries {
        let p = e.password.expose_secret();
        if p.len() >= 4 {
            out = out.replace(p, "[redacted]");
        }
    }
    out.chars().take(512).collect()
}

/// A failed attempt: the Secret stays as it is; status, Event and metrics say
/// why; retry after the backoff. The Event is published when the state
/// changes (a new reason or message), not on every retry.
#[allow(clippy::too_many_arguments)]
async fn fail(
    ctx: &Context,
    cr: &RegistryCredential,
    crs: &Api<RegistryCredential>,
    prev: &api::RegistryCredentialStatus,
    inputs: &str,
    labels: &CredentialLabels,
    reason: &'static str,
    message: String,
    current_not_after: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let failures = (prev.failed_attempts.max(0) as u32).saturating_add(1);
    let seed = schedule::seed(cr.metadata.uid.as_deref().unwrap_or_default());
    let retry_at = schedule::add(now, schedule::backoff(failures, seed, now, current_not_after));
    warn!(namespace = %labels.namespace, name = %labels.name, reason, error = %message, "mint failed");
    let st = status::failed(prev, cr.metadata.generation, inputs, reason, message.clone(), Some(retry_at), now);
    let same_state = cr.ready().is_some_and(|c| c.status == "False" && c.reason == reason && c.message.starts_with(&message));
    write_status(ctx, crs, cr, &st).await?;
    ctx.metrics
        .failures
        .get_or_create(&FailureLabels { namespace: labels.namespace.clone(), name: labels.name.clone(), reason: reason.into() })
        .inc();
    ctx.metrics.ready.get_or_create(labels).set(0);
    if !same_state {
        let event_reason = if reason == reason::SECRET_REJECTED { reason::SECRET_REJECTED } else { reason::MINT_FAILED };
        publish(ctx, cr, EventType::Warning, event_reason, Some(format!("{reason}: {message}"))).await;
    }
    Ok(Action::requeue(schedule::requeue_after(now, retry_at)))
}

async fn publish(ctx: &Context, cr: &RegistryCredential, type_: EventType, reason: &str, note: Option<String>) {
    publish_to(ctx, &cr.object_ref(&()), type_, reason, note).await
}

/// Publish an Event about any object (notes are capped at 1000 characters).
pub(crate) async fn publish_to(
    ctx: &Context,
    about: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: Option<String>,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: note.map(|n| n.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, about).await {
        warn!(error = %crate::source::summarize_kube_error(&e), "publishing an Event failed");
    }
}

pub fn error_policy(cr: Arc<RegistryCredential>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(namespace = ?cr.namespace(), name = %cr.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Run the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Secrets are watched as metadata only (`PartialObjectMeta`): their data
    // never reaches this process except when a source reads one to mint.
    let (crs, secrets): (Api<RegistryCredential>, Api<PartialObjectMeta<Secret>>) = match &settings.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (reader, writer) = reflector::store();
    let index = Arc::new(ReferenceIndex::default());
    let ctx = Arc::new(Context::new(client.clone(), &settings, metrics.clone(), progress));
    let (forget, idx, live, memo) = (metrics.clone(), index.clone(), reader.clone(), ctx.clone());
    let mut cr_config = watcher::Config::default();
    if let Some(sel) = &settings.selector {
        cr_config = cr_config.labels(sel);
    }
    let cr_stream = watcher(crs, cr_config)
        .default_backoff()
        .modify(|cr| {
            cr.managed_fields_mut().clear();
        })
        .reflect(writer)
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Apply(cr)) => idx.set(cr),
            Ok(watcher::Event::InitApply(cr)) => {
                idx.set(cr);
                memo.memo.listed(&cr.namespace().unwrap_or_default(), &cr.name_any());
            }
            Ok(watcher::Event::Delete(cr)) => {
                idx.remove(cr);
                forget.forget(&cr.namespace().unwrap_or_default(), &cr.name_any());
                memo.memo.forget(&cr.namespace().unwrap_or_default(), &cr.name_any());
            }
            Ok(watcher::Event::Init) => idx.clear(),
            // After a relist, credentials deleted while the watch was down
            // are simply absent: drop their series too.
            Ok(watcher::Event::InitDone) => forget.retain_only(&live_keys(&live), false),
            Err(_) => {}
        })
        .touched_objects();
    // Our Secrets only, by label, metadata only: edits and deletions trigger a repair.
    let managed = format!("{}={}", api::MANAGED_BY_LABEL, api::MANAGED_BY_VALUE);
    // Their versions are remembered (not the objects), so a reconcile knows
    // whether the Secret is still exactly what it wrote (see crate::memo).
    let seen = ctx.clone();
    let owned = watcher(secrets.clone(), watcher::Config::default().labels(&managed))
        .default_backoff()
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                if let (Some(ns), Some(name), Some(rv)) = (&s.metadata.namespace, &s.metadata.name, &s.metadata.resource_version) {
                    seen.owned_versions.observe(ns, name, rv);
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                    seen.owned_versions.deleted(ns, name);
                }
            }
            // A relist: deletions while the watch was down show only as
            // absences, so what we remember of our Secrets is read again.
            Ok(watcher::Event::Init) => {
                seen.owned_versions.set_synced(false);
                seen.memo.clear_secrets();
            }
            Ok(watcher::Event::InitDone) => seen.owned_versions.set_synced(true),
            _ => {}
        })
        .touched_objects();
    // Secrets the sources read: metadata only, mapped to the credentials that
    // name them through the index; the versions of those a credential names
    // are remembered (for the inputs fingerprint).
    let (sources, refs) = (ctx.clone(), index.clone());
    let referenced = watcher(secrets, watcher::Config::default().labels(&format!("{}!={}", api::MANAGED_BY_LABEL, api::MANAGED_BY_VALUE)))
        .default_backoff()
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                if let (Some(ns), Some(name), Some(rv)) = (&s.metadata.namespace, &s.metadata.name, &s.metadata.resource_version) {
                    if sources.source_versions.contains(ns, name) || !refs.lookup(ns, name).is_empty() {
                        sources.source_versions.observe(ns, name, rv);
                    }
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                    sources.source_versions.forget(ns, name);
                }
            }
            Ok(watcher::Event::Init) => sources.source_versions.clear(),
            _ => {}
        })
        .touched_objects();
    // ServiceAccounts (metadata): one created or relabelled gets the
    // entries of the credentials of its namespace that select accounts.
    let accounts: Api<PartialObjectMeta<k8s_openapi::api::core::v1::ServiceAccount>> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let sa_stream = watcher(accounts, watcher::Config::default()).default_backoff().touched_objects();
    let selecting = reader.clone();
    let shutdown = futures::FutureExt::shared(shutdown);
    let namespaced = Controller::for_stream(cr_stream, reader)
        .owns_stream(owned)
        .watches_stream(referenced, move |s| referencing(&index, &s))
        .watches_stream(sa_stream, move |sa| {
            let ns = sa.metadata.namespace.clone().unwrap_or_default();
            selecting
                .state()
                .iter()
                .filter(|cr| cr.metadata.namespace.as_deref() == Some(ns.as_str()) && cr.spec.service_accounts.is_some())
                .map(|cr| ObjectRef::from_obj(cr.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "reconcile error");
            }
        });
    // ClusterRegistryCredentials need cluster-wide access: only when the
    // operator watches every namespace.
    if settings.namespace.is_none() {
        let fleet = crate::fleet::run(client, ctx, settings.operator_namespace.clone(), settings.selector.clone(), settings.concurrency.min(8), shutdown);
        futures::join!(namespaced, fleet);
    } else {
        namespaced.await;
    }
}

fn live_keys(store: &Store<RegistryCredential>) -> Vec<(String, String)> {
    store.state().iter().map(|cr| (cr.namespace().unwrap_or_default(), cr.name_any())).collect()
}

/// Credentials that reference a Secret by name, in its namespace.
fn referencing(index: &ReferenceIndex, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<RegistryCredential>> {
    let (Some(ns), Some(name)) = (secret.metadata.namespace.as_deref(), secret.metadata.name.as_deref()) else {
        return Vec::new();
    };
    index.lookup(ns, name).into_iter().map(|cr| ObjectRef::new(&cr).within(ns)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_contained() {
        let r = contain_panic(async { panic!("boom in one reconcile") }).await;
        assert_eq!(r.unwrap_err(), "boom in one reconcile");
        let r: Result<u32, String> = contain_panic(async { 7 }).await;
        assert_eq!(r.unwrap(), 7);
        // chrono's overflow panic (what a hostile lifetime used to cause)
        let r = contain_panic(async { chrono::DateTime::<Utc>::MAX_UTC + chrono::Duration::seconds(1) }).await;
        assert!(r.is_err());
    }

    #[test]
    fn stall_is_work_in_flight_with_no_progress() {
        let p = Arc::new(Progress::new(Duration::from_secs(90)));
        let t0 = Instant::now();
        assert!(!p.stalled_at(t0 + Duration::from_secs(3600)), "idle is not stalled");
        let g = p.begin();
        assert!(!p.stalled_at(Instant::now() + Duration::from_secs(60)));
        assert!(p.stalled_at(Instant::now() + Duration::from_secs(120)));
        drop(g);
        assert!(!p.stalled_at(Instant::now() + Duration::from_secs(120)));
    }

    #[tokio::test]
    async fn namespaces_get_a_share() {
        let l = Arc::new(NamespaceLimits { per_namespace: 2, slots: Mutex::new(HashMap::new()) });
        let wait = Duration::from_millis(50);
        let a1 = l.acquire("a", wait).await;
        let a2 = l.acquire("a", wait).await;
        assert!(a1.is_some() && a2.is_some());
        assert!(l.acquire("a", wait).await.is_none(), "a third slot for namespace a");
        assert!(l.acquire("b", wait).await.is_some(), "namespace b is not held up by a");
        drop(a1);
        assert!(l.acquire("a", wait).await.is_some());
        // A slot freed while waiting is taken (a burst of quick reconciles flows).
        let (l2, a3) = (l.clone(), l.acquire("a", wait).await);
        let waiter = tokio::spawn(async move { l2.acquire("a", Duration::from_secs(5)).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a3);
        assert!(waiter.await.unwrap());
        drop(a2);
    }

    #[test]
    fn index_maps_secrets_to_credentials() {
        let cr = |ns: &str, name: &str, secret: &str| -> RegistryCredential {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"source": {"basic": {"secretRef": {"name": secret}, "registries": ["r"]}}}
            }))
            .unwrap()
        };
        let idx = ReferenceIndex::default();
        idx.set(&cr("a", "one", "robot"));
        idx.set(&cr("a", "two", "robot"));
        idx.set(&cr("b", "one", "robot"));
        assert_eq!(idx.lookup("a", "robot"), vec!["one".to_string(), "two".to_string()]);
        idx.set(&cr("a", "two", "other"));
        assert_eq!(idx.lookup("a", "robot"), vec!["one".to_string()]);
        assert_eq!(idx.lookup("a", "other"), vec!["two".to_string()]);
        idx.remove(&cr("a", "one", "robot"));
        assert!(idx.lookup("a", "robot").is_empty());
        assert_eq!(idx.lookup("b", "robot"), vec!["one".to_string()]);
    }
}
