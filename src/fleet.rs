//! ClusterRegistryCredential: one mint for the whole fleet, written to every
//! selected namespace, event-driven (namespaces, our Secrets and
//! ServiceAccounts are watched), and clean on the way out.
//!
//! The current credential lives in a *home* Secret in the operator's
//! namespace (owned by the credential): the schedule decides from it exactly
//! as for a namespaced credential, and every target namespace gets a copy of
//! it, so a namespace created later gets the current credential without a
//! new mint. Secrets in target namespaces carry a controller owner reference
//! to the cluster-scoped credential, so deleting it collects them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, error, info, warn};

use crate::api::{self, ClusterRegistryCredential, ClusterRegistryCredentialStatus, NamespaceFailure};
use crate::attempt::{inputs, mint, observed, redact, secret_state, Minter, Seen};
use crate::context::{contain_panic, kube_err, publish_to, Context, Error};
use crate::finalizer::{has_finalizer, set_finalizer};
use crate::metrics::CredentialLabels;
use crate::schedule::{self, Decision, SecretState};
use crate::secret::{self, Placement, WriteError};
use crate::source::SourceError;
use crate::status::{self, reason};
use crate::serviceaccounts;

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

pub async fn reconcile(ccr: Arc<ClusterRegistryCredential>, ctx: Arc<FleetContext>) -> Result<Action, Error> {
    let _in_flight = ctx.base.progress.begin();
    // Writing hundreds of namespaces takes longer than one namespace's work.
    let deadline = ctx.base.settings.reconcile_timeout() + Duration::from_secs(120);
    let started = std::time::Instant::now();
    let work = tracing::Instrument::instrument(tokio::time::timeout(deadline, reconcile_inner(&ccr, &ctx)), crate::context::reconcile_span("", &ccr.name_any()));
    let result = match contain_panic(work).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(Error::Deadline(deadline)),
        Err(panic) => {
            error!(name = %ccr.name_any(), panic = %panic, "a fleet reconcile panicked; retrying later");
            Ok(Action::requeue(FAILED_RETRY))
        }
    };
    ctx.base.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(cached: &ClusterRegistryCredential, ctx: &FleetContext) -> Result<Action, Error> {
    let base = &*ctx.base;
    let client = base.client.clone();
    // Deciding from half-filled caches would delete Secrets as "no longer targeted".
    for ready in [ctx.namespaces.wait_until_ready().await, ctx.owned.wait_until_ready().await, ctx.accounts.wait_until_ready().await] {
        if ready.is_err() {
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
    }
    let api: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let name = cached.name_any();
    let Some(ccr) = api.get_opt(&name).await.map_err(kube_err("reading the ClusterRegistryCredential"))? else {
        return Ok(Action::await_change());
    };
    let uid = ccr.metadata.uid.clone().unwrap_or_default();
    let secret_name = ccr.secret_name();
    if ccr.metadata.deletion_timestamp.is_some() {
        // Garbage collection takes the Secrets; the list entries are ours to remove.
        if has_finalizer(&ccr) {
            let ours = namespaces_with_our_secret(ctx, &uid, &home_name(&name));
            sync_accounts(ctx, &ccr, &secret_name, &BTreeSet::new(), &ours, false).await?;
            set_finalizer(&api, &ccr, false).await.map_err(kube_err("removing the finalizer"))?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer(&ccr) {
        set_finalizer(&api, &ccr, true).await.map_err(kube_err("adding the finalizer"))?;
    }

    let now = (base.now)();
    let refs_namespace = ccr.spec.source_namespace.clone().unwrap_or_else(|| ctx.home_namespace.clone());
    let prev_all = ccr.status.clone().unwrap_or_default();
    let mut prev = prev_all.credential.clone();
    let generation = ccr.metadata.generation;
    let seed = schedule::seed(&uid);
    let labels = CredentialLabels { namespace: String::new(), name: name.clone() };
    base.metrics.seen(&labels);

    // gather: the home Secret holds the current credential.
    let homes: Api<Secret> = Api::namespaced(client.clone(), &ctx.home_namespace);
    let home_secret = home_name(&name);
    let home = homes.get_opt(&home_secret).await.map_err(kube_err("reading the home Secret"))?;
    let state = secret_state(home.as_ref(), |s| secret::is_controlled_by(&s.metadata, &uid, KIND));
    let refs: Api<Secret> = Api::namespaced(client.clone(), &refs_namespace);
    let desired_inputs = inputs(&format!("g{}", generation.unwrap_or(0)), &ccr.spec.source, &refs, None).await?;
    let renew_request = api::pending_renew_request(&ccr.metadata, ccr.status.as_ref().map(|s| &s.credential));
    let observed = observed(
        Seen { secret: state.clone(), desired_inputs: desired_inputs.clone(), prev: &prev, renew_requested: renew_request.is_some(), seed },
        base.settings.min_mint_interval,
    );

    // decide and act on the credential itself
    let mut credential = prev.clone();
    let mut home_now = home.clone();
    let mut next = now + chrono::Duration::hours(1);
    match schedule::decide(now, &observed) {
        Decision::Blocked => {
            credential = status::conflict(&prev, generation, &home_secret, now);
            next = now + schedule::BLOCKED_RECHECK;
        }
        Decision::WaitUntil(at) | Decision::BackOffUntil(at) => next = at,
        Decision::Mint(why) => {
            if renew_request.is_some() {
                prev.renew_request_served = renew_request.clone();
                credential = prev.clone();
            }
            info!(name = %name, reason = ?why, "minting for the fleet");
            let current_not_after = match &state {
                SecretState::Ours(s) if s.intact => s.not_after,
                _ => None,
            };
            let who = Minter { refs_namespace: &refs_namespace, name: &name, cluster_scoped: true, seed, secrets_dir: None };
            let attempt = async {
                let (minted, renewal) = mint(base, &who, &ccr.spec.source, &ccr.spec.renewal, now).await?;
                let desired = secret::desired_at(&placement(&ccr, &ctx.home_namespace, &home_secret, false), &minted, &desired_inputs, renewal.at)
                    .map_err(|e| SourceError::InvalidResponse { endpoint: "source".into(), problem: e.to_string() })?;
                Ok::<_, SourceError>((minted, renewal, desired))
            }
            .await;
            let failure = match attempt {
                Err(e) => Some((e.category(), e.to_string())),
                Ok((minted, renewal, desired)) => match secret::write(&homes, home.as_ref(), desired).await {
                    Ok(written) => {
                        home_now = Some(written);
                        credential = status::rotated(&prev, generation, &desired_inputs, &secret_name, minted.registries(), minted.expires_at, renewal.at, now);
                        next = renewal.at;
                        base.metrics.rotations.get_or_create(&labels).inc();
                        if let Some(na) = minted.expires_at {
                            base.metrics.expiry.get_or_create(&labels).set(na.timestamp());
                        }
                        base.metrics.renewal.get_or_create(&labels).set(renewal.at.timestamp());
                        let until = minted.expires_at.map(|t| format!(", valid until {}", t.to_rfc3339())).unwrap_or_default();
                        publish_to(base, &ccr.object_ref(&()), EventType::Normal, reason::ROTATED, Some(format!("Minted a credential for the fleet{until}"))).await;
                        None
                    }
                    Err(WriteError::Conflict | WriteError::Stale) => return Ok(Action::requeue(Duration::from_secs(1))),
                    Err(e @ WriteError::Rejected { .. }) => Some((reason::SECRET_REJECTED, redact(&e.to_string(), Some(&minted)))),
                    Err(e) => return Err(e.into()),
                },
            };
            if let Some((why, message)) = failure {
                let failures = (prev.failed_attempts.max(0) as u32).saturating_add(1);
                let retry_at = schedule::add(now, schedule::backoff(failures, seed, now, current_not_after));
                warn!(name = %name, reason = why, error = %message, "mint failed");
                let same = prev.conditions.iter().any(|c| c.type_ == api::READY && c.status == "False" && c.reason == why && c.message.starts_with(&message));
                credential = status::failed(&prev, generation, &desired_inputs, why, message.clone(), Some(retry_at), now);
                next = retry_at;
                base.metrics
                    .failures
                    .get_or_create(&crate::metrics::FailureLabels { namespace: String::new(), name: name.clone(), reason: why.into() })
                    .inc();
                if !same {
                    publish_to(base, &ccr.object_ref(&()), EventType::Warning, reason::MINT_FAILED, Some(format!("{why}: {message}"))).await;
                }
            }
        }
    }

    // fan out: every target namespace gets a copy of the home Secret.
    let home_ok = home_now
        .as_ref()
        .filter(|h| secret::is_controlled_by(&h.metadata, &uid, KIND) && secret::read_annotations(h).intact);
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
    let mut failures: Vec<NamespaceFailure> = Vec::new();
    let mut synced = 0i32;
    if let Some(home) = home_ok {
        let (ccr_ref, uid_ref, name_ref) = (&ccr, uid.as_str(), secret_name.as_str());
        let writes: Vec<_> = targets
            .iter()
            .cloned()
            .map(|ns| async move { sync_secret(ctx, ccr_ref, uid_ref, name_ref, &ns, home).await })
            .collect();
        let results: Vec<Result<(), NamespaceFailure>> = futures::stream::iter(writes).buffer_unordered(WRITE_CONCURRENCY).collect().await;
        for r in results {
            match r {
                Ok(()) => synced += 1,
                Err(f) => failures.push(f),
            }
        }
    }
    // Namespaces that left the selection lose our Secret and entries (only ours).
    let ours = namespaces_with_our_secret(ctx, &uid, &home_name(&name));
    let leaving: BTreeSet<String> = ours.difference(&targets).cloned().collect();
    // Entries only where our Secret is: never point a ServiceAccount at a
    // Secret that failed or belongs to someone else.
    let failed_ns: BTreeSet<&str> = failures.iter().map(|f| f.namespace.as_str()).collect();
    let fed: BTreeSet<String> =
        if home_ok.is_some() { targets.iter().filter(|n| !failed_ns.contains(n.as_str())).cloned().collect() } else { BTreeSet::new() };
    if let Err(e) = sync_accounts(ctx, &ccr, &secret_name, &fed, &leaving.union(&targets).cloned().collect(), ccr.spec.service_accounts.is_some()).await {
        warn!(name = %name, error = %e, "updating ServiceAccounts failed; retrying");
        failures.push(NamespaceFailure { namespace: String::new(), reason: "ServiceAccountUpdateFailed".into(), message: e.to_string() });
    }
    for ns in &leaving {
        release_secret(ctx, &ccr, &uid, &secret_name, ns).await;
    }

    // report
    failures.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    let failed = failures.len() as i32;
    let mut st = ClusterRegistryCredentialStatus {
        credential,
        target_namespaces: targets.len() as i32,
        synced_namespaces: synced,
        failed_namespaces: failed,
        failures: failures.iter().take(MAX_LISTED_FAILURES).cloned().collect(),
    };
    let degraded = failures.first().map(|f| {
        let more = if failed > 1 { format!(" (and {} more)", failed - 1) } else { String::new() };
        (f.reason.clone(), format!("{}: {}{more}", f.namespace, f.message))
    });
    st.credential.set_condition(api::Condition {
        type_: api::DEGRADED.into(),
        status: if degraded.is_some() { "True" } else { "False" }.into(),
        reason: degraded.as_ref().map(|d| d.0.clone()).unwrap_or_else(|| "AllNamespacesSynced".into()),
        message: degraded.as_ref().map(|d| d.1.clone()).unwrap_or_else(|| format!("{synced} namespaces hold the current credential")),
        last_transition_time: now,
        observed_generation: generation,
    });
    if prev_all.failed_namespaces == 0 && failed > 0 {
        let note = degraded.as_ref().map(|d| d.1.clone());
        publish_to(base, &ccr.object_ref(&()), EventType::Warning, "NamespacesFailed", note).await;
    }
    if ccr.status.as_ref() != Some(&st) {
        let body = serde_json::json!({"apiVersion": "regcred.dev/v1alpha1", "kind": KIND, "status": st});
        api.patch_status(&name, &PatchParams::apply(api::FIELD_MANAGER).force(), &Patch::Apply(body))
            .await
            .map_err(kube_err("writing status"))?;
    }
    let ready = st.credential.conditions.iter().any(|c| c.type_ == api::READY && c.status == "True");
    base.metrics.ready.get_or_create(&labels).set(i64::from(ready));
    debug!(name = %name, targets = targets.len(), synced, failed, "fleet reconciled");
    let mut after = schedule::requeue_after(now, next);
    if failed > 0 {
        after = after.min(FAILED_RETRY);
    }
    Ok(Action::requeue(after))
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
        Ok(_) => info!(name = %ccr.name_any(), namespace = %ns, "namespace left the selection; its Secret goes to the garbage collector"),
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
            if up_to_date(&m.metadata, &desired.metadata) {
                return Ok(());
            }
            Some(m.metadata.clone())
        }
        // Labelled like ours but another owner: not ours to touch.
        Some(_) => return Err(fail(reason::SECRET_CONFLICT, conflict_message(secret_name))),
        None => None,
    };
    match secret::write_over(&api, existing.as_ref(), desired.clone()).await {
        Ok(_) => Ok(()),
        Err(WriteError::Conflict) => {
            // Someone's Secret of that name (not labelled as ours), or ours not cached yet.
            match api.get_opt(secret_name).await {
                Ok(Some(s)) if secret::is_controlled_by(&s.metadata, uid, KIND) => {
                    secret::write_over(&api, Some(&s.metadata), desired).await.map(|_| ()).map_err(|e| write_failure(ns, e))
                }
                Ok(Some(_)) => Err(fail(reason::SECRET_CONFLICT, conflict_message(secret_name))),
                Ok(None) => Err(fail("WriteFailed", "the Secret vanished while being written; retrying".into())),
                Err(e) => Err(fail("WriteFailed", crate::source::summarize_kube_error(&e))),
            }
        }
        Err(e) => Err(write_failure(ns, e)),
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

/// ServiceAccounts in `namespaces`: those in `fed` namespaces that
/// `serviceAccounts` selects get the entry; all others lose it if regcred
/// added it.
async fn sync_accounts(
    ctx: &FleetContext,
    ccr: &ClusterRegistryCredential,
    secret_name: &str,
    fed: &BTreeSet<String>,
    namespaces: &BTreeSet<String>,
    enabled: bool,
) -> Result<(), Error> {
    let selection = ccr.spec.service_accounts.as_ref().filter(|_| enabled);
    let mut first_error = None;
    for sa in ctx.accounts.state() {
        let Some(ns) = sa.metadata.namespace.as_deref() else { continue };
        if !namespaces.contains(ns) {
            continue;
        }
        let name = sa.metadata.name.clone().unwrap_or_default();
        let labels = sa.metadata.labels.clone().unwrap_or_default();
        let wanted = fed.contains(ns) && selection.is_some_and(|s| s.selects(&name, &labels));
        if serviceaccounts::change_for(&sa, secret_name, wanted) == serviceaccounts::Change::None {
            continue;
        }
        if let Err(e) = serviceaccounts::apply(&ctx.base.client, ns, &name, secret_name, wanted).await {
            first_error = first_error.or(Some(e));
        }
    }
    match first_error {
        Some(e) => Err(Error::Kube { step: "updating ServiceAccounts", source: e }),
        None => Ok(()),
    }
}

pub fn error_policy(ccr: Arc<ClusterRegistryCredential>, err: &Error, _ctx: Arc<FleetContext>) -> Action {
    warn!(name = %ccr.name_any(), error = %err, "fleet reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Run the ClusterRegistryCredential controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    base: Arc<Context>,
    home_namespace: String,
    selector: Option<String>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let mut config = watcher::Config::default();
    if let Some(sel) = &selector {
        config = config.labels(sel);
    }
    let ccrs: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let (ccr_reader, ccr_writer) = reflector::store();
    let (metrics, live) = (base.metrics.clone(), ccr_reader.clone());
    let ccr_stream = watcher(ccrs, config)
        .default_backoff()
        .modify(|c| {
            c.managed_fields_mut().clear();
        })
        .reflect(ccr_writer)
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Delete(c)) => metrics.forget("", &c.name_any()),
            Ok(watcher::Event::InitDone) => {
                let names: Vec<(String, String)> = live.state().iter().map(|c| (String::new(), c.name_any())).collect();
                metrics.retain_only(&names, true);
            }
            _ => {}
        })
        .touched_objects();

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

    let ctx = Arc::new(FleetContext { base, namespaces, owned, accounts, home_namespace });
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
        .with_config(ControllerConfig::default().concurrency(concurrency.max(1)))
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
