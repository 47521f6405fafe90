//! RegistryCredential, the namespaced kind: its reconcile (what it targets:
//! one Secret in its own namespace, read through the caches of our own
//! writes; then the shared [`crate::attempt`] and [`crate::report`]; then the
//! follow-ups: revocation, ServiceAccounts, stuck Pods) and its wiring.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use crate::events::Type as EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use tracing::{debug, error, info, warn};

use crate::api::{self, RegistryCredential, RegistryCredentialStatus};
use crate::attempt::{self, Minter, Outcome, Pass, Request, Seen, Target};
use crate::context::{bounded, guard, kube_err, Context, Error, Guarded};
use crate::finalizer::{has_finalizer, set_finalizer};
use crate::index::ReferenceIndex;
use crate::memo::Cached;
use crate::metrics::CredentialLabels;
use crate::report::{self, Failure, Subject};
use crate::revoke;
use crate::schedule::{self, Decision, SecretState};
use crate::secret;
use crate::serviceaccounts::{self, Want};
use crate::slots::Permit;
use crate::status::reason;

pub async fn reconcile(cr: Arc<RegistryCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Every due reconcile runs (the controller's concurrency is unbounded):
    // what bounds the work is the slots its attempt waits for between
    // passes, in the order of `crate::slots`, and the gate on reads.
    attempt::in_passes(&ctx, cr, |cr, slot| Box::pin(pass(cr, ctx.clone(), slot))).await
}

/// One pass under its deadline and the panic backstop (the wait for a slot
/// is not part of it).
async fn pass(cr: Arc<RegistryCredential>, ctx: Arc<Context>, slot: Option<Permit>) -> Result<Pass<Arc<RegistryCredential>>, Error> {
    let (ns, name) = (cr.namespace().unwrap_or_default(), cr.name_any());
    match guard(&ctx, &ns, &name, ctx.settings.reconcile_timeout(), Box::pin(reconcile_inner(&cr, &ctx, slot))).await {
        Guarded::Done(Ok(Pass::NeedSlot { ask, next })) => Ok(Pass::NeedSlot { ask, next: next.map(Arc::new).unwrap_or(cr) }),
        Guarded::Done(Ok(Pass::Done(action))) => Ok(Pass::Done(action)),
        Guarded::Done(Err(e)) => Err(e),
        // A deadline is a failure like any other: recorded, backed off.
        Guarded::Deadline(d) => {
            let message = format!("the reconcile did not finish within {}s; retrying with backoff", d.as_secs());
            bounded(Box::pin(stopped(&ctx, &cr, reason::MINT_FAILED, message))).await.map(Pass::Done)
        }
        Guarded::Panicked(panic) => {
            // The panic message is ours (never secret material), but keep it in the log only.
            error!(namespace = %ns, name = %name, panic = %panic, "a reconcile panicked; the credential is failed and retried");
            let message = "an internal error stopped this reconcile (see the operator log); retrying with backoff".to_string();
            bounded(Box::pin(stopped(&ctx, &cr, reason::INTERNAL_ERROR, message))).await.map(Pass::Done)
        }
    }
}

fn subject(cr: &RegistryCredential) -> Subject {
    Subject {
        about: cr.object_ref(&()),
        labels: CredentialLabels { namespace: cr.namespace().unwrap_or_default(), name: cr.name_any() },
        generation: cr.metadata.generation,
        seed: schedule::seed(cr.metadata.uid.as_deref().unwrap_or_default()),
        secret_name: cr.secret_name(),
    }
}

/// A reconcile that was stopped (its deadline, a panic): the credential is
/// read again and failed, so status, backoff and metrics show it; the
/// process carries on.
async fn stopped(ctx: &Context, cached: &RegistryCredential, why: &'static str, message: String) -> Result<Action, Error> {
    let crs: Api<RegistryCredential> = Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let Some(cr) = crs.get_opt(&cached.name_any()).await.map_err(kube_err("reading the RegistryCredential"))? else {
        return Ok(Action::await_change());
    };
    let prev = cr.status.clone().unwrap_or_default();
    let inputs = prev.observed_inputs.clone().unwrap_or_default();
    let s = subject(&cr);
    ctx.metrics.seen(&s.labels);
    let not_after = prev.not_after;
    record_failure(ctx, &cr, &s, &prev, &inputs, Failure { why, message, current_not_after: not_after }).await
}

/// Fail one attempt: status (then the backoff paces the retry), Event, metrics.
async fn record_failure(ctx: &Context, cr: &RegistryCredential, s: &Subject, prev: &RegistryCredentialStatus, inputs: &str, f: Failure) -> Result<Action, Error> {
    let now = (ctx.now)();
    let (st, retry_at) = report::failed(ctx, s, prev, inputs, f, now).await;
    write_status(ctx, cr, &st).await?;
    Ok(Action::requeue(schedule::requeue_after(now, retry_at)))
}

/// Apply the status and remember the version it produced (see [`crate::memo`]).
async fn write_status(ctx: &Context, cr: &RegistryCredential, st: &RegistryCredentialStatus) -> Result<(), Error> {
    let ns = cr.namespace().unwrap_or_default();
    let crs: Api<RegistryCredential> = Api::namespaced(ctx.client.clone(), &ns);
    let rv = crate::status::patch(&crs, cr, st).await.map_err(kube_err("writing status"))?;
    ctx.memo.status_written(&ns, &cr.name_any(), rv);
    Ok(())
}

/// What the decision is made from.
struct Gathered {
    state: SecretState,
    /// The whole Secret, when it was read.
    existing: Option<Secret>,
    /// Its metadata, when known (from a read or our own last write).
    meta: Option<ObjectMeta>,
    inputs: String,
    renew_request: Option<String>,
    /// The vendor's id of the key our Secret holds (`rotate` sources).
    key: Option<String>,
}

/// One pass: decide, and mint when due with the slot in hand. A credential
/// read afresh goes to the next pass with the ask for a slot.
async fn reconcile_inner(cached: &RegistryCredential, ctx: &Context, slot: Option<Permit>) -> Result<Pass<Option<RegistryCredential>>, Error> {
    let mut fresh = None;
    let reading = ctx.reading().await;
    let cr = match Box::pin(fresh_enough(ctx, cached)).await? {
        Fresh::Cached => cached,
        Fresh::Read(f) => &*fresh.insert(f),
        Fresh::Done(action) => return Ok(Pass::Done(action)),
    };
    drop(reading);
    // The rarer and larger steps are boxed (here and in `rotate`), so a
    // pass is small.
    if let Some(action) = Box::pin(finalize(ctx, cr)).await? {
        return Ok(Pass::Done(action));
    }
    let s = subject(cr);
    ctx.metrics.seen(&s.labels);
    let now = (ctx.now)();
    let reading = ctx.reading().await;
    let g = Box::pin(gather(ctx, cr)).await?;
    drop(reading);
    let mut prev = cr.status.clone().unwrap_or_default();
    let revoke_next = Box::pin(tend_keys(ctx, cr, &s, &g, &mut prev)).await?;
    let seen = Seen {
        secret: g.state.clone(),
        desired_inputs: g.inputs.clone(),
        prev: &prev,
        renew_requested: g.renew_request.is_some(),
        last_attempt: ctx.attempts.last(&s.labels.namespace, &s.labels.name),
        seed: s.seed,
    };
    match schedule::decide(now, &attempt::observed(seen, ctx.settings.min_mint_interval)) {
        Decision::Blocked => {
            let st = Box::pin(report::blocked(ctx, &s, &prev, now)).await;
            write_status(ctx, cr, &st).await?;
            Ok(Pass::Done(Action::requeue(schedule::requeue_after(now, schedule::add(now, schedule::BLOCKED_RECHECK)))))
        }
        Decision::WaitUntil(at) | Decision::BackOffUntil(at) => {
            debug!(namespace = %s.labels.namespace, name = %s.labels.name, until = %at, "nothing to do yet");
            report::waiting(ctx, &s, &prev, &g.state, at);
            if matches!(&g.state, SecretState::Ours(o) if o.intact) {
                Box::pin(sync_accounts(ctx, cr, &s, prev)).await?;
            }
            // Back sooner when a replaced key is due for revocation.
            let wake = revoke_next.map_or(at, |r| r.min(at));
            Ok(Pass::Done(Action::requeue(schedule::requeue_after(now, wake))))
        }
        Decision::Mint(why) => {
            let work = crate::slots::Work::of(why, prev.last_rotation_time.is_some());
            let slot = match attempt::slot_for(ctx, attempt::ask(&s.labels.namespace, &cr.spec.source, work), slot) {
                Ok(slot) => slot,
                Err(ask) => return Ok(Pass::NeedSlot { ask, next: fresh.take() }),
            };
            info!(namespace = %s.labels.namespace, name = %s.labels.name, reason = ?why, "minting");
            let key_name = match &cr.spec.source.rotate {
                // The new key's name goes into status before the vendor is asked.
                Some(_) => {
                    let (name, pending) = crate::keys::pending(prev.key.as_ref(), cr.metadata.uid.as_deref().unwrap_or_default(), now);
                    prev.key = Some(pending);
                    write_status(ctx, cr, &prev).await?;
                    Some(name)
                }
                None => None,
            };
            Box::pin(rotate(ctx, cr, &s, prev, g, slot, key_name.as_deref())).await.map(Pass::Done)
        }
    }
}

/// For a `rotate` source: its keys tended before the decision (see
/// [`crate::keys`]); status written when that changed it. Returns when the
/// next replaced key is due for revocation.
async fn tend_keys(ctx: &Context, cr: &RegistryCredential, s: &Subject, g: &Gathered, prev: &mut RegistryCredentialStatus) -> Result<Option<chrono::DateTime<Utc>>, Error> {
    if cr.spec.source.rotate.is_none() {
        return Ok(None);
    }
    let (ns, name) = (cr.namespace().unwrap_or_default(), cr.name_any());
    let uid = cr.metadata.uid.clone().unwrap_or_default();
    let tended = crate::keys::tend(ctx, s, &minter(&ns, &name, s, None), &cr.spec.source, &uid, prev.key.as_ref(), g.key.as_deref()).await;
    if tended.status != prev.key {
        prev.key = tended.status;
        write_status(ctx, cr, prev).await?;
    }
    Ok(tended.next)
}

/// Who mints for this credential: its own namespace's Secrets, its name.
fn minter<'a>(ns: &'a str, name: &'a str, s: &Subject, key_name: Option<&'a str>) -> Minter<'a> {
    Minter { refs_namespace: ns, name, cluster_scoped: false, seed: s.seed, secrets_dir: None, key_name }
}

enum Fresh {
    Cached,
    Read(RegistryCredential),
    Done(Action),
}

/// The cached credential unless it may be older than our own last status
/// write (a reconcile that saw the old status would mint a second time);
/// then, and once for credentials from the initial list, read it.
async fn fresh_enough(ctx: &Context, cached: &RegistryCredential) -> Result<Fresh, Error> {
    let (ns, name) = (cached.namespace().unwrap_or_default(), cached.name_any());
    match ctx.memo.cached(&ns, &name, cached.metadata.resource_version.as_deref()) {
        Cached::Use => Ok(Fresh::Cached),
        // The watch event of our own status write triggers the next
        // reconcile; a requeue covers the case where none comes.
        Cached::AwaitOwnWrite => Ok(Fresh::Done(Action::requeue(Duration::from_secs(5)))),
        Cached::Read => {
            let crs: Api<RegistryCredential> = Api::namespaced(ctx.client.clone(), &ns);
            let Some(f) = crs.get_opt(&name).await.map_err(kube_err("reading the RegistryCredential"))? else {
                return Ok(Fresh::Done(Action::await_change()));
            };
            ctx.memo.read(&ns, &name);
            Ok(Fresh::Read(f))
        }
    }
}

/// The finalizer's part: present while ServiceAccount entries or a token
/// to revoke on deletion may exist; on deletion, clean those up (the owner
/// reference lets garbage collection take the Secret). `Some` when the
/// reconcile ends here.
async fn finalize(ctx: &Context, cr: &RegistryCredential) -> Result<Option<Action>, Error> {
    let ns = cr.namespace().unwrap_or_default();
    let crs: Api<RegistryCredential> = Api::namespaced(ctx.client.clone(), &ns);
    let revocation = revoke::settings(&cr.spec.source);
    let keys = cr.spec.source.rotate.is_some();
    let needs = cr.spec.service_accounts.is_some() || revocation.on_delete == Some(true) || keys;
    let deleting = cr.metadata.deletion_timestamp.is_some();
    if !deleting && !(has_finalizer(cr) && !needs) {
        if needs && !has_finalizer(cr) {
            // Before the first entry is added (or token minted): they must be
            // removable (revocable) when the credential goes.
            set_finalizer(&crs, cr, true).await.map_err(kube_err("adding the finalizer"))?;
        }
        return Ok(None);
    }
    if deleting && has_finalizer(cr) && revocation.on_delete == Some(true) {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let current = secrets.get_opt(&cr.secret_name()).await.ok().flatten().filter(|s| secret::is_ours(s, cr));
        let token = current.as_ref().and_then(secret::password_of);
        revoke::on_delete(ctx, &cr.spec.source, &ns, cr.object_ref(&()), (ns.clone(), cr.name_any()), token).await;
    }
    if deleting && has_finalizer(cr) && keys {
        let (s, name) = (subject(cr), cr.name_any());
        let who = minter(&ns, &name, &s, None);
        let uid = cr.metadata.uid.clone().unwrap_or_default();
        crate::keys::on_delete(ctx, &s, &who, &cr.spec.source, &uid, cr.status.as_ref().and_then(|st| st.key.as_ref())).await;
    }
    if has_finalizer(cr) {
        let accounts = list_accounts(ctx, &ns).await?;
        let uid = cr.metadata.uid.clone().unwrap_or_default();
        serviceaccounts::sync(&ctx.client, &accounts, &cr.secret_name(), &uid, |_| Want::Gone)
            .await
            .map_err(kube_err("removing ServiceAccount entries"))?;
        set_finalizer(&crs, cr, false).await.map_err(kube_err("removing the finalizer"))?;
    }
    Ok(Some(Action::await_change()))
}

/// The Secret as we last wrote it while the watch has seen no other
/// version; else (and when the replaced token must be revoked) read it.
async fn gather(ctx: &Context, cr: &RegistryCredential) -> Result<Gathered, Error> {
    let (ns, name, secret_name) = (cr.namespace().unwrap_or_default(), cr.name_any(), cr.secret_name());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // The replaced token (revocation) or key id (`rotate`) is read from the Secret.
    let read_whole = revoke::settings(&cr.spec.source).on_rotation == Some(true) || cr.spec.source.rotate.is_some();
    let known = if read_whole { None } else { ctx.memo.secret(&ns, &name, &secret_name, ctx.owned_versions.get(&ns, &secret_name)) };
    let (state, existing, meta) = match known {
        Some((rv, state)) => (state, None, Some(ObjectMeta { resource_version: Some(rv), ..Default::default() })),
        // A credential whose Secret our watch has never seen (a new one):
        // create it without reading first. A Secret that is there after all
        // (not ours, or not yet seen) fails the create with a conflict, and
        // the attempt reads it.
        None if !read_whole && ctx.owned_versions.never_seen(&ns, &secret_name) => (SecretState::Missing, None, None),
        None => {
            let existing = secrets.get_opt(&secret_name).await.map_err(kube_err("reading the target Secret"))?;
            let state = attempt::secret_state(existing.as_ref(), |s| secret::is_ours(s, cr));
            let meta = existing.as_ref().map(|s| s.metadata.clone());
            (state, existing, meta)
        }
    };
    let spec = format!("g{}", cr.metadata.generation.unwrap_or(0));
    let inputs = attempt::inputs(&spec, &cr.spec.source, &secrets, Some(&ctx.source_versions)).await?;
    let renew_request = api::pending_renew_request(&cr.metadata, cr.status.as_ref());
    let key = existing.as_ref().filter(|x| secret::is_ours(x, cr)).and_then(secret::key_of);
    Ok(Gathered { state, existing, meta, inputs, renew_request, key })
}

/// The shared attempt for this credential's Secret, then the report and
/// the follow-ups.
async fn rotate(
    ctx: &Context,
    cr: &RegistryCredential,
    s: &Subject,
    mut prev: RegistryCredentialStatus,
    g: Gathered,
    slot: Permit,
    key_name: Option<&str>,
) -> Result<Action, Error> {
    let (ns, name, secret_name) = (cr.namespace().unwrap_or_default(), cr.name_any(), cr.secret_name());
    // A renew request is served by this attempt, whatever its outcome.
    if g.renew_request.is_some() {
        prev.renew_request_served = g.renew_request.clone();
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let ours = |x: &Secret| secret::is_ours(x, cr);
    let render = |m: &crate::source::Minted, r: schedule::Renewal| secret::desired(cr, m, &g.inputs, r.at);
    let target = Target { secrets: &secrets, name: &secret_name, existing: g.meta.clone(), ours: &ours, render: &render };
    let who = minter(&ns, &name, s, key_name);
    let req = Request { who, source: &cr.spec.source, renewal: &cr.spec.renewal };
    let (minted, renewal, written, now) = match attempt::attempt(ctx, &req, &target, slot).await? {
        Outcome::Rotated { minted, renewal, written, at } => (minted, renewal, written, at),
        Outcome::Failed { reason, message } => {
            let not_after = attempt::current_not_after(&g.state);
            return Box::pin(record_failure(ctx, cr, s, &prev, &g.inputs, Failure { why: reason, message, current_not_after: not_after })).await;
        }
        Outcome::Contended => {
            // What we thought of the Secret was wrong: read it next time
            // (the marker is replaced by the watch's next sight of it).
            ctx.memo.forget_secret(&ns, &name);
            ctx.owned_versions.deleted(&ns, &secret_name);
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    };
    let state = attempt::secret_state(Some(&written), |x| secret::is_ours(x, cr));
    ctx.memo.secret_written(&ns, &name, &secret_name, written.metadata.resource_version.clone(), state);
    Box::pin(after_rotation(ctx, cr, s, prev, &g, minted, renewal, now)).await
}

/// A new credential is in the Secret: status, revocation of the one it
/// replaced, ServiceAccounts, stuck Pods.
#[allow(clippy::too_many_arguments)]
async fn after_rotation(
    ctx: &Context,
    cr: &RegistryCredential,
    s: &Subject,
    prev: RegistryCredentialStatus,
    g: &Gathered,
    minted: crate::source::Minted,
    renewal: schedule::Renewal,
    now: chrono::DateTime<Utc>,
) -> Result<Action, Error> {
    let (ns, name) = (&s.labels.namespace, &s.labels.name);
    let mut st = report::rotated(ctx, s, &prev, &g.inputs, &minted, &renewal, now).await;
    let mut requeue_at = renewal.at;
    if let Some((keys, revoke_at)) = crate::keys::after_rotation(ctx, s, &cr.spec.source, prev.key.as_ref(), &minted, g.key.clone(), now).await {
        requeue_at = revoke_at.map_or(requeue_at, |r| r.min(requeue_at));
        st.key = Some(keys);
    }
    write_status(ctx, cr, &st).await?;
    let previous = g.existing.as_ref().filter(|x| secret::is_ours(x, cr)).and_then(secret::password_of);
    revoke::after_rotation(ctx, &cr.spec.source, ns, cr.object_ref(&()), (ns.clone(), name.clone()), previous, &minted);
    let st = sync_accounts(ctx, cr, s, st).await?;
    restart_stuck(ctx, cr, s, st).await?;
    Ok(Action::requeue(schedule::requeue_after((ctx.now)(), requeue_at)))
}

/// Bring the namespace's ServiceAccounts in line with `spec.serviceAccounts`
/// (called only while the Secret holds our credential), and report entries
/// another credential owns. Returns the status as written.
async fn sync_accounts(ctx: &Context, cr: &RegistryCredential, s: &Subject, st: RegistryCredentialStatus) -> Result<RegistryCredentialStatus, Error> {
    let Some(selection) = cr.spec.service_accounts.as_ref() else { return Ok(st) };
    let accounts = list_accounts(ctx, &s.labels.namespace).await?;
    let uid = cr.metadata.uid.clone().unwrap_or_default();
    let want = |sa: &ServiceAccount| if serviceaccounts::selects(Some(selection), sa) { Want::Entry } else { Want::Gone };
    let synced = serviceaccounts::sync(&ctx.client, &accounts, &s.secret_name, &uid, want)
        .await
        .map_err(kube_err("updating ServiceAccounts"))?;
    let mut next = st.clone();
    report::clash(ctx, s, &st, &mut next, synced.clash_message(&s.secret_name), (ctx.now)()).await;
    if next != st {
        write_status(ctx, cr, &next).await?;
    }
    Ok(next)
}

async fn list_accounts(ctx: &Context, ns: &str) -> Result<Vec<ServiceAccount>, Error> {
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api.list(&Default::default()).await.map_err(kube_err("listing ServiceAccounts"))?.items)
}

/// After the ServiceAccounts (a recreated Pod gets the Secret from its
/// ServiceAccount at admission): restart Pods stuck pulling, when allowed.
async fn restart_stuck(ctx: &Context, cr: &RegistryCredential, s: &Subject, mut st: RegistryCredentialStatus) -> Result<(), Error> {
    if !(ctx.settings.restart_stuck_pods && cr.spec.restart_stuck_pods == Some(true)) {
        return Ok(());
    }
    let l = &s.labels;
    let outcome = crate::remediate::restart_stuck(ctx, &l.namespace, &s.secret_name).await;
    let counts = [outcome.evicted, outcome.blocked, outcome.notified, outcome.failed, outcome.braked];
    for (result, n) in crate::metrics::POD_RESTART_RESULTS.iter().zip(counts) {
        if n > 0 {
            let pl = crate::metrics::PodRestartLabels { namespace: l.namespace.clone(), name: l.name.clone(), result: result.to_string() };
            ctx.metrics.pod_restarts.get_or_create(&pl).inc_by(u64::from(n));
        }
    }
    // Pods only braked: counted, no Event or status write on every rotation.
    if outcome.is_empty() {
        return Ok(());
    }
    st.restarted_pods = Some(i32::try_from(outcome.evicted).unwrap_or(i32::MAX));
    write_status(ctx, cr, &st).await?;
    let summary = outcome.summary(&s.secret_name);
    info!(namespace = %l.namespace, name = %l.name, "{summary}");
    s.event(ctx, EventType::Normal, crate::remediate::RESTARTED_REASON, summary).await;
    Ok(())
}

pub fn error_policy(cr: Arc<RegistryCredential>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(namespace = ?cr.namespace(), name = %cr.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Run the RegistryCredential controller until `shutdown` resolves.
/// `cluster`: where to send the names of cluster-scoped credentials whose
/// source Secret changed (one watch of referenced Secrets serves both kinds).
pub async fn run(
    ctx: Arc<Context>,
    index: Arc<ReferenceIndex>,
    cluster: Option<ClusterTriggers>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let settings = ctx.settings.clone();
    // Secrets are watched as metadata only (`PartialObjectMeta`): their data
    // never reaches this process except when a source reads one to mint.
    let (crs, secrets): (Api<RegistryCredential>, Api<PartialObjectMeta<Secret>>) = match &settings.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (reader, writer) = reflector::store();
    let cr_stream = credential_stream(&ctx, crs, &settings, writer, reader.clone(), index.clone());
    let owned = owned_stream(&ctx, secrets.clone());
    let referenced = referenced_stream(&ctx, secrets, index.clone());
    // ServiceAccounts (metadata): one created or relabelled gets the
    // entries of the credentials of its namespace that select accounts.
    let accounts: Api<PartialObjectMeta<ServiceAccount>> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let sa_stream = watcher(accounts, watcher::Config::default()).default_backoff().touched_objects();
    let selecting = reader.clone();
    let results = Controller::for_stream(cr_stream, reader)
        .owns_stream(owned)
        .watches_stream(referenced, move |s| referencing(&index, cluster.as_ref(), &s))
        .watches_stream(sa_stream, move |sa| {
            let ns = sa.metadata.namespace.clone().unwrap_or_default();
            selecting
                .state()
                .iter()
                .filter(|cr| cr.metadata.namespace.as_deref() == Some(ns.as_str()) && cr.spec.service_accounts.is_some())
                .map(|cr| ObjectRef::from_obj(cr.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(ControllerConfig::default().concurrency(0))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx);
    crate::telemetry::drain(results, "reconcile error").await;
}

/// The credentials, reflected into `writer`, kept in the reference index
/// and the memo, their metric series dropped with them.
fn credential_stream(
    ctx: &Arc<Context>,
    crs: Api<RegistryCredential>,
    settings: &crate::context::Settings,
    writer: reflector::store::Writer<RegistryCredential>,
    live: Store<RegistryCredential>,
    index: Arc<ReferenceIndex>,
) -> impl futures::Stream<Item = Result<RegistryCredential, watcher::Error>> + Send + 'static {
    let mut config = watcher::Config::default();
    if let Some(sel) = &settings.selector {
        config = config.labels(sel);
    }
    let ctx = ctx.clone();
    let idx = index.clone();
    let set = move |cr: &RegistryCredential| {
        let ns = cr.namespace().unwrap_or_default();
        idx.set((ns.clone(), cr.name_any()), &ns, crate::source::referenced_secrets(&cr.spec.source));
    };
    watcher(crs, config)
        .default_backoff()
        .modify(|cr| {
            cr.managed_fields_mut().clear();
        })
        .reflect(writer)
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Apply(cr)) => set(cr),
            Ok(watcher::Event::InitApply(cr)) => {
                set(cr);
                ctx.memo.listed(&cr.namespace().unwrap_or_default(), &cr.name_any());
            }
            Ok(watcher::Event::Delete(cr)) => {
                let key = (cr.namespace().unwrap_or_default(), cr.name_any());
                index.remove(&key);
                ctx.metrics.forget(&key.0, &key.1);
                ctx.memo.forget(&key.0, &key.1);
                ctx.attempts.forget(&key.0, &key.1);
            }
            Ok(watcher::Event::Init) => index.clear_kind(false),
            // After a relist, credentials deleted while the watch was down
            // are simply absent: drop their series too.
            Ok(watcher::Event::InitDone) => ctx.metrics.retain_only(&live_keys(&live), false),
            Err(_) => {}
        })
        .touched_objects()
}

/// Our Secrets only, by label, metadata only: edits and deletions trigger a
/// repair. Their versions are remembered (not the objects), so a reconcile
/// knows whether the Secret is still exactly what it wrote (see crate::memo).
fn owned_stream(ctx: &Arc<Context>, secrets: Api<PartialObjectMeta<Secret>>) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    let managed = format!("{}={}", api::MANAGED_BY_LABEL, api::MANAGED_BY_VALUE);
    let seen = ctx.clone();
    watcher(secrets, watcher::Config::default().labels(&managed))
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
        .touched_objects()
}

/// Secrets the sources read: metadata only, mapped to the credentials that
/// name them through the index; the versions of those a credential names
/// are remembered (for the inputs fingerprint).
fn referenced_stream(
    ctx: &Arc<Context>,
    secrets: Api<PartialObjectMeta<Secret>>,
    refs: Arc<ReferenceIndex>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    let sources = ctx.clone();
    let not_ours = format!("{}!={}", api::MANAGED_BY_LABEL, api::MANAGED_BY_VALUE);
    watcher(secrets, watcher::Config::default().labels(&not_ours))
        .default_backoff()
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                let (Some(ns), Some(name), Some(rv)) = (&s.metadata.namespace, &s.metadata.name, &s.metadata.resource_version) else { return };
                if sources.source_versions.contains(ns, name) || !refs.lookup(ns, name).is_empty() {
                    sources.source_versions.observe(ns, name, rv);
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
        .touched_objects()
}

fn live_keys(store: &Store<RegistryCredential>) -> Vec<(String, String)> {
    store.state().iter().map(|cr| (cr.namespace().unwrap_or_default(), cr.name_any())).collect()
}

/// Names of cluster-scoped credentials to reconcile, for their controller.
pub type ClusterTriggers = futures::channel::mpsc::UnboundedSender<String>;

/// Credentials that reference a Secret by name, in its namespace; the
/// cluster-scoped ones among them are sent to their own controller.
fn referencing(index: &ReferenceIndex, cluster: Option<&ClusterTriggers>, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<RegistryCredential>> {
    let (Some(ns), Some(name)) = (secret.metadata.namespace.as_deref(), secret.metadata.name.as_deref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (cr_ns, cr) in index.lookup(ns, name) {
        match (cr_ns.is_empty(), cluster) {
            (false, _) => out.push(ObjectRef::new(&cr).within(&cr_ns)),
            (true, Some(tx)) => {
                let _ = tx.unbounded_send(cr);
            }
            (true, None) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// During a burst thousands of reconciles wait for their slots at once
    /// (the controller runs every due reconcile). A reconcile waits between
    /// its passes, holding only the ask, so what each holds is the
    /// `reconcile` future (the wait for the slot inside it) and the ask; a
    /// pass is boxed and gone by then. (Before the slots it was 68 KiB.)
    #[tokio::test]
    async fn a_reconcile_waiting_for_its_slot_holds_little() {
        crate::install_crypto_provider();
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
        let progress = Arc::new(crate::context::Progress::new(Duration::from_secs(90)));
        let ctx = Arc::new(Context::new(client, &Default::default(), Default::default(), progress));
        let cr: RegistryCredential = serde_json::from_value(serde_json::json!({
            "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": "a", "namespace": "b"},
            "spec": {"source": {"basic": {"secretRef": {"name": "x"}, "registries": ["r"]}}}
        }))
        .unwrap();
        let waiting = std::mem::size_of_val(&reconcile(Arc::new(cr), ctx));
        eprintln!("a reconcile waiting for its slot: {waiting} bytes");
        assert!(waiting <= 4096, "a waiting reconcile holds {waiting} bytes");
    }
}
