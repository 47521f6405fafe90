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
//!
//! Here: the reconcile (the credential's part through the shared attempt,
//! status, deletion). `fanout`: the copies in target namespaces and the
//! ServiceAccount entries. `run`: the watches and the controller.

mod fanout;
mod run;

pub use run::{run, Fleet};

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PartialObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use tracing::{debug, error, info, warn};

use self::fanout::{fan_out, sync_accounts, Fan};
use crate::api::{self, ClusterRegistryCredential, ClusterRegistryCredentialStatus, RegistryCredentialStatus};
use crate::attempt::{self, Minter, Outcome, Pass, Request, Seen, Target};
use crate::context::{bounded, guard, kube_err, publish_to, Context, Error, Guarded};
use crate::events::Type as EventType;
use crate::finalizer::{has_finalizer, set_finalizer};
use crate::metrics::CredentialLabels;
use crate::report::{self, Failure, Subject};
use crate::revoke;
use crate::schedule::{self, Decision};
use crate::secret::{self, Placement};
use crate::slots::Permit;
use crate::status::reason;

const KIND: &str = "ClusterRegistryCredential";
/// Failures listed in status; the rest are only counted.
const MAX_LISTED_FAILURES: usize = 10;
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


pub fn error_policy(ccr: Arc<ClusterRegistryCredential>, err: &Error, _ctx: Arc<FleetContext>) -> Action {
    warn!(name = %ccr.name_any(), error = %err, "fleet reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};

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
}
