//! The fleet's copies: the home Secret copied into every target namespace,
//! handed to the garbage collector where a namespace left the selection,
//! and the ServiceAccount entries where a copy was written.


use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::{self, ClusterRegistryCredential, NamespaceFailure, ServiceAccountSelection};
use crate::attempt;
use crate::context::Error;
use crate::secret::{self, WriteError};
use crate::serviceaccounts::{self, Want};
use crate::status::reason;

use super::{home_name, placement, FleetContext, KIND};

/// Namespaces written at once.
const WRITE_CONCURRENCY: usize = 16;

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
    pub(super) fn keep_written(&self, uid: &str, targets: &BTreeSet<String>) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if targets.is_empty() {
            w.remove(uid);
        } else if let Some(m) = w.get_mut(uid) {
            m.retain(|ns, _| targets.contains(ns));
        }
    }
}

/// What the fan-out did.
pub(super) struct Fan {
    pub(super) targets: BTreeSet<String>,
    pub(super) synced: i32,
    pub(super) failures: Vec<NamespaceFailure>,
    /// ServiceAccount entries wanted but owned by another credential.
    pub(super) clash: Option<String>,
}

/// Every target namespace gets a copy of the home Secret (when it holds a
/// usable credential); ServiceAccounts get the entry where the copy was
/// written; namespaces that left the selection lose both.
pub(super) async fn fan_out(ctx: &FleetContext, ccr: &ClusterRegistryCredential, home: Option<&Secret>) -> Fan {
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
pub(super) async fn sync_accounts(
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


#[cfg(test)]
mod tests {
    use super::*;

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
