//! ClusterRegistryCredential: one mint for every selected namespace, the
//! ServiceAccounts wired, event-driven, clean on the way out; and
//! `serviceAccounts` on the namespaced kind. Each test runs its own
//! cluster-wide operator, restricted by `--selector` to its own objects, with
//! its own namespace as the operator's namespace.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use regcred::api::ClusterRegistryCredential;
use serde_json::{json, Value};

use crate::support::*;

pub(crate) const SUITE: &str = "regcred.dev/test-suite";

/// Namespaces a test made, deleted together when dropped.
pub(crate) struct Namespaces(pub(crate) Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let _ = control_plane()
            .kubectl()
            .args(["delete", "namespace", "--wait=false", "--ignore-not-found"])
            .args(&self.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub(crate) async fn labelled_namespace(client: &Client, prefix: &str, labels: Value, made: &mut Namespaces) -> String {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut l = labels;
    l["regcred.dev/test"] = json!("true");
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"generateName": format!("{prefix}-"), "labels": l}})).unwrap();
    let name = api.create(&PostParams::default(), &ns).await.unwrap().name_any();
    made.0.push(name.clone());
    name
}

/// A cluster-wide operator for this test's objects, its own namespace as home.
pub(crate) fn fleet_operator(home: &str, suite: &str, extra: &[&str], env: &[(&str, &str)]) -> Operator {
    let selector = format!("{SUITE}={suite}");
    let mut args = vec!["--selector", &selector];
    args.extend_from_slice(extra);
    let mut e = vec![("POD_NAMESPACE", home)];
    e.extend_from_slice(env);
    Operator::start_cluster_wide(&args, &e)
}

/// Cluster-scoped names are shared by every test in the run: make them unique.
pub(crate) fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

pub(crate) async fn create_cluster_credential(client: &Client, name: &str, suite: &str, spec: Value) -> Result<(), kube::Error> {
    let ccr: ClusterRegistryCredential = serde_json::from_value(json!({
        "apiVersion": "regcred.dev/v1alpha1", "kind": "ClusterRegistryCredential",
        "metadata": {"name": name, "labels": {SUITE: suite}}, "spec": spec,
    }))
    .unwrap();
    Api::<ClusterRegistryCredential>::all(client.clone()).create(&PostParams::default(), &ccr).await.map(|_| ())
}

/// Wait until the status says `synced` namespaces hold the credential and `failed` failed.
pub(crate) async fn wait_synced(client: &Client, name: &str, synced: i32, failed: i32, timeout: Duration) -> ClusterRegistryCredential {
    let api: Api<ClusterRegistryCredential> = Api::all(client.clone());
    wait_for(timeout, &format!("{name}: {synced} synced, {failed} failed"), || async {
        let c = api.get(name).await.ok()?;
        let st = c.status.clone()?;
        (st.synced_namespaces == synced && st.failed_namespaces == failed && c.ready().is_some_and(|r| r.status == "True")).then_some(c)
    })
    .await
}

fn pull_secret_names(sa: &ServiceAccount) -> Vec<String> {
    sa.image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect()
}

async fn account(client: &Client, ns: &str, name: &str) -> Option<ServiceAccount> {
    Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt(name).await.unwrap()
}

/// Add a hand-made entry to a ServiceAccount, as a user would (read-modify-write).
async fn hand_add(client: &Client, ns: &str, sa: &str, entry: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    wait_for(Duration::from_secs(30), "a hand-added entry", || async {
        let mut a = api.get_opt(sa).await.ok()??;
        a.image_pull_secrets.get_or_insert_with(Vec::new).push(k8s_openapi::api::core::v1::LocalObjectReference { name: entry.into() });
        api.replace(sa, &PostParams::default(), &a).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn one_oauth2_mint_feeds_every_selected_namespace_and_its_service_accounts() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "fleet-home").await;
    let suite = format!("fleet-oauth2-{}", std::process::id());
    let label = format!("fleet-{}", std::process::id());
    let server = OAuth2Server::start(30).await;
    let operator = fleet_operator(&home.name, &suite, &[], &[]);
    create_secret(&client, &home.name, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    let mut made = Namespaces(Vec::new());
    let mut targets = Vec::new();
    for i in 0..3 {
        targets.push(labelled_namespace(&client, &format!("fleet-{i}"), json!({"regcred-test.dev/fleet": label}), &mut made).await);
    }
    let bystander = labelled_namespace(&client, "fleet-unselected", json!({}), &mut made).await;
    let gar = unique("gar");
    create_cluster_credential(&client, &gar, &suite, json!({
        "source": {"oauth2": {"tokenURL": server.token_url(), "allowInsecureHTTP": true,
            "clientSecretRef": {"name": "client"}, "registries": ["registry.example.com"]}},
        "target": {"namespaceSelector": {"matchLabels": {"regcred-test.dev/fleet": label}}, "secretName": "gar-pull"},
        "serviceAccounts": {"names": ["default"]}
    })).await.unwrap();
    // Every token the fleet ever holds passes through the home Secret:
    // collect them from the start, to compare with the server's count.
    let home_tokens = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (homes, tokens, stop) = (Api::<Secret>::namespaced(client.clone(), &home.name), home_tokens.clone(), stop.clone());
        let home_secret = format!("regcred-cluster-{gar}");
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(Some(s)) = homes.get_opt(&home_secret).await {
                    tokens.lock().unwrap().insert(password_in(&s, "registry.example.com"));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    wait_synced(&client, &gar, 3, 0, Duration::from_secs(60)).await;
    let token_in = |ns: String| {
        let client = client.clone();
        async move { Api::<Secret>::namespaced(client, &ns).get_opt("gar-pull").await.ok().flatten().map(|s| password_in(&s, "registry.example.com")) }
    };
    let first = token_in(targets[0].clone()).await.unwrap();
    for ns in &targets {
        assert_eq!(token_in(ns.clone()).await.as_deref(), Some(first.as_str()), "{ns} holds another token");
        wait_for(Duration::from_secs(30), "the default ServiceAccount entry", || async {
            account(&client, ns, "default").await.filter(|a| pull_secret_names(a).contains(&"gar-pull".to_string())).map(|_| ())
        })
        .await;
    }
    assert!(token_in(bystander.clone()).await.is_none(), "an unselected namespace got the Secret");
    assert!(server.active(&first).await);

    // A namespace created afterwards gets its Secret and entry from the namespace watch.
    let fourth = labelled_namespace(&client, "fleet-late", json!({"regcred-test.dev/fleet": label}), &mut made).await;
    let created = tokio::time::Instant::now();
    wait_for(Duration::from_secs(20), "the 4th namespace's Secret and entry", || async {
        token_in(fourth.clone()).await?;
        account(&client, &fourth, "default").await.filter(|a| pull_secret_names(a) == ["gar-pull"]).map(|_| ())
    })
    .await;
    eprintln!("fleet: a new namespace had its Secret and ServiceAccount entry {:?} after it was created", created.elapsed());

    // One relabelled in: existing entries kept, in order; ours appended once.
    let fifth = labelled_namespace(&client, "fleet-relabel", json!({}), &mut made).await;
    hand_add(&client, &fifth, "default", "hand-added").await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let relabel = |v: Value| json!({"metadata": {"labels": {"regcred-test.dev/fleet": v}}});
    nss.patch(&fifth, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(relabel(json!(label)))).await.unwrap();
    wait_for(Duration::from_secs(20), "the relabelled namespace's entry", || async {
        token_in(fifth.clone()).await?;
        account(&client, &fifth, "default").await.filter(|a| pull_secret_names(a) == ["hand-added", "gar-pull"]).map(|_| ())
    })
    .await;
    // The write is made under field manager `regcred`. Kubernetes 1.37 keeps
    // no managedFields on ServiceAccounts at all (not even for server-side
    // apply), so it is checked wherever the server records them.
    let sa = account(&client, &fifth, "default").await.unwrap();
    match sa.metadata.managed_fields.as_ref().filter(|m| !m.is_empty()) {
        Some(fields) => {
            let managers: Vec<String> = fields.iter().filter_map(|m| m.manager.clone()).collect();
            assert!(managers.contains(&"regcred".to_string()), "managedFields name {managers:?}");
        }
        None => eprintln!("fleet: this API server records no managedFields on ServiceAccounts"),
    }
    // ... and relabelled out: loses the Secret and only our entry.
    nss.patch(&fifth, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(relabel(json!("other")))).await.unwrap();
    wait_for(Duration::from_secs(60), "the relabelled-out namespace to lose Secret and entry", || async {
        let gone = token_in(fifth.clone()).await.is_none();
        let entries = pull_secret_names(&account(&client, &fifth, "default").await?);
        (gone && entries == ["hand-added"]).then_some(())
    })
    .await;
    wait_synced(&client, &gar, 4, 0, Duration::from_secs(30)).await;

    // Two rotations: one token request per lifetime for all namespaces together.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut seen = BTreeSet::new();
    while home_tokens.lock().unwrap().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "fewer than two rotations in 90 s");
        for ns in targets.iter().chain([&fourth]) {
            seen.extend(token_in(ns.clone()).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    poller.await.unwrap();
    let held = home_tokens.lock().unwrap().clone();
    let (requests, _) = server.stats().await;
    eprintln!("fleet: {} tokens held over the run, {requests} token requests, for 4-5 namespaces", held.len());
    assert_eq!(requests as usize, held.len(), "token requests against tokens the fleet held");
    assert!(seen.is_subset(&held), "a namespace held a token the home Secret never did");
    seen.extend(held);
    let mut leaks: Vec<String> = seen.into_iter().collect();
    leaks.push(server.secret.clone());
    for ns in targets.iter().chain([&fourth, &home.name]) {
        assert_no_secrets(&client, ns, &operator, &leaks).await;
    }
}

#[tokio::test]
async fn two_hundred_namespaces_one_ecr_token_per_lifetime() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "fleet-ecr-home").await;
    let suite = format!("fleet-ecr-{}", std::process::id());
    let label = format!("ecr-{}", std::process::id());
    let ttl = 40;
    let moto = MotoEcr::start(ttl, &[]).await;
    let env = [("AWS_ACCESS_KEY_ID", "AKIAOPERATOR00000001"), ("AWS_SECRET_ACCESS_KEY", "operator-secret-key-cafe01"), ("AWS_REGION", "eu-west-1"), ("AWS_EC2_METADATA_DISABLED", "true")];
    // No --ecr-identity-namespaces: a cluster credential is the admin's own.
    let operator = fleet_operator(&home.name, &suite, &["--aws-endpoint-overrides", &moto.endpoint()], &env);
    let mut made = Namespaces(Vec::new());
    let n = 200;
    for i in 0..n {
        labelled_namespace(&client, &format!("fleet-ecr-{i:03}"), json!({"regcred-test.dev/fleet-ecr": label}), &mut made).await;
    }
    let ecr = unique("ecr");
    create_cluster_credential(&client, &ecr, &suite, json!({
        "source": {"ecr": {"region": "eu-west-1", "endpoint": moto.endpoint(), "stsEndpoint": moto.endpoint(), "allowInsecureHTTP": true}},
        "target": {"namespaceSelector": {"matchLabels": {"regcred-test.dev/fleet-ecr": label}}}
    })).await.unwrap();
    let started = tokio::time::Instant::now();
    let c = wait_synced(&client, &ecr, n, 0, Duration::from_secs(120)).await;
    eprintln!("fleet: {n} namespaces synced {:?} after the credential was created", started.elapsed());
    assert_eq!(moto.calls("GetAuthorizationToken").await, 1, "{n} namespaces, one token");
    let first_not_after = c.status.unwrap().credential.not_after.unwrap();
    wait_for(Duration::from_secs(ttl + 30), "every namespace rotated", || async {
        let mut rotated = 0;
        for ns in &made.0 {
            let s = Api::<Secret>::namespaced(client.clone(), ns).get_opt(&ecr).await.ok()??;
            if annotation_time(&s, "regcred.dev/not-after") > first_not_after {
                rotated += 1;
            }
        }
        (rotated == n).then_some(())
    })
    .await;
    assert_eq!(moto.calls("GetAuthorizationToken").await, 2, "one more token for the second lifetime");
    let s = Api::<Secret>::namespaced(client.clone(), &made.0[0]).get(&ecr).await.unwrap();
    assert_eq!(password_in(&s, "123456789012.dkr.ecr.eu-west-1.amazonaws.com"), "123456789012-auth-token");
    assert_no_secrets(&client, &made.0[0], &operator, &["operator-secret-key-cafe01".into(), "123456789012-auth-token".into()]).await;
}

#[tokio::test]
async fn a_foreign_secret_fails_one_namespace_and_deletion_cleans_up_exactly_ours() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "fleet-basic-home").await;
    let suite = format!("fleet-basic-{}", std::process::id());
    let robot_pw = "robot-pw-fleet-77";
    let reg = Registry::htpasswd(&[("robot", robot_pw)]).await;
    let image = reg.push_test_image("app", "robot", robot_pw);
    let operator = fleet_operator(&home.name, &suite, &[], &[]);
    create_secret(&client, &home.name, "robot", json!({"username": "robot", "password": robot_pw})).await;
    let mut made = Namespaces(Vec::new());
    let mut nss = Vec::new();
    for i in 0..3 {
        nss.push(labelled_namespace(&client, &format!("fleet-b{i}"), json!({}), &mut made).await);
    }
    // Admission: a target needs a selector or names.
    let refused = create_cluster_credential(&client, &unique("no-target"), &suite, json!({
        "source": {"basic": {"secretRef": {"name": "robot"}, "registries": [reg.host]}}, "target": {}
    }))
    .await;
    assert!(matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("namespaceSelector or namespaces")), "{refused:?}");
    // A foreign Secret of the target name in the second namespace.
    create_secret(&client, &nss[1], "pull", json!({"mine": "not-yours"})).await;
    let foreign = Api::<Secret>::namespaced(client.clone(), &nss[1]).get("pull").await.unwrap();
    let robot = unique("robot");
    create_cluster_credential(&client, &robot, &suite, json!({
        "source": {"basic": {"secretRef": {"name": "robot"}, "registries": [reg.host], "allowInsecureHTTP": true}},
        "target": {"namespaces": nss, "secretName": "pull"},
        "serviceAccounts": {"names": ["default"]}
    })).await.unwrap();
    let api: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let c = wait_for(Duration::from_secs(60), "2 synced, 1 failed", || async {
        let c = api.get(&robot).await.ok()?;
        let st = c.status.clone()?;
        (st.synced_namespaces == 2 && st.failed_namespaces == 1).then_some(c)
    })
    .await;
    let st = c.status.unwrap();
    assert_eq!(st.failures.len(), 1);
    assert_eq!((st.failures[0].namespace.as_str(), st.failures[0].reason.as_str()), (nss[1].as_str(), "SecretConflict"));
    let degraded = st.credential.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
    let after = Api::<Secret>::namespaced(client.clone(), &nss[1]).get("pull").await.unwrap();
    assert_eq!(serde_json::to_value(&after).unwrap(), serde_json::to_value(&foreign).unwrap(), "the foreign Secret was touched");
    for ns in [&nss[0], &nss[2]] {
        let s = Api::<Secret>::namespaced(client.clone(), ns).get("pull").await.unwrap();
        skopeo_pull(&dockerconfig(&s), &image).unwrap_or_else(|e| panic!("{ns}: {e}"));
    }
    // `regcred renew --cluster`: one new credential for the fleet, recorded in status.
    let before = Api::<Secret>::namespaced(client.clone(), &nss[0]).get("pull").await.unwrap();
    let (code, out, err) = crate::day2::cli(&["renew", "--cluster", &robot]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for(Duration::from_secs(40), "the fleet renewed on request", || async {
        let c = api.get(&robot).await.ok()?;
        let asked = c.metadata.annotations.as_ref()?.get("regcred.dev/renew-requested-at")?.clone();
        let served = c.status?.credential.renew_request_served == Some(asked);
        let s = Api::<Secret>::namespaced(client.clone(), &nss[0]).get("pull").await.ok()?;
        let rewritten = annotation_time(&s, "regcred.dev/issued-at") > annotation_time(&before, "regcred.dev/issued-at");
        (served && rewritten).then_some(())
    })
    .await;
    // Our entry, then a hand-added one after it; the conflicting namespace gets no entry.
    wait_for(Duration::from_secs(30), "entries", || async {
        account(&client, &nss[0], "default").await.filter(|a| pull_secret_names(a) == ["pull"]).map(|_| ())
    })
    .await;
    assert!(account(&client, &nss[1], "default").await.is_none_or(|a| pull_secret_names(&a).is_empty()));
    hand_add(&client, &nss[0], "default", "hand-added").await;

    // Deleting the credential: exactly our entries go, the Secrets are
    // collected, the finalizer is gone.
    api.delete(&robot, &Default::default()).await.unwrap();
    wait_for(Duration::from_secs(60), "the credential gone", || async { api.get_opt(&robot).await.ok()?.is_none().then_some(()) }).await;
    assert_eq!(pull_secret_names(&account(&client, &nss[0], "default").await.unwrap()), ["hand-added"]);
    for ns in [&nss[0], &nss[2]] {
        wait_for(Duration::from_secs(60), "garbage collection of the Secret", || async {
            Api::<Secret>::namespaced(client.clone(), ns).get_opt("pull").await.ok()?.is_none().then_some(())
        })
        .await;
    }
    assert!(Api::<Secret>::namespaced(client.clone(), &nss[1]).get_opt("pull").await.unwrap().is_some(), "the foreign Secret went");
    assert_no_secrets(&client, &nss[0], &operator, &[robot_pw.into()]).await;
}

#[tokio::test]
async fn a_namespaced_credential_patches_only_the_named_service_account() {
    let (client, ns) = setup("sa-builder").await;
    let operator = Operator::start(&ns.name);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    for name in ["builder", "other"] {
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}, "imagePullSecrets": [{"name": "existing"}]})).unwrap();
        sas.create(&PostParams::default(), &sa).await.unwrap();
    }
    create_secret(&client, &ns.name, "robot", json!({"username": "robot", "password": "robot-pw-sa-1234"})).await;
    create_credential(&client, &ns.name, "pull", json!({"source": {"basic": {
        "secretRef": {"name": "robot"}, "registries": ["registry.example.com"], "verify": false
    }}, "serviceAccounts": {"names": ["builder"]}})).await;
    wait_ready(&client, &ns.name, "pull", "True", Some("Rotated"), Duration::from_secs(60)).await;
    wait_for(Duration::from_secs(30), "builder's entry", || async {
        (pull_secret_names(&sas.get("builder").await.ok()?) == ["existing", "pull"]).then_some(())
    })
    .await;
    assert_eq!(pull_secret_names(&sas.get("other").await.unwrap()), ["existing"]);
    if let Some(d) = sas.get_opt("default").await.unwrap() {
        assert!(!pull_secret_names(&d).contains(&"pull".to_string()));
    }
    let crs: Api<regcred::api::RegistryCredential> = Api::namespaced(client.clone(), &ns.name);
    assert!(crs.get("pull").await.unwrap().finalizers().contains(&"regcred.dev/cleanup".to_string()));
    crs.delete("pull", &Default::default()).await.unwrap();
    wait_for(Duration::from_secs(60), "the credential gone", || async { crs.get_opt("pull").await.ok()?.is_none().then_some(()) }).await;
    assert_eq!(pull_secret_names(&sas.get("builder").await.unwrap()), ["existing"]);
    assert_no_secrets(&client, &ns.name, &operator, &["robot-pw-sa-1234".into()]).await;
}

/// An operator that starts with many ClusterRegistryCredentials already
/// there (a restart, an upgrade): every first reconcile begins while the
/// operator's caches are still filling. Each must go on once they are
/// filled; kube-runtime's wait for a filled cache woke only one waiter, and
/// the others never reconciled again.
#[tokio::test]
async fn an_operator_started_after_many_cluster_credentials_serves_every_one() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "start-home").await;
    let suite = unique("fleet-start");
    let label = unique("start");
    create_secret(&client, &home.name, "robot", json!({"username": "robot", "password": "start-pw-6b0e2d"})).await;
    let mut made = Namespaces(Vec::new());
    labelled_namespace(&client, "start-target", json!({"regcred-test.dev/start": label}), &mut made).await;
    let names: Vec<String> = (0..16).map(|i| unique(&format!("start-{i:02}"))).collect();
    for (i, name) in names.iter().enumerate() {
        create_cluster_credential(&client, name, &suite, json!({
            "source": {"basic": {"secretRef": {"name": "robot"}, "registries": ["registry.example.com"], "verify": false}},
            "target": {"namespaceSelector": {"matchLabels": {"regcred-test.dev/start": label}}, "secretName": format!("start-{i}")}
        })).await.unwrap();
    }
    let operator = fleet_operator(&home.name, &suite, &[], &[]);
    for name in &names {
        wait_synced(&client, name, 1, 0, Duration::from_secs(30)).await;
    }
    assert_no_secrets(&client, &home.name, &operator, &["start-pw-6b0e2d".into()]).await;
}
