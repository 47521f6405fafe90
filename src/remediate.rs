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
//!
//! Two brakes keep this from churning a workload that no credential can fix:
//! a Pod whose image does not exist (the kubelet says `NotFound`, "not
//! found", "manifest unknown") is left alone; and the Pods of one top-level
//! owner (a ReplicaSet's Deployment, else the controller itself) are evicted
//! at most once per `--restart-stuck-pods-interval-seconds` (10 minutes by
//! default), however often the credential rotates: every stuck Pod of that
//! owner in one pass, then none until the interval has passed. What to do
//! is decided by a pure planner ([`plan`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, EvictParams, ListParams};
use crate::events::Type as EventType;
use kube::Resource;
use tracing::{info, warn};

use crate::context::Context;

/// Waiting reasons of a container whose image could not be pulled.
pub const PULL_FAILURES: &[&str] = &["ErrImagePull", "ImagePullBackOff"];

/// What the kubelet's waiting message says when the image itself is
/// missing, so that no credential can help. From kubelet 1.37 with
/// containerd 2: `rpc error: code = NotFound desc = failed to pull and
/// unpack image "…": failed to resolve reference "…": …: not found` (a
/// missing tag or repository on a registry that answers 404); registries
/// that name the error say `manifest unknown` or `name unknown`. A refused
/// pull says `401 Unauthorized` or `403 Forbidden`, none of these.
pub const IMAGE_MISSING: &[&str] = &["code = notfound", ": not found", "manifest unknown", "name unknown"];

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
    /// Left alone: their owner's Pods were evicted less than the interval ago.
    pub braked: u32,
}

impl Outcome {
    /// Nothing was done (braked Pods are only counted: no Event, no status).
    pub fn is_empty(&self) -> bool {
        Self { braked: 0, ..*self } == Self::default()
    }

    /// One line for an Event and the log.
    pub fn summary(&self, secret: &str) -> String {
        format!(
            "Secret {secret} holds a new credential: evicted {} Pod(s) stuck pulling so their controllers recreate them; {} left for a PodDisruptionBudget, {} bare Pod(s) told by an Event, {} eviction(s) failed, {} left until their owner's restart interval has passed",
            self.evicted, self.blocked, self.notified, self.failed, self.braked
        )
    }
}

/// How a stuck Pod is handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// It has a controlling owner: evict it; `owner` is the top-level
    /// owner's UID, the key of the brake.
    Evict { pod: String, owner: String },
    /// A bare Pod (its own top-level owner, `owner` its UID): an Event only.
    Notify { pod: String, owner: String },
    /// Its top-level owner's Pods were restarted (or it was told) too
    /// recently: left alone.
    Braked { pod: String, owner: String },
}

fn waiting_on_pull(pod: &Pod) -> impl Iterator<Item = &k8s_openapi::api::core::v1::ContainerStateWaiting> {
    let status = pod.status.as_ref();
    let all = status.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten();
    let init = status.and_then(|s| s.init_container_statuses.as_ref()).into_iter().flatten();
    all.chain(init)
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .filter(|w| w.reason.as_deref().is_some_and(|r| PULL_FAILURES.contains(&r)))
}

/// Does the kubelet's message say the image does not exist?
pub fn image_missing(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    IMAGE_MISSING.iter().any(|missing| m.contains(missing))
}

/// Is a container of this Pod waiting because its image could not be
/// pulled, for a reason a new credential can fix (not a missing image)?
pub fn stuck_pulling(pod: &Pod) -> bool {
    waiting_on_pull(pod).any(|w| !image_missing(w.message.as_deref().unwrap_or_default()))
}

/// The Pod's controlling owner reference, if any.
pub fn controller_of(pod: &Pod) -> Option<&OwnerReference> {
    pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true))
}

/// Does this Pod pull with `secret`: named in its own `imagePullSecrets`,
/// or its ServiceAccount is one of `accounts` (those that list the Secret)?
pub fn uses_secret(pod: &Pod, secret: &str, accounts: &BTreeSet<String>) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    let named = spec.image_pull_secrets.iter().flatten().any(|r| r.name == secret);
    let account = spec.service_account_name.as_deref().unwrap_or("default");
    named || accounts.contains(account)
}

/// What the planner is told besides the Pods.
pub struct Brakes<'a> {
    /// A controller's UID → its top-level owner's UID (a ReplicaSet → its
    /// Deployment); a controller not listed is its own top-level owner.
    pub top: &'a BTreeMap<String, String>,
    /// When Pods of a top-level owner (UID) were last evicted.
    pub last_eviction: &'a dyn Fn(&str) -> Option<DateTime<Utc>>,
    pub interval: chrono::Duration,
    pub now: DateTime<Utc>,
}

impl Brakes<'_> {
    fn held(&self, owner: &str) -> bool {
        (self.last_eviction)(owner).is_some_and(|t| crate::schedule::add(t, self.interval) > self.now)
    }
}

/// The Pods to handle, in name order: stuck pulling for a reason a
/// credential can fix, using the Secret, not already being deleted; those of
/// an owner restarted less than the interval ago (a bare Pod is its own
/// owner) are braked.
pub fn plan(pods: &[Pod], secret: &str, accounts: &BTreeSet<String>, brakes: &Brakes) -> Vec<Restart> {
    let mut out: Vec<Restart> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| stuck_pulling(p) && uses_secret(p, secret, accounts))
        .filter_map(|p| {
            let pod = p.metadata.name.clone()?;
            let controller = controller_of(p);
            let owner = match controller {
                Some(c) => brakes.top.get(&c.uid).cloned().unwrap_or_else(|| c.uid.clone()),
                None => p.metadata.uid.clone().unwrap_or_else(|| pod.clone()),
            };
            Some(match (brakes.held(&owner), controller) {
                (true, _) => Restart::Braked { pod, owner },
                (false, Some(_)) => Restart::Evict { pod, owner },
                (false, None) => Restart::Notify { pod, owner },
            })
        })
        .collect();
    out.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    out
}

fn name_of(r: &Restart) -> &str {
    match r {
        Restart::Evict { pod, .. } | Restart::Braked { pod, .. } | Restart::Notify { pod, .. } => pod,
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

/// ReplicaSets' top-level owners (their controlling Deployment), read for
/// the ReplicaSets that control stuck Pods.
async fn top_owners(ctx: &Context, ns: &str, pods: &[Pod]) -> BTreeMap<String, String> {
    let sets: BTreeSet<(String, String)> = pods
        .iter()
        .filter(|p| stuck_pulling(p))
        .filter_map(controller_of)
        .filter(|o| o.kind == "ReplicaSet" && o.api_version.starts_with("apps/"))
        .map(|o| (o.uid.clone(), o.name.clone()))
        .collect();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let mut top = BTreeMap::new();
    for (uid, name) in sets {
        match api.get_opt(&name).await {
            Ok(Some(rs)) if rs.metadata.uid.as_deref() == Some(uid.as_str()) => {
                if let Some(o) = rs.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)) {
                    top.insert(uid, o.uid.clone());
                }
            }
            Ok(_) => {}
            // Unreadable: the ReplicaSet stands for itself (a brake per
            // ReplicaSet is still a brake).
            Err(e) => warn!(namespace = %ns, error = %crate::source::summarize_kube_error(&e), "reading a ReplicaSet's owner failed"),
        }
    }
    top
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
    let top = top_owners(ctx, ns, &listed).await;
    let now = (ctx.now)();
    let interval = ctx.settings.restart_stuck_pods_interval;
    let last = |owner: &str| ctx.restarts.last(ns, owner);
    // Read once, before any eviction: every stuck Pod of an owner goes in
    // the same pass, then the brake holds them all.
    let steps = plan(&listed, secret, &with_secret, &Brakes { top: &top, last_eviction: &last, interval, now });
    let mut out = Outcome::default();
    for step in steps {
        match step {
            Restart::Evict { pod: name, owner } => match pods.evict(&name, &EvictParams::default()).await {
                Ok(_) => {
                    info!(namespace = %ns, pod = %name, "evicted a Pod stuck pulling");
                    ctx.restarts.evicted(ns, &owner, now, interval);
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
            Restart::Braked { pod: name, .. } => {
                info!(namespace = %ns, pod = %name, "a Pod stuck pulling is left: its owner's Pods were restarted less than the interval ago");
                out.braked += 1;
            }
            Restart::Notify { pod: name, owner } => {
                let Some(pod) = listed.iter().find(|p| p.metadata.name.as_deref() == Some(name.as_str())) else { continue };
                ctx.restarts.evicted(ns, &owner, now, interval);
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

    /// What the kubelet 1.37 with containerd 2 says (tests/it/pods.rs
    /// prints these from the test node), as it came.
    const REFUSED: &str = "failed to pull and unpack image \"127.0.0.1:40773/app:1\": failed to resolve reference \"127.0.0.1:40773/app:1\": pulling from host 127.0.0.1:40773 failed with status code [manifests 1]: 401 Unauthorized";
    const REFUSED_BACKOFF: &str = "Back-off pulling image \"127.0.0.1:40773/app:1\": ErrImagePull: failed to pull and unpack image \"127.0.0.1:40773/app:1\": failed to resolve reference \"127.0.0.1:40773/app:1\": pulling from host 127.0.0.1:40773 failed with status code [manifests 1]: 401 Unauthorized";
    const MISSING_TAG: &str = "rpc error: code = NotFound desc = failed to pull and unpack image \"127.0.0.1:40773/app:no-such-tag\": failed to resolve reference \"127.0.0.1:40773/app:no-such-tag\": 127.0.0.1:40773/app:no-such-tag: not found";
    const MISSING_REPO_BACKOFF: &str = "Back-off pulling image \"127.0.0.1:40773/no-such-repo:1\": ErrImagePull: rpc error: code = NotFound desc = failed to pull and unpack image \"127.0.0.1:40773/no-such-repo:1\": failed to resolve reference \"127.0.0.1:40773/no-such-repo:1\": 127.0.0.1:40773/no-such-repo:1: not found";

    fn pod_of(name: &str, controller: Option<&str>, secrets: &[&str], sa: Option<&str>, waiting: Option<(&str, &str)>, init: bool) -> Pod {
        let owners = match controller {
            Some(uid) => json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]),
            None => json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "u"}]),
        };
        let state = match waiting {
            Some((r, m)) => json!({"waiting": {"reason": r, "message": m}}),
            None => json!({"running": {}}),
        };
        let statuses = json!([{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": state}]);
        let status = if init { json!({"initContainerStatuses": statuses}) } else { json!({"containerStatuses": statuses}) };
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "ownerReferences": owners},
            "spec": {
                "containers": [{"name": "c", "image": "i"}],
                "imagePullSecrets": secrets.iter().map(|s| json!({"name": s})).collect::<Vec<_>>(),
                "serviceAccountName": sa,
            },
            "status": status,
        }))
        .unwrap()
    }

    fn pod(name: &str, owned: bool, secrets: &[&str], sa: Option<&str>, waiting: Option<&str>, init: bool) -> Pod {
        pod_of(name, owned.then_some("rs-uid"), secrets, sa, waiting.map(|w| (w, REFUSED)), init)
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn plan_free(pods: &[Pod], accounts: &BTreeSet<String>) -> Vec<Restart> {
        let top = BTreeMap::new();
        let never = |_: &str| None;
        plan(pods, "cred", accounts, &Brakes { top: &top, last_eviction: &never, interval: chrono::Duration::minutes(10), now: at("2026-12-03T12:00:00Z") })
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
        let evict = |p: &str| Restart::Evict { pod: p.into(), owner: "rs-uid".into() };
        assert_eq!(
            plan_free(&pods, &accounts),
            vec![evict("a-owned"), Restart::Notify { pod: "b-bare".into(), owner: "uid-b-bare".into() }, evict("f-through-sa"), evict("h-init")]
        );
        // Through the default ServiceAccount when that one lists the Secret.
        let default: BTreeSet<String> = ["default".to_string()].into();
        assert_eq!(plan_free(&pods[6..7], &default), vec![evict("g-other-sa")]);
        // A Pod already being deleted is left alone.
        let mut going = pods[0].clone();
        going.metadata.deletion_timestamp = serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap();
        assert!(plan_free(&[going], &accounts).is_empty());
    }

    #[test]
    fn a_missing_image_is_never_a_reason_to_restart() {
        let none = BTreeSet::new();
        for message in [MISSING_TAG, MISSING_REPO_BACKOFF, "manifest unknown: manifest unknown", "name unknown: repository name not known to registry"] {
            assert!(image_missing(message), "{message}");
            let p = pod_of("p", Some("rs"), &["cred"], None, Some(("ErrImagePull", message)), false);
            assert!(!stuck_pulling(&p), "{message}");
            assert!(plan_free(&[p], &none).is_empty());
        }
        for message in [REFUSED, REFUSED_BACKOFF, "authorization failed: no basic auth credentials", "pulling from host r failed with status code [manifests 1]: 403 Forbidden", ""] {
            assert!(!image_missing(message), "{message}");
            assert!(stuck_pulling(&pod_of("p", Some("rs"), &["cred"], None, Some(("ImagePullBackOff", message)), false)), "{message}");
        }
        // One container missing its image, another refused: the refused one can be helped.
        let mut two = pod_of("p", Some("rs"), &["cred"], None, Some(("ErrImagePull", MISSING_TAG)), false);
        let mut refused = two.status.as_ref().unwrap().container_statuses.clone().unwrap();
        refused[0].state.as_mut().unwrap().waiting.as_mut().unwrap().message = Some(REFUSED.into());
        two.status.as_mut().unwrap().container_statuses.as_mut().unwrap().extend(refused);
        assert!(stuck_pulling(&two));
    }

    #[test]
    fn one_restart_per_top_level_owner_per_interval() {
        let none = BTreeSet::new();
        let stuck = |name: &str, rs: Option<&str>| pod_of(name, rs, &["cred"], None, Some(("ImagePullBackOff", REFUSED)), false);
        // Two ReplicaSets of one Deployment (a rollout), a StatefulSet-like
        // controller of its own, a bare Pod.
        let pods = [stuck("a", Some("rs-old")), stuck("b", Some("rs-new")), stuck("c", Some("sts")), stuck("d", None)];
        let top: BTreeMap<String, String> = [("rs-old".to_string(), "deploy".to_string()), ("rs-new".to_string(), "deploy".to_string())].into();
        let now = at("2026-12-03T12:00:00Z");
        let interval = chrono::Duration::minutes(10);
        let last = |owner: &str| match owner {
            "deploy" => Some(at("2026-12-03T11:55:00Z")),
            "uid-d" => Some(at("2026-12-03T11:49:59Z")),
            _ => None,
        };
        let got = plan(&pods, "cred", &none, &Brakes { top: &top, last_eviction: &last, interval, now });
        assert_eq!(
            got,
            vec![
                Restart::Braked { pod: "a".into(), owner: "deploy".into() },
                Restart::Braked { pod: "b".into(), owner: "deploy".into() },
                Restart::Evict { pod: "c".into(), owner: "sts".into() },
                Restart::Notify { pod: "d".into(), owner: "uid-d".into() },
            ]
        );
        // Ten minutes after the last restart, the Deployment's Pods go again, together.
        let later = plan(&pods[..2], "cred", &none, &Brakes { top: &top, last_eviction: &last, interval, now: at("2026-12-03T12:05:00Z") });
        assert_eq!(later, vec![Restart::Evict { pod: "a".into(), owner: "deploy".into() }, Restart::Evict { pod: "b".into(), owner: "deploy".into() }]);
        // A last restart in the future (a clock step) holds until the interval
        // after it; a huge interval does not overflow.
        let future = |_: &str| Some(at("2026-12-03T13:00:00Z"));
        let held = plan(&pods[2..3], "cred", &none, &Brakes { top: &top, last_eviction: &future, interval: chrono::Duration::MAX, now });
        assert!(matches!(held[0], Restart::Braked { .. }));
    }

    #[test]
    fn the_outcome_of_a_braked_pass_is_empty() {
        assert!(Outcome { braked: 3, ..Default::default() }.is_empty());
        assert!(!Outcome { evicted: 1, braked: 3, ..Default::default() }.is_empty());
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
