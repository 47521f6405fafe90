//! Pods for real: a kubelet with containerd (tests/node/up.sh) pulls with the
//! Secrets regcred writes, from real registries on 127.0.0.1, and regcred
//! restarts Pods stuck pulling when asked to. One node per machine: these
//! tests take it in turn (see support/node.rs).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use super::ecr::aws_env;
use super::fleet::{create_cluster_credential, fleet_operator, labelled_namespace, unique, wait_synced, Namespaces};
use super::support::*;

const ACCOUNT: &str = "123456789012"; // moto's account for unknown keys
const TEAM_ACCOUNT: &str = "333333333333";

/// A registry accepting what moto's ECR mints for `account` (user `AWS`,
/// password `<account>-auth-token`), holding the runnable test image.
async fn ecr_app_registry(account: &str) -> (Registry, String) {
    let password = format!("{account}-auth-token");
    let reg = Registry::htpasswd(&[("AWS", &password)]).await;
    let image = reg.push_app_image("app", "AWS", &password);
    (reg, image)
}

/// An htpasswd registry holding the runnable test image, trusted by the node.
async fn trusted_registry(node: &Node, user: &str, password: &str) -> (Registry, String) {
    let reg = Registry::htpasswd(&[(user, password)]).await;
    let image = reg.push_app_image("app", user, password);
    node.trust(&reg);
    (reg, image)
}

async fn pod_uid(client: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<Pod>::namespaced(client.clone(), ns).get_opt(name).await.unwrap().and_then(|p| p.metadata.uid)
}

#[tokio::test]
async fn pods_pull_with_the_secret_of_every_source() {
    let Some(node) = node() else { return };
    let (client, ns) = setup("pods").await;
    let n = &ns.name;
    // basic on an htpasswd registry, over http and over https.
    let htpasswd = Registry::htpasswd(&[("alice", "alice-pw-7f3e1a")]).await;
    let basic_image = htpasswd.push_app_image("app", "alice", "alice-pw-7f3e1a");
    let certs = TestCerts::new();
    let tls = Registry::htpasswd_tls(&[("alice", "alice-pw-7f3e1a")], &certs).await;
    let tls_image = tls.push_app_image("app", "alice", "alice-pw-7f3e1a");
    // basic on a registry with distribution's own token server (which grants
    // each user the repositories under its name).
    let tokens = Registry::token_auth(&[("bob", "bob-pw-5c2d9e")]).await;
    let token_image = tokens.push_app_image("bob/app", "bob", "bob-pw-5c2d9e");
    // http and oauth2 on token-auth registries whose realm accepts what those
    // sources mint (tests/peers/realm.py).
    let oauth2 = OAuth2Server::start(3600).await;
    let realm = Registry::realm(Some(&oauth2), ("robot", "robot-pw-93b7c1"), 600, ("pusher", "pusher-pw-11aa22")).await;
    let realm_image = realm.push_app_image("app", "pusher", "pusher-pw-11aa22");
    // ECR on moto: the operator's identity and web identity.
    let (ecr_reg, ecr_image) = ecr_app_registry(ACCOUNT).await;
    let (team_reg, team_image) = ecr_app_registry(TEAM_ACCOUNT).await;
    let moto = MotoEcr::start(43_200, &[(ACCOUNT, format!("http://{}", ecr_reg.host)), (TEAM_ACCOUNT, format!("http://{}", team_reg.host))]).await;
    for r in [&htpasswd, &tls, &tokens, &realm, &ecr_reg, &team_reg] {
        node.trust(r);
    }
    let operator = Operator::start_with(n, &["--ecr-identity-namespaces", n, "--aws-endpoint-overrides", &moto.endpoint()], &aws_env());

    create_secret(&client, n, "alice", json!({"username": "alice", "password": "alice-pw-7f3e1a"})).await;
    create_secret(&client, n, "alice-wrong", json!({"username": "alice", "password": "not-alices-pw-0000"})).await;
    create_secret(&client, n, "ca", json!({"ca.crt": certs.pem("ca.crt")})).await;
    create_secret(&client, n, "bob", json!({"username": "bob", "password": "bob-pw-5c2d9e"})).await;
    create_secret(&client, n, "robot", json!({"username": "robot", "password": "robot-pw-93b7c1"})).await;
    create_secret(&client, n, "client", json!({"client_id": "regcred-basic", "client_secret": oauth2.secret})).await;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "puller", "annotations": {"regcred.dev/web-identity": "true"}}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), n).create(&PostParams::default(), &sa).await.unwrap();
    let ecr = |extra: Value| {
        let mut spec = json!({"region": "eu-west-1", "endpoint": moto.endpoint(), "stsEndpoint": moto.endpoint(), "allowInsecureHTTP": true});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"ecr": spec})
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("basic", json!({"basic": {"secretRef": {"name": "alice"}, "registries": [htpasswd.host], "allowInsecureHTTP": true}}), &basic_image),
        ("basic-https", json!({"basic": {"secretRef": {"name": "alice"}, "registries": [tls.host],
            "tls": {"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}}}}), &tls_image),
        ("basic-token-server", json!({"basic": {"secretRef": {"name": "bob"}, "registries": [tokens.host], "allowInsecureHTTP": true}}), &token_image),
        ("http", json!({"http": {"url": realm.credential_url(), "allowInsecureHTTP": true,
            "auth": {"basic": {"name": "robot"}}, "registries": [realm.host]}}), &realm_image),
        ("oauth2", json!({"oauth2": {"tokenURL": oauth2.token_url(), "allowInsecureHTTP": true,
            "clientSecretRef": {"name": "client"}, "registries": [realm.host]}}), &realm_image),
        ("ecr-operator", ecr(json!({})), &ecr_image),
        ("ecr-web-identity", ecr(json!({"roleArn": format!("arn:aws:iam::{TEAM_ACCOUNT}:role/team"),
            "webIdentity": {"serviceAccountName": "puller"}})), &team_image),
    ];
    for (name, source, _) in &cases {
        create_credential(&client, n, name, json!({"source": source})).await;
    }
    // Not verified at login (regcred would refuse to write it otherwise).
    create_credential(&client, n, "wrong", json!({"source": {"basic": {"secretRef": {"name": "alice-wrong"}, "registries": [htpasswd.host], "verify": false}}})).await;
    let mut leaks: Vec<String> = ["alice-pw-7f3e1a", "bob-pw-5c2d9e", "robot-pw-93b7c1", "not-alices-pw-0000", "operator-secret-key-cafe01"]
        .into_iter()
        .map(String::from)
        .collect();
    leaks.push(oauth2.secret.clone());
    leaks.push(format!("{ACCOUNT}-auth-token"));
    leaks.push(format!("{TEAM_ACCOUNT}-auth-token"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let mut times = Vec::new();
    for (name, _, image) in &cases {
        wait_ready(&client, n, name, "True", Some("Rotated"), Duration::from_secs(60)).await;
        let s = secrets.get(name).await.unwrap();
        let host = image.split('/').next().unwrap();
        leaks.push(password_in(&s, host));
        let (outcome, took, pod) = start_pod(&client, n, node.pod(&format!("pod-{name}"), image, &[name]), Duration::from_secs(60)).await;
        let events = event_messages(&client, n, &pod.uid().unwrap()).await;
        assert_eq!(outcome, PodOutcome::Running, "{name}: {events:?}");
        times.push(format!("{name} {:.2} s", took.as_secs_f64()));
    }
    eprintln!("Pod creation to Running: {}", times.join(", "));

    // The check can fail: a wrong password ends in ErrImagePull, 401 in the Events.
    wait_ready(&client, n, "wrong", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let (outcome, took, pod) = start_pod(&client, n, node.pod("pod-wrong", &basic_image, &["wrong"]), Duration::from_secs(60)).await;
    assert!(matches!(outcome, PodOutcome::PullFailed(ref r) if r == "ErrImagePull" || r == "ImagePullBackOff"), "{outcome:?}");
    let uid = pod.uid().unwrap();
    let events = wait_for(Duration::from_secs(30), "a Failed event naming 401", || async {
        let e = event_messages(&client, n, &uid).await;
        e.iter().any(|m| m.contains("401")).then_some(e)
    })
    .await;
    eprintln!("wrong password: {outcome:?} after {:.2} s; {}", took.as_secs_f64(), events.iter().find(|m| m.contains("401")).unwrap());
    eprintln!("kubelet/containerd RSS (KiB): {:?}; node started in {:.1} s", rss_kib(&node), node.started_in.as_secs_f64());
    assert_eq!(moto.calls("AssumeRoleWithWebIdentity").await, 1);
    assert_no_secrets(&client, n, &operator, &leaks).await;
}

#[tokio::test]
async fn a_pod_created_after_a_rotation_pulls_with_the_new_credential() {
    let Some(node) = node() else { return };
    let (client, ns) = setup("pods-rotation").await;
    let n = &ns.name;
    // 20 s tokens, and a registry that asks the OAuth2 server whether a token
    // is active: an old token stops working at the registry when it expires.
    let oauth2 = OAuth2Server::start(20).await;
    let realm = Registry::realm(Some(&oauth2), ("robot", "robot-pw-93b7c1"), 600, ("pusher", "pusher-pw-11aa22")).await;
    let image = realm.push_app_image("app", "pusher", "pusher-pw-11aa22");
    node.trust(&realm);
    let operator = Operator::start(n);
    create_secret(&client, n, "client", json!({"client_id": "regcred-basic", "client_secret": oauth2.secret})).await;
    create_credential(&client, n, "cred", json!({"source": {"oauth2": {"tokenURL": oauth2.token_url(), "allowInsecureHTTP": true,
        "clientSecretRef": {"name": "client"}, "registries": [realm.host]}}})).await;
    wait_ready(&client, n, "cred", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let before = secrets.get("cred").await.unwrap();
    let old = password_in(&before, &realm.host);
    let not_after = annotation_time(&before, "regcred.dev/not-after");
    let (outcome, _, _) = start_pod(&client, n, node.pod("before", &image, &["cred"]), Duration::from_secs(60)).await;
    assert_eq!(outcome, PodOutcome::Running);

    // Past the old token's expiry: it no longer pulls, the Secret holds a new one.
    let wait = (not_after - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    assert!(!oauth2.active(&old).await, "the old token is still active");
    let refused = skopeo_pull_creds("regcred", &old, &image);
    assert!(refused.is_err(), "the registry still accepts the expired token");
    let after = secrets.get("cred").await.unwrap();
    let new = password_in(&after, &realm.host);
    assert_ne!(new, old, "the Secret was not rotated before the old token expired");
    assert_eq!(after.uid(), before.uid(), "the Secret was replaced, not updated");
    let (outcome, took, pod) = start_pod(&client, n, node.pod("after", &image, &["cred"]), Duration::from_secs(60)).await;
    let events = event_messages(&client, n, &pod.uid().unwrap()).await;
    assert_eq!(outcome, PodOutcome::Running, "{events:?}");
    eprintln!("after the rotation: the old token refused by the registry, a new Pod Running in {:.2} s", took.as_secs_f64());
    assert_no_secrets(&client, n, &operator, &[oauth2.secret.clone(), old, new]).await;
}

#[tokio::test]
async fn a_pod_pulls_through_the_service_account_a_cluster_credential_patched() {
    let Some(node) = node() else { return };
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "pods-fleet-home").await;
    let suite = format!("pods-fleet-{}", std::process::id());
    let label = format!("pods-fleet-{}", std::process::id());
    let (reg, image) = trusted_registry(&node, "carol", "carol-pw-4d4d4d").await;
    let operator = fleet_operator(&home.name, &suite, &[], &[]);
    create_secret(&client, &home.name, "carol", json!({"username": "carol", "password": "carol-pw-4d4d4d"})).await;
    let mut made = Namespaces(Vec::new());
    let target = labelled_namespace(&client, "pods-fleet", json!({"regcred-test.dev/pods-fleet": label}), &mut made).await;
    let name = unique("pods-fleet");
    create_cluster_credential(&client, &name, &suite, json!({
        "source": {"basic": {"secretRef": {"name": "carol"}, "registries": [reg.host], "allowInsecureHTTP": true}},
        "target": {"namespaceSelector": {"matchLabels": {"regcred-test.dev/pods-fleet": label}}, "secretName": "fleet-pull"},
        "serviceAccounts": {"names": ["default"]}
    }))
    .await
    .unwrap();
    wait_synced(&client, &name, 1, 0, Duration::from_secs(60)).await;
    wait_for(Duration::from_secs(30), "the default ServiceAccount to list fleet-pull", || async {
        let sa = Api::<ServiceAccount>::namespaced(client.clone(), &target).get_opt("default").await.ok()??;
        sa.image_pull_secrets.iter().flatten().any(|r| r.name == "fleet-pull").then_some(())
    })
    .await;
    // No imagePullSecrets of its own: admission copies the ServiceAccount's.
    let (outcome, took, pod) = start_pod(&client, &target, node.pod("through-sa", &image, &[]), Duration::from_secs(60)).await;
    let names: Vec<String> = pod.spec.as_ref().unwrap().image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect();
    assert_eq!(names, vec!["fleet-pull".to_string()], "the Pod's pull Secrets came from its ServiceAccount");
    assert_eq!(outcome, PodOutcome::Running);
    eprintln!("through the patched default ServiceAccount: Running in {:.2} s", took.as_secs_f64());
    assert_no_secrets(&client, &target, &operator, &["carol-pw-4d4d4d".into()]).await;
}

/// A Deployment of one Pod on the node, pulling with `secret`.
fn deployment(node: &Node, name: &str, image: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": node.pod_spec(image, &[secret])},
        }
    })
}

async fn create_json<K>(client: &Client, ns: &str, v: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let obj: K = serde_json::from_value(v).unwrap();
    Api::<K>::namespaced(client.clone(), ns).create(&PostParams::default(), &obj).await.unwrap();
}

/// The Pods of a Deployment (by its `app` label).
async fn pods_of(client: &Client, ns: &str, app: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("app={app}"))).await.unwrap().items
}

/// Pull attempts the kubelet has made for this Pod (the `Pulling` Event's count).
async fn pull_attempts(client: &Client, ns: &str, uid: &str) -> i32 {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
    api.list(&lp).await.unwrap().items.iter().filter(|e| e.reason.as_deref() == Some("Pulling")).map(|e| e.count.unwrap_or(1)).sum()
}

#[tokio::test]
async fn stuck_pods_are_restarted_when_the_source_comes_back() {
    let Some(node) = node() else { return };
    let (client, ns) = setup("pods-remedy").await;
    let n = &ns.name;
    let (reg, image) = trusted_registry(&node, "dave", "dave-pw-8e8e8e").await;
    let operator = Operator::start_with(n, &["--restart-stuck-pods"], &[]);
    // The source Secret does not exist yet: the source fails, no pull Secret.
    let source = json!({"basic": {"secretRef": {"name": "dave"}, "registries": [reg.host], "allowInsecureHTTP": true}});
    create_credential(&client, n, "on", json!({"source": source, "restartStuckPods": true})).await;
    create_credential(&client, n, "off", json!({"source": source})).await;
    create_credential(&client, n, "guarded", json!({"source": source, "restartStuckPods": true})).await;
    for c in ["on", "off", "guarded"] {
        wait_ready(&client, n, c, "False", None, Duration::from_secs(60)).await;
    }
    create_json::<PodDisruptionBudget>(&client, n, json!({"metadata": {"name": "guarded"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "app-guarded"}}}})).await;
    for (app, secret) in [("app-on", "on"), ("app-off", "off"), ("app-guarded", "guarded")] {
        create_json::<Deployment>(&client, n, deployment(&node, app, &image, secret)).await;
    }
    create_json::<Pod>(&client, n, node.pod("bare", &image, &["on"])).await;
    // Every Pod stuck pulling, and the kubelet's back-off past its first steps.
    let stuck = |p: &Pod| matches!(pod_outcome(p), Some(PodOutcome::PullFailed(_)));
    let mut before = std::collections::BTreeMap::new();
    for app in ["app-on", "app-off", "app-guarded", "bare"] {
        let pod = wait_for(Duration::from_secs(60), &format!("{app} stuck pulling"), || async {
            pods_of(&client, n, app).await.into_iter().find(|p| stuck(p))
        })
        .await;
        before.insert(app, pod.uid().unwrap());
    }
    wait_for(Duration::from_secs(90), "three pull attempts of app-on", || async {
        (pull_attempts(&client, n, &before["app-on"]).await >= 3).then_some(())
    })
    .await;
    let attempts = pull_attempts(&client, n, &before["app-on"]).await;
    // The kubelet's image back-off: 10 s, doubling per failure, at most 300 s.
    let backoff = (10u64 << (attempts - 1).clamp(0, 5)).min(300);

    // The source comes back.
    let fixed = Instant::now();
    create_secret(&client, n, "dave", json!({"username": "dave", "password": "dave-pw-8e8e8e"})).await;
    let running = wait_for(Duration::from_secs(60), "app-on to run again", || async {
        pods_of(&client, n, "app-on").await.into_iter().find(|p| pod_outcome(p) == Some(PodOutcome::Running))
    })
    .await;
    let recovered = fixed.elapsed();
    assert_ne!(running.uid().unwrap(), before["app-on"], "app-on recovered without a new Pod");
    eprintln!(
        "remediation: app-on Running {:.2} s after the source came back; the kubelet had tried {attempts} times, its next back-off step {backoff} s",
        recovered.as_secs_f64()
    );
    let cr = wait_for(Duration::from_secs(30), "on's status to count the restart", || async {
        let cr = Api::<regcred::api::RegistryCredential>::namespaced(client.clone(), n).get("on").await.ok()?;
        (cr.status.as_ref()?.restarted_pods == Some(1)).then_some(cr)
    })
    .await;
    assert!(cr.ready().is_some_and(|c| c.status == "True"));
    // Off: nothing deleted. Bare: an Event, never deleted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pod_uid(&client, n, &pods_of(&client, n, "app-off").await[0].name_any()).await.as_deref(), Some(before["app-off"].as_str()));
    assert_eq!(pod_uid(&client, n, "bare").await.as_deref(), Some(before["bare"].as_str()), "a bare Pod was deleted");
    let bare_events = event_messages(&client, n, &before["bare"]).await;
    assert!(bare_events.iter().any(|m| m.contains("does not delete it")), "{bare_events:?}");
    // Through the Eviction API, the one that consults PodDisruptionBudgets.
    // The API lets a Pending Pod go whatever its budget says (it is not
    // serving), and a Pod stuck on its first pull is Pending: so the guarded
    // Pod is evicted too. A budget blocks only a Pod that ran and then failed
    // to pull again (counted as `blocked`, not exercised here).
    let guarded_cr = wait_for(Duration::from_secs(30), "guarded's status to count the restart", || async {
        let cr = Api::<regcred::api::RegistryCredential>::namespaced(client.clone(), n).get("guarded").await.ok()?;
        (cr.status.as_ref()?.restarted_pods == Some(1)).then_some(cr)
    })
    .await;
    assert!(guarded_cr.ready().is_some_and(|c| c.status == "True"));
    if let Some(evictions) = audit_entries(n, "eviction") {
        let evicted: std::collections::BTreeSet<&str> = ["app-on", "app-guarded"]
            .into_iter()
            .filter(|app| evictions.iter().any(|l| l.contains(r#""verb":"create""#) && l.contains(&format!(r#""name":"{app}-"#))))
            .collect();
        assert_eq!(evicted.len(), 2, "evictions in the audit log: {evictions:?}");
        assert!(!evictions.iter().any(|l| l.contains("app-off") || l.contains(r#""name":"bare""#)), "{evictions:?}");
    }
    let metrics = reqwest::get(format!("http://{}/metrics", operator.metrics_address().await)).await.unwrap().text().await.unwrap();
    for line in [
        format!(r#"regcred_pod_restarts_total{{namespace="{n}",name="on",result="evicted"}} 1"#),
        format!(r#"regcred_pod_restarts_total{{namespace="{n}",name="on",result="notified"}} 1"#),
        format!(r#"regcred_pod_restarts_total{{namespace="{n}",name="guarded",result="evicted"}} 1"#),
    ] {
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }
    assert!(!metrics.contains(&format!(r#"namespace="{n}",name="off",result="#)), "off restarted Pods");
    // Once per Pod per rotation: the next reconciles restart nothing more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = reqwest::get(format!("http://{}/metrics", operator.metrics_address().await)).await.unwrap().text().await.unwrap();
    assert!(again.contains(&format!(r#"regcred_pod_restarts_total{{namespace="{n}",name="on",result="evicted"}} 1"#)));
    // Without remediation the same Pod waits out the kubelet's back-off.
    let off = wait_for(Duration::from_secs(330), "app-off to run after its back-off", || async {
        pods_of(&client, n, "app-off").await.into_iter().find(|p| pod_outcome(p) == Some(PodOutcome::Running))
    })
    .await;
    assert_eq!(off.uid().as_deref(), Some(before["app-off"].as_str()));
    eprintln!("without remediation: app-off Running {:.1} s after the source came back (same Pod)", fixed.elapsed().as_secs_f64());
    assert_no_secrets(&client, n, &operator, &["dave-pw-8e8e8e".into()]).await;
}

/// A `kubernetes.io/dockerconfigjson` Secret for one registry, made by the test.
async fn pull_secret(client: &Client, ns: &str, name: &str, host: &str, user: &str, password: &str) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = json!({"auths": {host: {"username": user, "password": password, "auth": auth}}}).to_string();
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config)}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &s).await.unwrap();
}

/// The remediation's brake reads the kubelet's waiting messages: a missing
/// image is no reason to restart a Pod, a refused pull is. The messages are
/// the real kubelet's and containerd's, not strings the test made up.
#[tokio::test]
async fn the_kubelets_messages_tell_a_missing_image_from_a_refused_pull() {
    let Some(node) = node() else { return };
    let (client, ns) = setup("pods-missing").await;
    let n = &ns.name;
    let (reg, image) = trusted_registry(&node, "erin", "erin-pw-6b6b6b").await;
    pull_secret(&client, n, "good", &reg.host, "erin", "erin-pw-6b6b6b").await;
    pull_secret(&client, n, "bad", &reg.host, "erin", "not-erins-password").await;
    let cases = [
        ("missing-tag", format!("{}/app:no-such-tag", reg.host), "good", false),
        ("missing-repo", format!("{}/no-such-repo:1", reg.host), "good", false),
        ("refused", image.clone(), "bad", true),
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    for (name, image, secret, _) in &cases {
        let pod: Pod = serde_json::from_value(node.pod(name, image, &[secret])).unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    // Each case in both waiting states the kubelet reports.
    for (name, _, _, restart) in &cases {
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !(seen.contains("ErrImagePull") && seen.contains("ImagePullBackOff")) {
            assert!(Instant::now() < deadline, "{name}: saw only {seen:?} in 120 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(p) = pods.get(name).await else { continue };
            let Some(w) = p.status.as_ref().and_then(|s| s.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.clone()) else { continue };
            let Some(reason) = w.reason.clone() else { continue };
            if !matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff") {
                continue;
            }
            if seen.insert(reason.clone()) {
                eprintln!("kubelet: {name}: {reason}: {}", w.message.clone().unwrap_or_default());
                assert_eq!(regcred::remediate::stuck_pulling(&p), *restart, "{name} in {reason}: {:?}", w.message);
            }
        }
    }
}

/// A Deployment of one Pod that no scheduler places (its node selector
/// matches no node), pulling with `secret`: its status is the test's to set.
fn unplaced_deployment(name: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "nodeSelector": {"regcred-test.dev/no-such-node": "true"},
                "terminationGracePeriodSeconds": 0,
                "imagePullSecrets": [{"name": secret}],
                "containers": [{"name": "app", "image": format!("registry.example.com/{name}:1")}],
            }},
        }
    })
}

/// Put every Pod of `app` that does not say so yet into `ImagePullBackOff`
/// with `message` (as the kubelet would); the UIDs seen so far.
async fn keep_stuck(client: &Client, ns: &str, app: &str, message: &str, seen: &mut std::collections::BTreeSet<String>) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    for p in pods_of(client, ns, app).await {
        let Some(uid) = p.uid() else { continue };
        seen.insert(uid);
        if p.metadata.deletion_timestamp.is_some() || pod_outcome(&p).is_some() {
            continue;
        }
        let status = json!({"status": {"containerStatuses": [{"name": "app", "image": format!("registry.example.com/{app}:1"), "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": message}}}]}});
        let _ = api.patch_status(&p.name_any(), &kube::api::PatchParams::default(), &kube::api::Patch::Merge(status)).await;
    }
}

/// With 5 s tokens a credential rotates every few seconds; a Deployment's
/// Pod stuck pulling with its Secret is restarted once, not on every
/// rotation; a Pod whose image does not exist is never restarted.
#[tokio::test]
async fn short_lived_tokens_restart_a_stuck_deployment_once() {
    let (client, ns) = setup("pods-brake").await;
    let n = &ns.name;
    let server = OAuth2Server::start(5).await;
    let operator = Operator::start_with(n, &["--restart-stuck-pods", "--min-mint-interval-seconds=2"], &[]);
    create_secret(&client, n, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    create_credential(&client, n, "cred", json!({"source": {"oauth2": {
        "tokenURL": server.token_url(), "allowInsecureHTTP": true,
        "clientSecretRef": {"name": "client"}, "registries": ["registry.example.com"]
    }}, "restartStuckPods": true})).await;
    wait_ready(&client, n, "cred", "True", None, Duration::from_secs(60)).await;
    for app in ["refused", "missing"] {
        create_json::<Deployment>(&client, n, unplaced_deployment(app, "cred")).await;
    }
    // The kubelet's own words (see the_kubelets_messages_tell_a_missing_image_from_a_refused_pull).
    let refused = "Back-off pulling image \"registry.example.com/refused:1\": ErrImagePull: failed to pull and unpack image \"registry.example.com/refused:1\": failed to resolve reference \"registry.example.com/refused:1\": pulling from host registry.example.com failed with status code [manifests 1]: 401 Unauthorized";
    let missing = "Back-off pulling image \"registry.example.com/missing:1\": ErrImagePull: rpc error: code = NotFound desc = failed to pull and unpack image \"registry.example.com/missing:1\": failed to resolve reference \"registry.example.com/missing:1\": registry.example.com/missing:1: not found";
    let (mut refused_pods, mut missing_pods) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let (before, _) = server.stats().await;
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        keep_stuck(&client, n, "refused", refused, &mut refused_pods).await;
        keep_stuck(&client, n, "missing", missing, &mut missing_pods).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (after, _) = server.stats().await;
    let metrics = reqwest::get(format!("http://{}/metrics", operator.metrics_address().await)).await.unwrap().text().await.unwrap();
    let count = |result: &str| -> u64 {
        let key = format!(r#"regcred_pod_restarts_total{{namespace="{n}",name="cred",result="{result}"}} "#);
        metrics.lines().find_map(|l| l.strip_prefix(&key)).map(|v| v.trim().parse().unwrap()).unwrap_or(0)
    };
    let (evicted, braked) = (count("evicted"), count("braked"));
    eprintln!(
        "brake: {} token requests in 60 s; the refused Deployment had {} Pods, the missing-image one {}; evicted {evicted}, braked {braked}",
        after - before, refused_pods.len(), missing_pods.len()
    );
    assert!(after - before >= 5, "only {} rotations in 60 s: the brake was not put to the test", after - before);
    assert!(evicted <= 1, "{evicted} evictions in 60 s of 5 s tokens");
    assert!(refused_pods.len() <= 2, "the stuck Deployment had {} Pods: restarted more than once", refused_pods.len());
    assert_eq!(missing_pods.len(), 1, "a Pod whose image does not exist was restarted");
    let missing_now = pods_of(&client, n, "missing").await;
    assert!(missing_now.iter().all(|p| pod_outcome(p) == Some(PodOutcome::PullFailed("ImagePullBackOff".into()))), "the missing-image Pod was not stuck as the test meant");
    assert!(braked >= 1, "the brake never held a Pod back");
    assert_no_secrets(&client, n, &operator, &[server.secret.clone()]).await;
}
