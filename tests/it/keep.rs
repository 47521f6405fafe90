//! ServiceAccounts and fleet copies keep what works: each entry owned by
//! one credential (no fight when two name one Secret), no entry removed by a
//! failure, and copies repaired when edited, deleted or unlisted by hand.
//! Each test runs its own cluster-wide operator restricted by `--selector`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use serde_json::{json, Value};

use crate::fleet::{create_cluster_credential, fleet_operator, labelled_namespace, unique, wait_synced, Namespaces, SUITE};
use crate::support::*;

fn entries(sa: &ServiceAccount) -> Vec<String> {
    sa.image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect()
}

async fn default_account(client: &Client, ns: &str) -> ServiceAccount {
    wait_for(Duration::from_secs(30), "the default ServiceAccount", || async {
        Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt("default").await.ok()?
    })
    .await
}

async fn wait_entry(client: &Client, ns: &str, secret: &str) {
    wait_for(Duration::from_secs(30), &format!("{ns}: default lists {secret}"), || async {
        let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt("default").await.ok()??;
        entries(&sa).contains(&secret.to_string()).then_some(())
    })
    .await;
}

/// Events with this reason about the object named `name`, in any namespace.
async fn events_about(client: &Client, name: &str, reason: &str) -> Vec<Event> {
    let lp = ListParams::default().fields(&format!("involvedObject.name={name},reason={reason}"));
    Api::<Event>::all(client.clone()).list(&lp).await.map(|l| l.items).unwrap_or_default()
}

async fn create_labelled_credential(client: &Client, ns: &str, name: &str, suite: &str, spec: Value) {
    let cr: RegistryCredential = serde_json::from_value(json!({
        "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": name, "labels": {SUITE: suite}}, "spec": spec,
    }))
    .unwrap();
    Api::<RegistryCredential>::namespaced(client.clone(), ns).create(&PostParams::default(), &cr).await.unwrap();
}

/// A basic source reading the Secret `robot` (no registry check).
fn basic(registry: &str) -> Value {
    json!({"basic": {"secretRef": {"name": "robot"}, "registries": [registry], "verify": false}})
}

#[tokio::test]
async fn a_namespaced_and_a_cluster_credential_naming_one_secret_do_not_fight_over_a_service_account() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "clash-home").await;
    let suite = format!("clash-{}", std::process::id());
    let operator = fleet_operator(&home.name, &suite, &[], &[]);
    let mut made = Namespaces(Vec::new());
    let ns = labelled_namespace(&client, "clash", json!({}), &mut made).await;
    default_account(&client, &ns).await;
    let password = "clash-robot-pw-5521";
    for at in [&home.name, &ns] {
        create_secret(&client, at, "robot", json!({"username": "robot", "password": password})).await;
    }
    // The namespaced credential writes `ecr-pull` and lists it on `default`.
    create_labelled_credential(&client, &ns, "mine", &suite, json!({
        "source": basic("registry.example.com"), "secretName": "ecr-pull", "serviceAccounts": {"names": ["default"]}
    }))
    .await;
    wait_ready(&client, &ns, "mine", "True", Some("Rotated"), Duration::from_secs(60)).await;
    wait_entry(&client, &ns, "ecr-pull").await;
    // The cluster credential names the same Secret in that namespace.
    let fleet = unique("clash");
    create_cluster_credential(&client, &fleet, &suite, json!({
        "source": basic("registry.example.com"),
        "target": {"namespaces": [ns], "secretName": "ecr-pull"},
        "serviceAccounts": {"names": ["default"]}
    }))
    .await
    .unwrap();
    let api: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let st = wait_for(Duration::from_secs(60), "the fleet's conflict in that namespace", || async {
        let st = api.get(&fleet).await.ok()?.status?;
        (st.failed_namespaces == 1).then_some(st)
    })
    .await;
    assert_eq!(st.failures[0].reason, "SecretConflict");
    // 30 s of the ServiceAccount: nobody takes the entry away.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let mut versions = vec![sas.get("default").await.unwrap().resource_version().unwrap()];
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut samples, mut without) = (0, 0);
    while tokio::time::Instant::now() < end {
        let sa = sas.get("default").await.unwrap();
        samples += 1;
        if !entries(&sa).contains(&"ecr-pull".to_string()) {
            without += 1;
        }
        let rv = sa.resource_version().unwrap();
        if versions.last() != Some(&rv) {
            versions.push(rv);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let changes = versions.len() - 1;
    eprintln!("clash: the ServiceAccount changed {changes} times in 30 s; {without} of {samples} reads lacked the entry");
    assert!(changes <= 2, "the ServiceAccount changed {changes} times in 30 s: the credentials fight over it");
    assert_eq!(without, 0, "{without} of {samples} reads of the ServiceAccount lacked the entry");
    let (_, clash) = wait_for(Duration::from_secs(30), "the fleet's clash reported", || async {
        let c = api.get(&fleet).await.ok()?;
        let clash = c.status.as_ref()?.credential.conditions.iter().find(|c| c.type_ == "ServiceAccountClash")?.clone();
        (clash.status == "True").then_some((c, clash))
    })
    .await;
    eprintln!("clash: {}: {}", clash.reason, clash.message);
    assert!(clash.message.contains(&format!("{ns}/default")) && clash.message.contains("ecr-pull"), "{}", clash.message);
    let sa = sas.get("default").await.unwrap();
    let uid = Api::<RegistryCredential>::namespaced(client.clone(), &ns).get("mine").await.unwrap().uid().unwrap();
    assert_eq!(sa.annotations().get("regcred.dev/image-pull-secrets"), Some(&format!("ecr-pull={uid}")), "the entry is recorded as the namespaced credential's");
    let clashes = events_about(&client, &fleet, "ServiceAccountClash").await;
    assert_eq!(clashes.iter().map(|e| e.count.unwrap_or(1)).sum::<i32>(), 1, "one Event for the clash: {clashes:?}");
    // The namespaced credential's Secret is untouched by the fleet.
    let s = Api::<Secret>::namespaced(client.clone(), &ns).get("ecr-pull").await.unwrap();
    assert_eq!(s.labels().get("regcred.dev/credential").map(String::as_str), Some("mine"));
    assert_no_secrets(&client, &ns, &operator, &[password.into()]).await;
}

/// The default ServiceAccount of each namespace keeps `entry` for `hold`.
async fn assert_entries_kept(client: &Client, namespaces: &[String], entry: &str, hold: Duration) {
    let end = tokio::time::Instant::now() + hold;
    loop {
        for ns in namespaces {
            let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns).get("default").await.unwrap();
            assert!(entries(&sa).contains(&entry.to_string()), "{ns}: the entry went while the Secret is still there: {:?}", entries(&sa));
            assert!(Api::<Secret>::namespaced(client.clone(), ns).get_opt(entry).await.unwrap().is_some(), "{ns}: the Secret went");
        }
        if tokio::time::Instant::now() >= end {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_failing_fleet_without_its_home_secret_keeps_every_entry() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "keep-home").await;
    let suite = format!("keep-{}", std::process::id());
    let label = format!("keep-{}", std::process::id());
    let mut server = OAuth2Server::start(3600).await;
    let _operator = fleet_operator(&home.name, &suite, &[], &[]);
    create_secret(&client, &home.name, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    let mut made = Namespaces(Vec::new());
    let mut targets = Vec::new();
    for i in 0..2 {
        targets.push(labelled_namespace(&client, &format!("keep-{i}"), json!({"regcred-test.dev/keep": label}), &mut made).await);
    }
    let name = unique("keep");
    create_cluster_credential(&client, &name, &suite, json!({
        "source": {"oauth2": {"tokenURL": server.token_url(), "allowInsecureHTTP": true,
            "clientSecretRef": {"name": "client"}, "registries": ["registry.example.com"]}},
        "target": {"namespaceSelector": {"matchLabels": {"regcred-test.dev/keep": label}}, "secretName": "keep-pull"},
        "serviceAccounts": {"names": ["default"]}
    }))
    .await
    .unwrap();
    wait_synced(&client, &name, 2, 0, Duration::from_secs(60)).await;
    for ns in &targets {
        wait_entry(&client, ns, "keep-pull").await;
    }
    // The token server goes, then the home Secret: the next mint fails.
    server.stop();
    delete(&Api::<Secret>::namespaced(client.clone(), &home.name), &format!("regcred-cluster-{name}")).await;
    let api: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let failed = wait_for(Duration::from_secs(60), "the failed mint recorded", || async {
        let c = api.get(&name).await.ok()?;
        c.status.as_ref()?.credential.conditions.iter().find(|c| c.type_ == "Ready" && c.status == "False").cloned()
    })
    .await;
    eprintln!("keep: Ready=False {}: {}", failed.reason, failed.message);
    assert_entries_kept(&client, &targets, "keep-pull", Duration::from_secs(10)).await;
    // Back: the home Secret is written again and the fleet is Ready.
    server.resume().await;
    let (code, out, err) = crate::day2::cli(&["renew", "--cluster", &name]);
    assert_eq!(code, 0, "{out}{err}");
    wait_synced(&client, &name, 2, 0, Duration::from_secs(60)).await;
    assert_entries_kept(&client, &targets, "keep-pull", Duration::from_secs(0)).await;
}

/// A ValidatingAdmissionPolicy refusing updates of Secret `name` in `ns`.
fn refuse_updates(ns: &str, name: &str) -> AdmissionPolicy {
    AdmissionPolicy::install(&format!("regcred-test-refuse-{ns}"), json!({"failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["secrets"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
        "matchConditions": [{"name": "that-secret", "expression": format!("object.metadata.name == '{name}'")}],
        "validations": [{"expression": "false", "message": "updates of this Secret are refused by the test"}]}))
}

#[tokio::test]
async fn a_namespace_whose_copy_is_refused_keeps_its_entry() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "refuse-home").await;
    let suite = format!("refuse-{}", std::process::id());
    let _operator = fleet_operator(&home.name, &suite, &[], &[]);
    create_secret(&client, &home.name, "robot", json!({"username": "robot", "password": "refuse-robot-pw-3141"})).await;
    let mut made = Namespaces(Vec::new());
    let mut targets = Vec::new();
    for i in 0..2 {
        targets.push(labelled_namespace(&client, &format!("refuse-{i}"), json!({}), &mut made).await);
    }
    let name = unique("refuse");
    create_cluster_credential(&client, &name, &suite, json!({
        "source": basic("registry.example.com"),
        "target": {"namespaces": targets, "secretName": "refuse-pull"},
        "serviceAccounts": {"names": ["default"]}
    }))
    .await
    .unwrap();
    wait_synced(&client, &name, 2, 0, Duration::from_secs(60)).await;
    for ns in &targets {
        wait_entry(&client, ns, "refuse-pull").await;
    }
    let _policy = refuse_updates(&targets[1], "refuse-pull");
    // The policy takes effect once the API server has loaded it: until a
    // probe update is refused, the renewal could still go through.
    let copies: Api<Secret> = Api::namespaced(client.clone(), &targets[1]);
    wait_for(Duration::from_secs(30), "the policy in force", || async {
        let probe = json!({"metadata": {"annotations": {"regcred-test.dev/probe": "1"}}});
        match copies.patch("refuse-pull", &PatchParams::default(), &Patch::Merge(probe)).await {
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 403 => Some(()),
            _ => None,
        }
    })
    .await;
    let (code, out, err) = crate::day2::cli(&["renew", "--cluster", &name]);
    assert_eq!(code, 0, "{out}{err}");
    let api: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let c = wait_for(Duration::from_secs(60), "the refused namespace reported", || async {
        let c = api.get(&name).await.ok()?;
        let st = c.status.clone()?;
        (st.failed_namespaces == 1 && st.failures.first()?.namespace == targets[1]).then_some(st)
    })
    .await;
    eprintln!("refuse: {}: {}", c.failures[0].reason, c.failures[0].message);
    assert_entries_kept(&client, &targets, "refuse-pull", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn fleet_copies_edited_deleted_or_unlisted_are_repaired() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "repair-home").await;
    let suite = format!("repair-{}", std::process::id());
    let password = "repair-robot-pw-2718";
    let _operator = fleet_operator(&home.name, &suite, &[], &[]);
    create_secret(&client, &home.name, "robot", json!({"username": "robot", "password": password})).await;
    let mut made = Namespaces(Vec::new());
    let ns = labelled_namespace(&client, "repair", json!({}), &mut made).await;
    let name = unique("repair");
    create_cluster_credential(&client, &name, &suite, json!({
        "source": basic("registry.example.com"),
        "target": {"namespaces": [ns], "secretName": "repair-pull"},
        "serviceAccounts": {"names": ["default"]}
    }))
    .await
    .unwrap();
    let first = wait_synced(&client, &name, 1, 0, Duration::from_secs(60)).await.status.unwrap().credential.last_rotation_time;
    wait_entry(&client, &ns, "repair-pull").await;
    let copies: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let good = copies.get("repair-pull").await.unwrap();
    let holds_good = |s: &Secret| s.data == good.data;
    // 1. Data edited.
    let edit = json!({"data": {".dockerconfigjson": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"{\"auths\":{}}")}});
    copies.patch("repair-pull", &PatchParams::default(), &Patch::Merge(edit)).await.unwrap();
    let t = tokio::time::Instant::now();
    wait_for(Duration::from_secs(30), "the edited copy restored", || async { copies.get_opt("repair-pull").await.ok()?.filter(holds_good).map(|_| ()) }).await;
    eprintln!("repair: an edited copy was restored after {:?}", t.elapsed());
    // 2. Deleted.
    let uid = copies.get("repair-pull").await.unwrap().uid();
    copies.delete("repair-pull", &Default::default()).await.unwrap();
    let t = tokio::time::Instant::now();
    wait_for(Duration::from_secs(30), "the deleted copy written again", || async {
        copies.get_opt("repair-pull").await.ok()?.filter(|s| s.uid() != uid && holds_good(s)).map(|_| ())
    })
    .await;
    eprintln!("repair: a deleted copy was written again after {:?}", t.elapsed());
    // 3. The entry removed by hand.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    wait_for(Duration::from_secs(30), "the entry removed by hand", || async {
        let mut sa = sas.get("default").await.ok()?;
        sa.image_pull_secrets.as_mut()?.retain(|r| r.name != "repair-pull");
        sas.replace("default", &PostParams::default(), &sa).await.ok().map(|_| ())
    })
    .await;
    let t = tokio::time::Instant::now();
    wait_entry(&client, &ns, "repair-pull").await;
    eprintln!("repair: an entry removed by hand was listed again after {:?}", t.elapsed());
    // None of this was a new mint: still the first credential.
    let c = Api::<ClusterRegistryCredential>::all(client.clone()).get(&name).await.unwrap();
    assert_eq!(c.status.unwrap().credential.last_rotation_time, first, "repairs copy, they do not mint");
}

#[tokio::test]
async fn entries_recorded_by_name_only_are_kept_on_upgrade_and_claimed() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "legacy-home").await;
    let suite = format!("legacy-{}", std::process::id());
    let _operator = fleet_operator(&home.name, &suite, &[], &[]);
    create_secret(&client, &home.name, "robot", json!({"username": "robot", "password": "legacy-robot-pw-1618"})).await;
    let mut made = Namespaces(Vec::new());
    let ns = labelled_namespace(&client, "legacy", json!({}), &mut made).await;
    default_account(&client, &ns).await;
    // What an earlier regcred left: entries recorded by Secret name only,
    // on the ServiceAccount the new credential selects and on one it does not.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let other: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "other",
        "annotations": {"regcred.dev/image-pull-secrets": "legacy-pull"}}, "imagePullSecrets": [{"name": "legacy-pull"}]})).unwrap();
    sas.create(&PostParams::default(), &other).await.unwrap();
    wait_for(Duration::from_secs(30), "the default ServiceAccount as an earlier regcred left it", || async {
        let mut sa = sas.get("default").await.ok()?;
        sa.image_pull_secrets = Some(vec![k8s_openapi::api::core::v1::LocalObjectReference { name: "legacy-pull".into() }]);
        sa.metadata.annotations.get_or_insert_with(Default::default).insert("regcred.dev/image-pull-secrets".into(), "legacy-pull".into());
        sas.replace("default", &PostParams::default(), &sa).await.ok().map(|_| ())
    })
    .await;
    let name = unique("legacy");
    create_cluster_credential(&client, &name, &suite, json!({
        "source": basic("registry.example.com"),
        "target": {"namespaces": [ns], "secretName": "legacy-pull"},
        "serviceAccounts": {"names": ["default"]}
    }))
    .await
    .unwrap();
    wait_synced(&client, &name, 1, 0, Duration::from_secs(60)).await;
    let uid = Api::<ClusterRegistryCredential>::all(client.clone()).get(&name).await.unwrap().uid().unwrap();
    let claimed = format!("legacy-pull={uid}");
    wait_for(Duration::from_secs(30), "the selected entry claimed by the new credential", || async {
        let sa = sas.get("default").await.ok()?;
        (sa.annotations().get("regcred.dev/image-pull-secrets") == Some(&claimed)).then_some(())
    })
    .await;
    assert_eq!(entries(&sas.get("default").await.unwrap()), ["legacy-pull"], "claimed without a duplicate");
    // A few reconciles later the unselected one still has its entry: no
    // entry is removed on upgrade.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other = sas.get("other").await.unwrap();
    assert_eq!(entries(&other), ["legacy-pull"], "an entry recorded by name only was removed");
    assert_eq!(other.annotations().get("regcred.dev/image-pull-secrets").map(String::as_str), Some("legacy-pull"));
}
