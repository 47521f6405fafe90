//! Opt-in recovery of Pods stuck pulling (`spec.restartStuckPods` and the
//! operator flag `--restart-stuck-pods`).
//!
//! A rotated Secret helps a Pod that has not pulled yet, but a Pod already in
//! `ErrImagePull`/`ImagePullBackOff` waits out the kubelet's back-off (up to
//! five minutes) before it tries again. After regcred writes a new
//! credential, Pods of that namespace that wait on a pull and use the Secret
//! (in their `imagePullSecrets`, or through a ServiceAccount that lists it)
//! are restarted: a Pod with a controlling owner is evicted through the
//! Eviction API, so PodDisruptionBudgets hold and the controller makes a new
//! Pod that pulls at once; a bare Pod is never deleted, it gets an Event.
//! This runs once per written credential, so a Pod is restarted at most once
//! per rotation.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, EvictParams, ListParams};
use kube::runtime::events::EventType;
use kube::Resource;
use tracing::{info, warn};

use crate::context::Context;

/// Waiting reasons of a container whose image could not be pulled.
pub const PULL_FAILURES: &[&str] = &["ErrImagePull", "ImagePullBackOff"];

/// Event reason on a bare Pod (never deleted) after its Secret was renewed.
pub const BARE_POD_REASON: &str = "PullSecretRenewed";
/// Event reason on the credential after Pods were restarted.
pub const RESTARTED_REASON: &str = "RestartedPods";

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Evicted (their controller recreates them).
    pub evicted: u32,
    /// Left running because a PodDisruptionBudget refused the eviction.
    pub blocked: u32,
    /// Bare Pods told by an Event.
    pub notified: u32,
    /// Evictions that failed otherwise.
    pub failed: u32,
}

impl Outcome {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// One line for an Event and the log.
    pub fn summary(&self, secret: &str) -> String {
        format!(
            "Secret {secret} holds a new credential: evicted {} Pod(s) stuck pulling so their controllers recreate them; {} left for a PodDisruptionBudget, {} bare Pod(s) told by an Event, {} eviction(s) failed",
            self.evicted, self.blocked, self.notified, self.failed
        )
    }
}

/// How a stuck Pod is restarted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// It has a controlling owner: evict it.
    Evict(String),
    /// A bare Pod: an Event only.
    Notify(String),
}

/// Is any container of this Pod waiting because its image could not be pulled?
pub fn stuck_pulling(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else { return false };
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .any(|r| PULL_FAILURES.contains(&r))
}

/// Does this Pod pull with `secret`: named in its own `imagePullSecrets`,
/// or its ServiceAccount is one of `accounts` (those that list the Secret)?
pub fn uses_secret(pod: &Pod, secret: &str, accounts: &BTreeSet<String>) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    let named = spec.image_pull_secrets.iter().flatten().any(|r| r.name == secret);
    let account = spec.service_account_name.as_deref().unwrap_or("default");
    named || accounts.contains(account)
}

/// The Pods to restart, in name order: stuck pulling, using the Secret, not
/// already being deleted.
pub fn plan(pods: &[Pod], secret: &str, accounts: &BTreeSet<String>) -> Vec<Restart> {
    let mut out: Vec<Restart> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| stuck_pulling(p) && uses_secret(p, secret, accounts))
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            let owned = p.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true));
            Some(if owned { Restart::Evict(name) } else { Restart::Notify(name) })
        })
        .collect();
    out.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    out
}

fn name_of(r: &Restart) -> &str {
    match r {
        Restart::Evict(n) | Restart::Notify(n) => n,
    }
}

/// The ServiceAccounts of `accounts` whose `imagePullSecrets` list `secret`.
pub fn accounts_listing(accounts: &[ServiceAccount], secret: &str) -> BTreeSet<String> {
    accounts
        .iter()
        .filter(|sa| sa.image_pull_secrets.iter().flatten().any(|r| r.name == secret))
        .filter_map(|sa| sa.metadata.name.clone())
        .collect()
}

/// Restart the Pods of `ns` stuck pulling with `secret`. Errors are logged
/// and counted, never returned: the rotation itself has succeeded.
pub async fn restart_stuck(ctx: &Context, ns: &str, secret: &str) -> Outcome {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let listed = match pods.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            warn!(namespace = %ns, error = %crate::source::summarize_kube_error(&e), "listing Pods to restart failed");
            return Outcome::default();
        }
    };
    // Only when some Pod is stuck is it worth reading the ServiceAccounts.
    if !listed.iter().any(stuck_pulling) {
        return Outcome::default();
    }
    let with_secret = match accounts.list(&ListParams::default()).await {
        Ok(l) => accounts_listing(&l.items, secret),
        Err(e) => {
            warn!(namespace = %ns, error = %crate::source::summarize_kube_error(&e), "listing ServiceAccounts failed");
            BTreeSet::new()
        }
    };
    let mut out = Outcome::default();
    for step in plan(&listed, secret, &with_secret) {
        match step {
            Restart::Evict(name) => match pods.evict(&name, &EvictParams::default()).await {
                Ok(_) => {
                    info!(namespace = %ns, pod = %name, "evicted a Pod stuck pulling");
                    out.evicted += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 429 => {
                    info!(namespace = %ns, pod = %name, "a PodDisruptionBudget keeps a Pod stuck pulling");
                    out.blocked += 1;
                }
                // Gone already: nothing to restart.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    warn!(namespace = %ns, pod = %name, error = %crate::source::summarize_kube_error(&e), "evicting a Pod failed");
                    out.failed += 1;
                }
            },
            Restart::Notify(name) => {
                let Some(pod) = listed.iter().find(|p| p.metadata.name.as_deref() == Some(name.as_str())) else { continue };
                let note = format!(
                    "Secret {secret} holds a new credential; this Pod has no controller, so regcred does not delete it: it pulls again after the kubelet's back-off, or delete it to retry now"
                );
                crate::context::publish_to(ctx, &pod.object_ref(&()), EventType::Normal, BARE_POD_REASON, Some(note)).await;
                out.notified += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, owned: bool, secrets: &[&str], sa: Option<&str>, waiting: Option<&str>, init: bool) -> Pod {
        let owners = if owned {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}])
        } else {
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "u"}])
        };
        let state = match waiting {
            Some(r) => json!({"waiting": {"reason": r}}),
            None => json!({"running": {}}),
        };
        let statuses = json!([{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": state}]);
        let status = if init { json!({"initContainerStatuses": statuses}) } else { json!({"containerStatuses": statuses}) };
        serde_json::from_value(json!({
            "metadata": {"name": name, "ownerReferences": owners},
            "spec": {
                "containers": [{"name": "c", "image": "i"}],
                "imagePullSecrets": secrets.iter().map(|s| json!({"name": s})).collect::<Vec<_>>(),
                "serviceAccountName": sa,
            },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn only_pods_stuck_pulling_with_the_secret_are_restarted_and_bare_pods_only_told() {
        let accounts: BTreeSet<String> = ["builder".to_string()].into();
        let pods = vec![
            pod("a-owned", true, &["cred"], None, Some("ImagePullBackOff"), false),
            pod("b-bare", false, &["cred"], None, Some("ErrImagePull"), false),
            pod("c-running", true, &["cred"], None, None, false),
            pod("d-other-secret", true, &["other"], None, Some("ImagePullBackOff"), false),
            pod("e-crash", true, &["cred"], None, Some("CrashLoopBackOff"), false),
            pod("f-through-sa", true, &[], Some("builder"), Some("ErrImagePull"), false),
            pod("g-other-sa", true, &[], Some("default"), Some("ErrImagePull"), false),
            pod("h-init", true, &["cred"], None, Some("ImagePullBackOff"), true),
        ];
        assert_eq!(
            plan(&pods, "cred", &accounts),
            vec![
                Restart::Evict("a-owned".into()),
                Restart::Notify("b-bare".into()),
                Restart::Evict("f-through-sa".into()),
                Restart::Evict("h-init".into()),
            ]
        );
        // Through the default ServiceAccount when that one lists the Secret.
        let default: BTreeSet<String> = ["default".to_string()].into();
        assert_eq!(plan(&pods[6..7], "cred", &default), vec![Restart::Evict("g-other-sa".into())]);
        // A Pod already being deleted is left alone.
        let mut going = pods[0].clone();
        going.metadata.deletion_timestamp = serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap();
        assert!(plan(&[going], "cred", &accounts).is_empty());
    }

    #[test]
    fn accounts_listing_the_secret() {
        let sa = |name: &str, secrets: &[&str]| -> ServiceAccount {
            serde_json::from_value(json!({"metadata": {"name": name},
                "imagePullSecrets": secrets.iter().map(|s| json!({"name": s})).collect::<Vec<_>>()}))
            .unwrap()
        };
        let got = accounts_listing(&[sa("default", &["cred", "x"]), sa("other", &["x"])], "cred");
        assert_eq!(got, ["default".to_string()].into());
    }
}
