//! ClusterRegistryCredential: one mint for the whole fleet, written to every
//! selected namespace, event-driven (namespaces, our Secrets and
//! ServiceAccounts are watched), and clean on the way out.
//!
//! The current credential lives in a *home* Secret in the operator's
//! namespace (owned by the credential): the shared [`crate::attempt`]
//! decides from it and writes it, and [`crate::report`] reports the outcome,
//! exactly as for a namespaced credential; every target namespace gets a
//! copy of it, so a namespace created later gets the current credential
//! without a new mint. Secrets in target namespaces carry a controller owner reference
//! to the cluster-scoped credential, so deleting it collects them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use crate::events::Type as EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, error, info, warn};

use crate::api::{self, ClusterRegistryCredential, ClusterRegistryCredentialStatus, NamespaceFailure, RegistryCredentialStatus, ServiceAccountSelection};
use crate::attempt::{self, Minter, Outcome, Pass, Request, Seen, Target};
use crate::context::{bounded, guard, kube_err, publish_to, Context, Error, Guarded};
use crate::finalizer::{has_finalizer, set_finalizer};
use crate::index::ReferenceIndex;
use crate::metrics::CredentialLabels;
use crate::report::{self, Failure, Subject};
use crate::revoke;
use crate::schedule::{self, Decision};
use crate::secret::{self, Placement, WriteError};
use crate::serviceaccounts::{self, Want};
use crate::slots::Permit;
use crate::status::reason;

const KIND: &str = "ClusterRegistryCredential";
/// Failures listed in status; the rest are only counted.
const MAX_LISTED_FAILURES: usize = 10;
/// Namespaces written at once.
const WRITE_CONCURRENCY: usize = 16;
/// How soon namespaces that could not be written are tried again.
const FAILED_RETRY: Duration = Duration::from_secs(60);

/// What the fleet reconcile reads besides the API server.
pub struct FleetContext {
    pub base: Arc<Context>,
    /// Namespace metadata (labels, deletion), all namespaces.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Metadata of the Secrets written for cluster credentials (by label).
    pub owned: Store<PartialObjectMeta<Secret>>,
    /// ServiceAccounts, for `serviceAccounts`.
    pub accounts: Store<ServiceAccount>,
    /// Where home Secrets live and, by default, what sources read.
    pub home_namespace: String,
    /// Per credential (UID), the resourceVersion of its copy in each
    /// namespace as regcred last wrote or checked it: a copy at any other
    /// version may have been edited (its data is not in the metadata cache),
    /// so it is read and compared before it counts as current. Holds only
    /// target namespaces of live credentials (see [`FleetContext::keep_written`]).
    pub written: std::sync::Mutex<HashMap<String, HashMap<String, String>>>,
}

impl FleetContext {
    fn remember(&self, uid: &str, ns: &str, rv: Option<&String>) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        match rv {
            Some(rv) => {
                w.entry(uid.to_string()).or_default().insert(ns.to_string(), rv.clone());
            }
            None => {
                w.get_mut(uid).map(|m| m.remove(ns));
            }
        }
    }

    fn written_at(&self, uid: &str, ns: &str) -> Option<String> {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).get(uid)?.get(ns).cloned()
    }

    /// Forget the copies of `uid` outside `targets` (all of them when the
    /// credential goes): namespaces deleted or left leave nothing behind.
    fn keep_written(&self, uid: &str, targets: &BTreeSet<String>) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if targets.is_empty() {
            w.remove(uid);
        } else if let Some(m) = w.get_mut(uid) {
            m.retain(|ns, _| targets.contains(ns));
        }
    }
}

/// Where a cluster credential's source reads Secrets: `sourceNamespace`,
/// else the operator's namespace.
fn refs_namespace(ccr: &ClusterRegistryCredential, home_namespace: &str) -> String {
    ccr.spec.source_namespace.clone().unwrap_or_else(|| home_namespace.to_string())
}

/// The home Secret's name: `regcred-cluster-<name>`, shortened with a hash
/// to stay a valid name.
pub fn home_name(name: &str) -> String {
    let full = format!("regcred-cluster-{name}");
    if full.len() <= 253 {
        return full;
    }
    format!("{}-{:08x}", &full[..244], schedule::seed(&full) as u32)
}

fn placement(ccr: &ClusterRegistryCredential, namespace: &str, name: &str, template: bool) -> Placement {
    Placement {
        namespace: namespace.to_string(),
        name: name.to_string(),
        owner: ccr.controller_owner_ref(&()).unwrap_or_default(),
        template: if template { ccr.spec.target.secret_template.clone().unwrap_or_default() } else { Default::default() },
        credential_label: (api::CLUSTER_CREDENTIAL_LABEL, ccr.metadata.uid.clone().unwrap_or_default()),
        output: Default::default(),
    }
}

fn subject(ccr: &ClusterRegistryCredential) -> Subject {
    Subject {
        about: ccr.object_ref(&()),
        labels: CredentialLabels { namespace: String::new(), name: ccr.name_any() },
        generation: ccr.metadata.generation,
        seed: schedule::seed(ccr.metadata.uid.as_deref().unwrap_or_default()),
        secret_name: ccr.secret_name(),
    }
}

pub async fn reconcile(ccr: Arc<ClusterRegistryCredential>, ctx: Arc<FleetContext>) -> Result<Action, Error> {
    // In passes, as the namespaced kind: the slot is waited for between them.
    attempt::in_passes(&ctx.base, (), |(), slot| Box::pin(pass(ccr.clone(), ctx.clone(), slot))).await
}

/// One pass under its deadline and the panic backstop.
async fn pass(ccr: Arc<ClusterRegistryCredential>, ctx: Arc<FleetContext>, slot: Option<Permit>) -> Result<Pass<()>, Error> {
    let name = ccr.name_any();
    // Writing hundreds of namespaces takes longer than one namespace's work.
    let deadline = ctx.base.settings.reconcile_timeout() + Duration::from_secs(120);
    match guard(&ctx.base, "", &name, deadline, Box::pin(reconcile_inner(&ccr, &ctx, slot))).await {
        Guarded::Done(r) => r,
        // A deadline is a failure like any other: recorded, backed off.
        Guarded::Deadline(d) => {
            let message = format!("the reconcile did not finish within {}s; retrying with backoff", d.as_secs());
            bounded(Box::pin(stopped(&ctx, &name, reason::MINT_FAILED, message))).await.map(Pass::Done)
        }
        Guarded::Panicked(panic) => {
            error!(name = %name, panic = %panic, "a fleet reconcile panicked; retrying later");
            Ok(Pass::Done(Action::requeue(FAILED_RETRY)))
        }
    }
}

/// A reconcile cut short by its deadline: recorded as a failure of the
/// credential, so status, backoff and metrics show it.
async fn stopped(ctx: &FleetContext, name: &str, why: &'static str, message: String) -> Result<Action, Error> {
    let api: Api<ClusterRegistryCredential> = Api::all(ctx.base.client.clone());
    let Some(ccr) = api.get_opt(name).await.map_err(kube_err("reading the ClusterRegistryCredential"))? else {
        return Ok(Action::await_change());
    };
    let now = (ctx.base.now)();
    let mut st = ccr.status.clone().unwrap_or_default();
    let prev = st.credential.clone();
    let inputs = prev.observed_inputs.clone().unwrap_or_default();
    let (credential, retry_at) = report::failed(&ctx.base, &subject(&ccr), &prev, &inputs, Failure { why, message, current_not_after: prev.not_after }, now).await;
    st.credential = credential;
    write_status(&api, &ccr, &st).await?;
    Ok(Action::requeue(schedule::requeue_after(now, retry_at)))
}

/// Apply the fleet's status (server-side apply), unless it is unchanged.
async fn write_status(api: &Api<ClusterRegistryCredential>, ccr: &ClusterRegistryCredential, st: &ClusterRegistryCredentialStatus) -> Result<(), Error> {
    if ccr.status.as_ref() == Some(st) {
        return Ok(());
    }
    let body = serde_json::json!({"apiVersion": "regcred.dev/v1alpha1", "kind": KIND, "status": st});
    api.patch_status(&ccr.name_any(), &PatchParams::apply(api::FIELD_MANAGER).force(), &Patch::Apply(body))
        .await
        .map_err(kube_err("writing status"))?;
    Ok(())
}

/// How soon a reconcile that found the caches still filling looks again.
const STORES_FILLING: Duration = Duration::from_millis(500);

/// Whether a cache has had its first full list, without waiting for it:
/// kube-runtime's `Store::wait_until_ready` keeps the waker of only the
/// last task that polled it, so of several reconciles that started before
/// the first list (an operator start with many credentials), all but one
/// would wait for ever, and their credentials would never be renewed.
fn filled<K>(store: &Store<K>) -> bool
where
    K: 'static + Clone + kube::runtime::reflector::Lookup,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok())
}

async fn reconcile_inner(cached: &ClusterRegistryCredential, ctx: &FleetContext, slot: Option<Permit>) -> Result<Pass<()>, Error> {
    // Deciding from half-filled caches would delete Secrets as "no longer
    // targeted": until all three are filled, look again shortly.
    if [filled(&ctx.namespaces), filled(&ctx.owned), filled(&ctx.accounts)].contains(&false) {
        return Ok(Pass::Done(Action::requeue(STORES_FILLING)));
    }
    let api: Api<ClusterRegistryCredential> = Api::all(ctx.base.client.clone());
    let reading = ctx.base.reading().await;
    let Some(ccr) = api.get_opt(&cached.name_any()).await.map_err(kube_err("reading the ClusterRegistryCredential"))? else {
        return Ok(Pass::Done(Action::await_change()));
    };
    drop(reading);
    if ccr.metadata.deletion_timestamp.is_some() {
        finalize(ctx, &api, &ccr).await?;
        return Ok(Pass::Done(Action::await_change()));
    }
    if !has_finalizer(&ccr) {
        set_finalizer(&api, &ccr, true).await.map_err(kube_err("adding the finalizer"))?;
    }
    let s = subject(&ccr);
    ctx.base.metrics.seen(&s.labels);
    let now = (ctx.base.now)();
    let step = match Box::pin(credential(ctx, &ccr, &s, now, slot)).await? {
        Decided::Step(step) => step,
        // The home Secret changed under the write: look again.
        Decided::Contended => return Ok(Pass::Done(Action::requeue(Duration::from_secs(1)))),
        Decided::NeedSlot(ask) => return Ok(Pass::NeedSlot { ask, next: () }),
    };
    // The fan-out reads and writes as much as a relist does: one turn of the gate.
    let _writing = ctx.base.reading().await;
    let fan = fan_out(ctx, &ccr, step.home.as_ref()).await;
    let mut st = fleet_status(&ccr, step.status, &fan, now);
    let prev = ccr.status.clone().unwrap_or_default().credential;
    report::clash(&ctx.base, &s, &prev, &mut st.credential, fan.clash.clone(), now).await;
    if ccr.status.as_ref().is_none_or(|p| p.failed_namespaces == 0) && st.failed_namespaces > 0 {
        let note = st.credential.conditions.iter().find(|c| c.type_ == api::DEGRADED).map(|c| c.message.clone());
        publish_to(&ctx.base, &s.about, EventType::Warning, "NamespacesFailed", note).await;
    }
    write_status(&api, &ccr, &st).await?;
    let ready = st.credential.conditions.iter().any(|c| c.type_ == api::READY && c.status == "True");
    ctx.base.metrics.ready.get_or_create(&s.labels).set(i64::from(ready));
    debug!(name = %s.labels.name, targets = st.target_namespaces, synced = st.synced_namespaces, failed = st.failed_namespaces, "fleet reconciled");
    let mut after = schedule::requeue_after(now, step.next);
    if st.failed_namespaces > 0 {
        after = after.min(FAILED_RETRY);
    }
    Ok(Pass::Done(Action::requeue(after)))
}

/// Deletion: garbage collection takes the Secrets; the ServiceAccount
/// entries are ours to remove.
async fn finalize(ctx: &FleetContext, api: &Api<ClusterRegistryCredential>, ccr: &ClusterRegistryCredential) -> Result<(), Error> {
    if !has_finalizer(ccr) {
        return Ok(());
    }
    let uid = ccr.metadata.uid.clone().unwrap_or_default();
    if revoke::settings(&ccr.spec.source).on_delete == Some(true) {
        let homes: Api<Secret> = Api::namespaced(ctx.base.client.clone(), &ctx.home_namespace);
        let home = homes.get_opt(&home_name(&ccr.name_any())).await.ok().flatten();
        let current = home.filter(|h| secret::is_controlled_by(&h.metadata, &uid, KIND)).as_ref().and_then(secret::password_of);
        let refs_ns = refs_namespace(ccr, &ctx.home_namespace);
        revoke::on_delete(&ctx.base, &ccr.spec.source, &refs_ns, ccr.object_ref(&()), (String::new(), ccr.name_any()), current).await;
    }
    // No namespace is targeted any more: every entry this credential owns goes.
    sync_accounts(ctx, ccr, &uid, &ccr.secret_name(), &BTreeSet::new(), &BTreeSet::new()).await?;
    ctx.keep_written(&uid, &BTreeSet::new());
    set_finalizer(api, ccr, false).await.map_err(kube_err("removing the finalizer"))
}

/// What a new mint depends on: the source (and where it reads) and the
/// renewal, not where the credential goes. A change of `target` or
/// `serviceAccounts` re-targets the current credential without a new mint.
fn source_fingerprint(ccr: &ClusterRegistryCredential) -> String {
    let spec = serde_json::json!([ccr.spec.source, ccr.spec.renewal, ccr.spec.source_namespace]);
    format!("s{:016x}", schedule::seed(&spec.to_string()))
}

/// The credential's part of a fleet reconcile.
struct Step {
    status: RegistryCredentialStatus,
    next: DateTime<Utc>,
    /// The home Secret after this step.
    home: Option<Secret>,
}

/// What the credential's part of a pass came to.
enum Decided {
    Step(Step),
    /// The home Secret changed under the write.
    Contended,
    /// A mint is due: a slot first (see `attempt::in_passes`).
    NeedSlot(crate::slots::Ask),
}

/// Decide from the home Secret, and when due, the shared attempt on it.
async fn credential(ctx: &FleetContext, ccr: &ClusterRegistryCredential, s: &Subject, now: DateTime<Utc>, slot: Option<Permit>) -> Result<Decided, Error> {
    let base = &*ctx.base;
    let (name, uid) = (ccr.name_any(), ccr.metadata.uid.clone().unwrap_or_default());
    let homes: Api<Secret> = Api::namespaced(base.client.clone(), &ctx.home_namespace);
    let home_secret = home_name(&name);
    let reading = base.reading().await;
    let home = homes.get_opt(&home_secret).await.map_err(kube_err("reading the home Secret"))?;
    let ours = |h: &Secret| secret::is_controlled_by(&h.metadata, &uid, KIND);
    let state = attempt::secret_state(home.as_ref(), ours);
    let refs_ns = refs_namespace(ccr, &ctx.home_namespace);
    let refs: Api<Secret> = Api::namespaced(base.client.clone(), &refs_ns);
    let inputs = attempt::inputs(&source_fingerprint(ccr), &ccr.spec.source, &refs, None).await?;
    let renew_request = api::pending_renew_request(&ccr.metadata, ccr.status.as_ref().map(|s| &s.credential));
    let mut prev = ccr.status.clone().unwrap_or_default().credential;
    drop(reading);
    let last_attempt = base.attempts.last("", &name);
    let seen = Seen { secret: state.clone(), desired_inputs: inputs.clone(), prev: &prev, renew_requested: renew_request.is_some(), last_attempt, seed: s.seed };
    let step = |status, next, home| Ok(Decided::Step(Step { status, next, home }));
    let why = match schedule::decide(now, &attempt::observed(seen, base.settings.min_mint_interval)) {
        Decision::Blocked => {
            let home_subject = Subject { secret_name: home_secret.clone(), ..subject(ccr) };
            return step(report::blocked(base, &home_subject, &prev, now).await, schedule::add(now, schedule::BLOCKED_RECHECK), None);
        }
        Decision::WaitUntil(at) | Decision::BackOffUntil(at) => {
            report::waiting(base, s, &prev, &state, at);
            return step(prev, at, home);
        }
        Decision::Mint(why) => why,
    };
    let work = crate::slots::Work::of(why, prev.last_rotation_time.is_some());
    let slot = match attempt::slot_for(base, attempt::ask("", &ccr.spec.source, work), slot) {
        Ok(slot) => slot,
        Err(ask) => return Ok(Decided::NeedSlot(ask)),
    };
    info!(name = %name, reason = ?why, "minting for the fleet");
    // A renew request is served by this attempt, whatever its outcome.
    if renew_request.is_some() {
        prev.renew_request_served = renew_request.clone();
    }
    let place = placement(ccr, &ctx.home_namespace, &home_secret, false);
    let render = |m: &crate::source::Minted, r: schedule::Renewal| secret::desired_at(&place, m, &inputs, r.at);
    let target = Target { secrets: &homes, name: &home_secret, existing: home.as_ref().map(|h| h.metadata.clone()), ours: &ours, render: &render };
    let who = Minter { refs_namespace: &refs_ns, name: &name, cluster_scoped: true, seed: s.seed, secrets_dir: None, key_name: None };
    let req = Request { who, source: &ccr.spec.source, renewal: &ccr.spec.renewal };
    match attempt::attempt(base, &req, &target, slot).await? {
        Outcome::Rotated { minted, renewal, written, at: now } => {
            let previous = home.as_ref().filter(|h| ours(h)).and_then(secret::password_of);
            revoke::after_rotation(base, &ccr.spec.source, &refs_ns, s.about.clone(), (String::new(), name.clone()), previous, &minted);
            step(report::rotated(base, s, &prev, &inputs, &minted, &renewal, now).await, renewal.at, Some(written))
        }
        Outcome::Failed { reason, message } => {
            let f = Failure { why: reason, message, current_not_after: attempt::current_not_after(&state) };
            let (st, retry_at) = report::failed(base, s, &prev, &inputs, f, now).await;
            step(st, retry_at, home)
        }
        Outcome::Contended => Ok(Decided::Contended),
    }
}

/// What the fan-out did.
struct Fan {
    targets: BTreeSet<String>,
    synced: i32,
    failures: Vec<NamespaceFailure>,
    /// ServiceAccount entries wanted but owned by another credential.
    clash: Option<String>,
}

/// Every target namespace gets a copy of the home Secret (when it holds a
/// usable credential); ServiceAccounts get the entry where the copy was
/// written; namespaces that left the selection lose both.
async fn fan_out(ctx: &FleetContext, ccr: &ClusterRegistryCredential, home: Option<&Secret>) -> Fan {
    let (name, uid, secret_name) = (ccr.name_any(), ccr.metadata.uid.clone().unwrap_or_default(), ccr.secret_name());
    let home_ok = home.filter(|h| secret::is_controlled_by(&h.metadata, &uid, KIND) && secret::read_annotations(h).intact);
    let targets: BTreeSet<String> = ctx
        .namespaces
        .state()
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| {
            let ns = n.metadata.name.clone()?;
            ccr.targets(&ns, &n.metadata.labels.clone().unwrap_or_default()).then_some(ns)
        })
        .collect();
    let mut fan = Fan { targets, synced: 0, failures: Vec::new(), clash: None };
    if let Some(home) = home_ok {
        let (ccr_ref, uid_ref, name_ref) = (ccr, uid.as_str(), secret_name.as_str());
        let writes = fan.targets.iter().cloned().map(|ns| async move { sync_secret(ctx, ccr_ref, uid_ref, name_ref, &ns, home).await });
        let results: Vec<Result<(), NamespaceFailure>> = futures::stream::iter(writes).buffer_unordered(WRITE_CONCURRENCY).collect().await;
        for r in results {
            match r {
                Ok(()) => fan.synced += 1,
                Err(f) => fan.failures.push(f),
            }
        }
    }
    // Namespaces that left the selection lose our Secret and entries (only ours).
    let ours = namespaces_with_our_secret(ctx, &uid, &home_name(&name));
    let leaving: BTreeSet<String> = ours.difference(&fan.targets).cloned().collect();
    // New entries only where our Secret was just written or found current:
    // never point a ServiceAccount at a Secret that failed or is someone
    // else's. A failure adds nothing and removes nothing (the previous
    // Secret is still there); entries go with their Secret only.
    let failed_ns: BTreeSet<&str> = fan.failures.iter().map(|f| f.namespace.as_str()).collect();
    let fed: BTreeSet<String> =
        if home_ok.is_some() { fan.targets.iter().filter(|n| !failed_ns.contains(n.as_str())).cloned().collect() } else { BTreeSet::new() };
    match sync_accounts(ctx, ccr, &uid, &secret_name, &fan.targets, &fed).await {
        Ok(synced) => fan.clash = synced.clash_message(&secret_name),
        Err(e) => {
            warn!(name = %name, error = %e, "updating ServiceAccounts failed; retrying");
            fan.failures.push(NamespaceFailure { namespace: String::new(), reason: "ServiceAccountUpdateFailed".into(), message: e.to_string() });
        }
    }
    for ns in &leaving {
        release_secret(ctx, ccr, &uid, &secret_name, ns).await;
    }
    ctx.keep_written(&uid, &fan.targets);
    // Messages go to status and Events: redacted as the attempt's are (an
    // admission policy refusing a copy may quote it).
    if !fan.failures.is_empty() {
        let values = home_ok.map(secret::values_in).unwrap_or_default();
        for f in &mut fan.failures {
            f.message = attempt::redact_values(&f.message, &values);
        }
    }
    fan.failures.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    fan
}

/// The fleet's status: the credential's, the counts, and Degraded.
fn fleet_status(ccr: &ClusterRegistryCredential, mut credential: RegistryCredentialStatus, fan: &Fan, now: DateTime<Utc>) -> ClusterRegistryCredentialStatus {
    let failed = i32::try_from(fan.failures.len()).unwrap_or(i32::MAX);
    let degraded = fan.failures.first().map(|f| {
        let more = if failed > 1 { format!(" (and {} more)", failed - 1) } else { String::new() };
        (f.reason.clone(), format!("{}: {}{more}", f.namespace, f.message))
    });
    credential.set_condition(api::Condition {
        type_: api::DEGRADED.into(),
        status: if degraded.is_some() { "True" } else { "False" }.into(),
        reason: degraded.as_ref().map(|d| d.0.clone()).unwrap_or_else(|| "AllNamespacesSynced".into()),
        message: degraded.as_ref().map(|d| d.1.clone()).unwrap_or_else(|| format!("{} namespaces hold the current credential", fan.synced)),
        last_transition_time: now,
        observed_generation: ccr.metadata.generation,
    });
    ClusterRegistryCredentialStatus {
        credential,
        target_namespaces: i32::try_from(fan.targets.len()).unwrap_or(i32::MAX),
        synced_namespaces: fan.synced,
        failed_namespaces: failed,
        failures: fan.failures.iter().take(MAX_LISTED_FAILURES).cloned().collect(),
    }
}

/// A UID no object can have: an owner reference to it is an owner that is gone.
const RELEASED_UID: &str = "00000000-0000-0000-0000-000000000000";

/// A namespace left the selection: hand our Secret there to the garbage
/// collector. Its owner reference is pointed at a UID no object has, so the
/// collector finds its owner gone and deletes it; regcred itself needs no
/// `delete` on Secrets. Conditional on the resourceVersion cached, so a
/// Secret someone changed meanwhile is looked at again first.
async fn release_secret(ctx: &FleetContext, ccr: &ClusterRegistryCredential, uid: &str, secret_name: &str, ns: &str) {
    let Some(meta) = ctx.owned.get(&ObjectRef::new(secret_name).within(ns)) else { return };
    if !secret::is_controlled_by(&meta.metadata, uid, KIND) {
        return;
    }
    let mut owner = ccr.controller_owner_ref(&()).unwrap_or_default();
    owner.uid = RELEASED_UID.into();
    owner.controller = Some(false);
    owner.block_owner_deletion = Some(false);
    let patch = serde_json::json!({"metadata": {
        "ownerReferences": [owner],
        "resourceVersion": meta.metadata.resource_version,
        "labels": {api::CLUSTER_CREDENTIAL_LABEL: null}
    }});
    let api: Api<Secret> = Api::namespaced(ctx.base.client.clone(), ns);
    match api.patch(secret_name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => {
            ctx.remember(uid, ns, None);
            info!(name = %ccr.name_any(), namespace = %ns, "namespace left the selection; its Secret goes to the garbage collector")
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => warn!(name = %ccr.name_any(), namespace = %ns, error = %crate::source::summarize_kube_error(&e), "releasing a Secret failed"),
    }
}

/// Namespaces where a Secret of this credential exists (from the cache).
fn namespaces_with_our_secret(ctx: &FleetContext, uid: &str, home: &str) -> BTreeSet<String> {
    ctx.owned
        .state()
        .iter()
        .filter(|m| m.metadata.labels.as_ref().and_then(|l| l.get(api::CLUSTER_CREDENTIAL_LABEL)).map(String::as_str) == Some(uid))
        .filter(|m| !(m.metadata.namespace.as_deref() == Some(ctx.home_namespace.as_str()) && m.metadata.name.as_deref() == Some(home)))
        .filter_map(|m| m.metadata.namespace.clone())
        .collect()
}

/// Copy the home Secret into one namespace, unless it is already there.
async fn sync_secret(
    ctx: &FleetContext,
    ccr: &ClusterRegistryCredential,
    uid: &str,
    secret_name: &str,
    ns: &str,
    home: &Secret,
) -> Result<(), NamespaceFailure> {
    let fail = |reason: &str, message: String| NamespaceFailure { namespace: ns.to_string(), reason: reason.into(), message };
    let desired = secret::copy_to(&placement(ccr, ns, secret_name, true), home)
        .ok_or_else(|| fail("InvalidResponse", "the home Secret holds no .dockerconfigjson".into()))?;
    let api: Api<Secret> = Api::namespaced(ctx.base.client.clone(), ns);
    let cached = ctx.owned.get(&ObjectRef::new(secret_name).within(ns));
    let existing = match cached {
        Some(m) if secret::is_controlled_by(&m.metadata, uid, KIND) => {
            if up_to_date(&m.metadata, &desired.metadata) && data_current(ctx, &api, uid, &m.metadata, &desired).await {
                return Ok(());
            }
            Some(m.metadata.clone())
        }
        // Labelled like ours but another owner: not ours to touch.
        Some(_) => return Err(fail(reason::SECRET_CONFLICT, conflict_message(secret_name))),
        None => None,
    };
    let written = |w: Secret| ctx.remember(uid, ns, w.metadata.resource_version.as_ref());
    match secret::write_over(&api, existing.as_ref(), desired.clone()).await {
        Ok(w) => Ok(written(w)),
        Err(WriteError::Conflict) => {
            // Someone's Secret of that name (not labelled as ours), or ours not cached yet.
            match api.get_opt(secret_name).await {
                Ok(Some(s)) if secret::is_controlled_by(&s.metadata, uid, KIND) => {
                    secret::write_over(&api, Some(&s.metadata), desired).await.map(written).map_err(|e| write_failure(ns, e))
                }
                Ok(Some(_)) => Err(fail(reason::SECRET_CONFLICT, conflict_message(secret_name))),
                Ok(None) => Err(fail("WriteFailed", "the Secret vanished while being written; retrying".into())),
                Err(e) => Err(fail("WriteFailed", crate::source::summarize_kube_error(&e))),
            }
        }
        Err(e) => Err(write_failure(ns, e)),
    }
}

/// Does the copy (at the cached version) hold the data we would write? A
/// version we wrote or checked says yes; any other is read and compared
/// (someone may have edited the data, which the metadata cache cannot show).
async fn data_current(ctx: &FleetContext, api: &Api<Secret>, uid: &str, cached: &kube::api::ObjectMeta, desired: &Secret) -> bool {
    let (Some(ns), Some(name)) = (cached.namespace.as_deref(), cached.name.as_deref()) else { return false };
    if cached.resource_version.is_some() && ctx.written_at(uid, ns) == cached.resource_version {
        return true;
    }
    match api.get_opt(name).await {
        Ok(Some(s)) if s.data == desired.data && s.type_ == desired.type_ => {
            ctx.remember(uid, ns, s.metadata.resource_version.as_ref());
            true
        }
        // Edited, gone or unreadable: write it (the write says which).
        _ => false,
    }
}

fn conflict_message(secret_name: &str) -> String {
    format!("Secret {secret_name} exists and is not owned by this ClusterRegistryCredential; regcred leaves it untouched")
}

fn write_failure(ns: &str, e: WriteError) -> NamespaceFailure {
    let reason = match e {
        WriteError::Rejected { .. } => reason::SECRET_REJECTED,
        WriteError::Conflict => reason::SECRET_CONFLICT,
        _ => "WriteFailed",
    };
    NamespaceFailure { namespace: ns.to_string(), reason: reason.into(), message: e.to_string() }
}

/// Do the cached labels and annotations already say what we would write?
/// (The data digest annotation stands for the data.)
fn up_to_date(have: &kube::api::ObjectMeta, want: &kube::api::ObjectMeta) -> bool {
    let sub = |w: &Option<BTreeMap<String, String>>, h: &Option<BTreeMap<String, String>>| {
        let h = h.clone().unwrap_or_default();
        w.iter().flatten().all(|(k, v)| h.get(k) == Some(v))
    };
    sub(&want.labels, &have.labels) && sub(&want.annotations, &have.annotations)
}

/// What the fleet wants for one ServiceAccount: in a target namespace and
/// selected, the entry where the copy is current (`fed`), else kept as it
/// is; anywhere else (namespace left the selection, not selected, the
/// credential deleted) its own entry goes.
fn want(selection: Option<&ServiceAccountSelection>, targets: &BTreeSet<String>, fed: &BTreeSet<String>, sa: &ServiceAccount) -> Want {
    let ns = sa.metadata.namespace.as_deref().unwrap_or_default();
    if !targets.contains(ns) || !serviceaccounts::selects(selection, sa) {
        Want::Gone
    } else if fed.contains(ns) {
        Want::Entry
    } else {
        Want::Hold
    }
}

/// The ServiceAccounts of target namespaces, and those anywhere that list
/// an entry this credential owns, brought in line with [`want`].
async fn sync_accounts(
    ctx: &FleetContext,
    ccr: &ClusterRegistryCredential,
    uid: &str,
    secret_name: &str,
    targets: &BTreeSet<String>,
    fed: &BTreeSet<String>,
) -> Result<serviceaccounts::Synced, Error> {
    let selection = ccr.spec.service_accounts.as_ref();
    let accounts: Vec<_> = ctx
        .accounts
        .state()
        .into_iter()
        .filter(|sa| sa.metadata.namespace.as_ref().is_some_and(|ns| targets.contains(ns)) || serviceaccounts::records_owner(sa, uid))
        .collect();
    serviceaccounts::sync(&ctx.base.client, &accounts, secret_name, uid, |sa| want(selection, targets, fed, sa))
        .await
        .map_err(|e| Error::Kube { step: "updating ServiceAccounts", source: e })
}

pub fn error_policy(ccr: Arc<ClusterRegistryCredential>, err: &Error, _ctx: Arc<FleetContext>) -> Action {
    warn!(name = %ccr.name_any(), error = %err, "fleet reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Where the cluster credentials' source Secrets are recorded.
struct Refs {
    index: Arc<ReferenceIndex>,
    home_namespace: String,
}

impl Refs {
    fn set(&self, c: &ClusterRegistryCredential) {
        let ns = refs_namespace(c, &self.home_namespace);
        self.index.set((String::new(), c.name_any()), &ns, crate::source::referenced_secrets(&c.spec.source));
    }
}

/// The cluster credentials, reflected into `writer` and recorded in the
/// reference index, their metric series and attempt memory dropped with them.
fn credential_stream(
    base: &Arc<Context>,
    ccrs: Api<ClusterRegistryCredential>,
    selector: Option<&str>,
    writer: reflector::store::Writer<ClusterRegistryCredential>,
    live: Store<ClusterRegistryCredential>,
    refs: Refs,
) -> impl futures::Stream<Item = Result<ClusterRegistryCredential, watcher::Error>> + Send + 'static {
    let mut config = watcher::Config::default();
    if let Some(sel) = selector {
        config = config.labels(sel);
    }
    let base = base.clone();
    watcher(ccrs, config)
        .default_backoff()
        .modify(|c| {
            c.managed_fields_mut().clear();
        })
        .reflect(writer)
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => refs.set(c),
            Ok(watcher::Event::Init) => refs.index.clear_kind(true),
            Ok(watcher::Event::Delete(c)) => {
                refs.index.remove(&(String::new(), c.name_any()));
                base.metrics.forget("", &c.name_any());
                base.attempts.forget("", &c.name_any());
            }
            Ok(watcher::Event::InitDone) => {
                let names: Vec<(String, String)> = live.state().iter().map(|c| (String::new(), c.name_any())).collect();
                base.metrics.retain_only(&names, true);
            }
            _ => {}
        })
        .touched_objects()
}

/// How the ClusterRegistryCredential controller runs.
pub struct Fleet {
    /// Where home Secrets live and, by default, what sources read.
    pub home_namespace: String,
    pub selector: Option<String>,
    /// Reconciles at once; 0: unbounded (what bounds the work is the
    /// attempts' slots and the reads gate, see `crate::slots`).
    pub concurrency: u16,
}

/// Run the ClusterRegistryCredential controller until `shutdown` resolves.
/// The credentials' source Secrets are kept in `index`; the names of those
/// whose source Secret changed come in on `triggered`.
pub async fn run(
    fleet: Fleet,
    client: Client,
    base: Arc<Context>,
    index: Arc<ReferenceIndex>,
    triggered: impl futures::Stream<Item = String> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Fleet { home_namespace, selector, concurrency } = fleet;
    let (ccr_reader, ccr_writer) = reflector::store();
    let refs = Refs { index, home_namespace: home_namespace.clone() };
    let ccr_stream = credential_stream(&base, Api::all(client.clone()), selector.as_deref(), ccr_writer, ccr_reader.clone(), refs);
    let (namespaces, ns_writer) = reflector::store();
    let ns_stream = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|n| {
            n.managed_fields_mut().clear();
        })
        .reflect(ns_writer)
        .touched_objects();
    let (owned, owned_writer) = reflector::store();
    let owned_stream = watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), watcher::Config::default().labels(api::CLUSTER_CREDENTIAL_LABEL))
        .default_backoff()
        .modify(|s| {
            s.managed_fields_mut().clear();
        })
        .reflect(owned_writer)
        .touched_objects();
    let (accounts, sa_writer) = reflector::store();
    let sa_stream = watcher(Api::<ServiceAccount>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|s| {
            s.managed_fields_mut().clear();
        })
        .reflect(sa_writer)
        .touched_objects();

    let ctx = Arc::new(FleetContext { base, namespaces, owned, accounts, home_namespace, written: Default::default() });
    let (all, with_accounts) = (ccr_reader.clone(), ccr_reader.clone());
    let every = move |store: &Store<ClusterRegistryCredential>, only_accounts: bool| -> Vec<ObjectRef<ClusterRegistryCredential>> {
        store
            .state()
            .iter()
            .filter(|c| !only_accounts || c.spec.service_accounts.is_some())
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect()
    };
    Controller::for_stream(ccr_stream, ccr_reader)
        .watches_stream(ns_stream, move |_| every(&all, false))
        .watches_stream(owned_stream, |s| {
            s.metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|o| o.kind == KIND)
                .map(|o| ObjectRef::new(&o.name))
                .collect::<Vec<_>>()
        })
        .watches_stream(sa_stream, move |_| every(&with_accounts, true))
        .reconcile_on(triggered.map(|name| ObjectRef::new(&name)))
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "fleet reconcile error");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reconciles that find a cache filling come back; once it is filled,
    /// every one of them sees it. (Waiting on it instead, as the fleet did,
    /// woke only the last of several waiters: counted here, so the reason
    /// for `filled` stays visible.)
    #[tokio::test]
    async fn every_reconcile_sees_a_filled_cache() {
        let (store, mut writer) = reflector::store::<Namespace>();
        assert!(!filled(&store), "an empty cache counted as filled");
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.wait_until_ready().await.is_ok() })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let woken = waiters.iter().filter(|w| w.is_finished()).count();
        eprintln!("Store::wait_until_ready woke {woken} of 4 waiters");
        for _ in 0..8 {
            assert!(filled(&store), "a filled cache was not seen");
        }
        for w in waiters {
            w.abort();
        }
    }

    #[test]
    fn home_names_stay_valid() {
        assert_eq!(home_name("ecr"), "regcred-cluster-ecr");
        let long = home_name(&"x".repeat(253));
        assert_eq!(long.len(), 253);
        assert_ne!(long, home_name(&format!("{}y", "x".repeat(252))));
    }

    #[test]
    fn up_to_date_compares_what_we_write() {
        let meta = |l: &[(&str, &str)], a: &[(&str, &str)]| kube::api::ObjectMeta {
            labels: Some(l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            annotations: Some(a.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        };
        let want = meta(&[("a", "1")], &[("regcred.dev/data-digest", "d1")]);
        assert!(up_to_date(&meta(&[("a", "1"), ("extra", "x")], &[("regcred.dev/data-digest", "d1"), ("kubectl", "y")]), &want));
        assert!(!up_to_date(&meta(&[("a", "1")], &[("regcred.dev/data-digest", "d0")]), &want));
        assert!(!up_to_date(&meta(&[], &[("regcred.dev/data-digest", "d1")]), &want));
    }
}
