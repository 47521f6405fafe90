//! The cluster-scoped kind does what the namespaced kind does: redacted
//! status and Events, `oauth2.revoke`, a changed source Secret acted on at
//! once, and a new target without a new mint.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{Event, Secret, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use serde_json::json;

use crate::fleet::{create_cluster_credential, fleet_operator, labelled_namespace, unique, wait_synced, Namespaces, SUITE};
use crate::support::*;

/// A ValidatingAdmissionPolicy refusing writes of Secret `name` in
/// `namespaces` with a message that quotes the Secret's data, as a careless
/// policy might.
fn quoting_policy(tag: &str, namespaces: &[&str], name: &str) -> AdmissionPolicy {
    AdmissionPolicy::install(&format!("regcred-test-quote-{tag}"), json!({"failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["secrets"]}],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]}},
        "matchConditions": [{"name": "that-secret", "expression": format!("object.metadata.name == '{name}'")}],
        "validations": [{"expression": "false",
            "messageExpression": "'refused, the Secret held ' + (has(object.data) && '.dockerconfigjson' in object.data ? string(object.data['.dockerconfigjson']) : 'nothing')"}]}))
}

/// The policy is in force once a probe write of that name is refused.
async fn wait_refusing(client: &kube::Client, ns: &str, name: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    wait_for(Duration::from_secs(30), "the policy in force", || async {
        let probe: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"probe": "1"}})).unwrap();
        match api.create(&Default::default(), &probe).await {
            Err(kube::Error::Api(s)) if s.message.contains("refused, the Secret held") => Some(()),
            Ok(_) => {
                let _ = api.delete(name, &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
}

#[tokio::test]
async fn a_refused_write_quoting_the_secret_is_redacted_for_both_kinds() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "redact-home").await;
    let suite = format!("redact-{}", std::process::id());
    let password = "redact-robot-pw-8c1f3a9e";
    let operator = fleet_operator(&home.name, &suite, &[], &[]);
    let mut made = Namespaces(Vec::new());
    let mine = labelled_namespace(&client, "redact-ns", json!({}), &mut made).await;
    let theirs = labelled_namespace(&client, "redact-fleet", json!({}), &mut made).await;
    let _policy = quoting_policy(&mine, &[&mine, &theirs], "red-pull");
    wait_refusing(&client, &mine, "red-pull").await;
    wait_refusing(&client, &theirs, "red-pull").await;
    for at in [&home.name, &mine] {
        create_secret(&client, at, "robot", json!({"username": "robot", "password": password})).await;
    }
    let source = json!({"basic": {"secretRef": {"name": "robot"}, "registries": ["registry.example.com"], "verify": false}});
    let cr: RegistryCredential = serde_json::from_value(json!({"apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": "mine", "labels": {SUITE: suite}}, "spec": {"source": source, "secretName": "red-pull"}})).unwrap();
    Api::<RegistryCredential>::namespaced(client.clone(), &mine).create(&Default::default(), &cr).await.unwrap();
    let fleet = unique("redact");
    create_cluster_credential(&client, &fleet, &suite, json!({"source": source, "target": {"namespaces": [theirs], "secretName": "red-pull"}})).await.unwrap();
    let refused = wait_ready(&client, &mine, "mine", "False", Some("SecretRejected"), Duration::from_secs(60)).await;
    let message = refused.ready().unwrap().message.clone();
    eprintln!("redact: namespaced: {message}");
    assert!(message.contains("refused, the Secret held") && message.contains("[redacted]"), "{message}");
    let ccrs: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let st = wait_for(Duration::from_secs(60), "the fleet's refused namespace", || async {
        let st = ccrs.get(&fleet).await.ok()?.status?;
        (st.failed_namespaces == 1).then_some(st)
    })
    .await;
    eprintln!("redact: fleet: {}: {}", st.failures[0].reason, st.failures[0].message);
    assert!(st.failures[0].message.contains("refused, the Secret held"), "{}", st.failures[0].message);
    // Let the Events be written.
    wait_for(Duration::from_secs(30), "the fleet's NamespacesFailed Event", || async {
        let lp = ListParams::default().fields(&format!("involvedObject.name={fleet},reason=NamespacesFailed"));
        (!Api::<Event>::all(client.clone()).list(&lp).await.ok()?.items.is_empty()).then_some(())
    })
    .await;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("robot:{password}"));
    // What the policy quoted: the data as the API shows it (base64), where
    // the password is encoded out of line with any search for it.
    let home_copy = Api::<Secret>::namespaced(client.clone(), &home.name).get(&format!("regcred-cluster-{fleet}")).await.unwrap();
    let blob = base64::engine::general_purpose::STANDARD.encode(dockerconfig(&home_copy));
    let secrets = [password.to_string(), auth.clone(), blob.clone()];
    let fleet_texts = [
        serde_json::to_string(&ccrs.get(&fleet).await.unwrap().status).unwrap(),
        serde_json::to_string(&Api::<Event>::all(client.clone()).list(&ListParams::default().fields(&format!("involvedObject.name={fleet}"))).await.unwrap().items).unwrap(),
    ];
    for text in &fleet_texts {
        assert!(!text.contains(password) && !text.contains(&auth) && !text.contains(&blob), "the fleet's status or Events hold the credential: {text}");
    }
    for ns in [&mine, &theirs, &home.name] {
        assert_no_secrets(&client, ns, &operator, &secrets).await;
    }
}

#[tokio::test]
async fn the_fleet_revokes_replaced_and_deleted_tokens() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "frevoke-home").await;
    let suite = format!("frevoke-{}", std::process::id());
    // 60 s tokens renew at about 40 s: the replaced token has about 20 s to
    // live, so its revocation (2 s after) is not its expiry, even late.
    let server = OAuth2Server::start(60).await;
    let operator = fleet_operator(&home.name, &suite, &[], &[]);
    create_secret(&client, &home.name, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    let mut made = Namespaces(Vec::new());
    let ns = labelled_namespace(&client, "frevoke", json!({}), &mut made).await;
    let name = unique("frevoke");
    create_cluster_credential(&client, &name, &suite, json!({
        "source": {"oauth2": {"tokenURL": server.token_url(), "allowInsecureHTTP": true, "clientSecretRef": {"name": "client"},
            "registries": ["registry.example.com"], "revoke": {"onRotation": true, "delay": "2s", "onDelete": true}}},
        "target": {"namespaces": [ns], "secretName": "frevoke-pull"}
    }))
    .await
    .unwrap();
    wait_synced(&client, &name, 1, 0, Duration::from_secs(60)).await;
    let copies: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let copy = copies.get("frevoke-pull").await.unwrap();
    let first = password_in(&copy, "registry.example.com");
    let first_expires = annotation_time(&copy, "regcred.dev/not-after");
    assert!(server.active(&first).await);
    let second = wait_for(Duration::from_secs(80), "a rotation", || async {
        let t = password_in(&copies.get("frevoke-pull").await.ok()?, "registry.example.com");
        (t != first).then_some(t)
    })
    .await;
    wait_for(Duration::from_secs(20), "the replaced token revoked", || async { (!server.active(&first).await).then_some(()) }).await;
    let left = first_expires - chrono::Utc::now();
    eprintln!("frevoke: the replaced token was inactive {}s before it would have expired", left.num_seconds());
    assert!(left > chrono::Duration::seconds(3), "the replaced token may just have expired ({left:?} before its expiry)");
    assert!(server.active(&second).await, "the current token was revoked");
    let api: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let homes: Api<Secret> = Api::namespaced(client.clone(), &home.name);
    let current = password_in(&homes.get(&format!("regcred-cluster-{name}")).await.unwrap(), "registry.example.com");
    api.delete(&name, &Default::default()).await.unwrap();
    wait_for(Duration::from_secs(30), "the credential gone", || async { api.get_opt(&name).await.ok()?.is_none().then_some(()) }).await;
    assert!(!server.active(&current).await, "the deleted credential's token is still active");
    let revoked = Api::<Event>::all(client.clone()).list(&ListParams::default().fields(&format!("involvedObject.name={name},reason=Revoked"))).await.unwrap().items;
    assert!(!revoked.is_empty(), "no Revoked Event");
    for at in [&ns, &home.name] {
        assert_no_secrets(&client, at, &operator, &[server.secret.clone(), first.clone(), second.clone(), current.clone()]).await;
    }
}

#[tokio::test]
async fn a_changed_source_secret_reaches_every_copy_at_once() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "fsource-home").await;
    let suite = format!("fsource-{}", std::process::id());
    // Mints may follow each other at once: the test is about noticing the change.
    let _operator = fleet_operator(&home.name, &suite, &["--min-mint-interval-seconds=1"], &[]);
    create_secret(&client, &home.name, "robot", json!({"username": "robot", "password": "fsource-pw-first-1"})).await;
    let mut made = Namespaces(Vec::new());
    let mut targets = Vec::new();
    for i in 0..2 {
        targets.push(labelled_namespace(&client, &format!("fsource-{i}"), json!({}), &mut made).await);
    }
    let name = unique("fsource");
    create_cluster_credential(&client, &name, &suite, json!({
        "source": {"basic": {"secretRef": {"name": "robot"}, "registries": ["registry.example.com"], "verify": false}},
        "target": {"namespaces": targets, "secretName": "fsource-pull"}
    }))
    .await
    .unwrap();
    wait_synced(&client, &name, 2, 0, Duration::from_secs(60)).await;
    let robot: Api<Secret> = Api::namespaced(client.clone(), &home.name);
    let change = json!({"stringData": {"password": "fsource-pw-second-2"}});
    robot.patch("robot", &PatchParams::default(), &Patch::Merge(change)).await.unwrap();
    let t = tokio::time::Instant::now();
    for ns in &targets {
        let copies: Api<Secret> = Api::namespaced(client.clone(), ns);
        // At once: without noticing the change, the next look would be
        // `refreshInterval` away (1 minute at the least).
        wait_for(Duration::from_secs(30), &format!("{ns}: the new password"), || async {
            (password_in(&copies.get("fsource-pull").await.ok()?, "registry.example.com") == "fsource-pw-second-2").then_some(())
        })
        .await;
    }
    eprintln!("fsource: every copy held the new password {:?} after the source Secret changed", t.elapsed());
}

#[tokio::test]
async fn a_new_target_or_service_accounts_retarget_without_a_new_mint() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "retarget-home").await;
    let suite = format!("retarget-{}", std::process::id());
    let server = OAuth2Server::start(3600).await;
    // Nothing holds a mint back: if a change of target called for one, it would come at once.
    let _operator = fleet_operator(&home.name, &suite, &["--min-mint-interval-seconds=1"], &[]);
    create_secret(&client, &home.name, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    let mut made = Namespaces(Vec::new());
    let first_ns = labelled_namespace(&client, "retarget-a", json!({}), &mut made).await;
    let second_ns = labelled_namespace(&client, "retarget-b", json!({}), &mut made).await;
    let name = unique("retarget");
    create_cluster_credential(&client, &name, &suite, json!({
        "source": {"oauth2": {"tokenURL": server.token_url(), "allowInsecureHTTP": true, "clientSecretRef": {"name": "client"},
            "registries": ["registry.example.com"]}},
        "target": {"namespaces": [first_ns], "secretName": "retarget-pull"}
    }))
    .await
    .unwrap();
    wait_synced(&client, &name, 1, 0, Duration::from_secs(60)).await;
    let token = password_in(&Api::<Secret>::namespaced(client.clone(), &first_ns).get("retarget-pull").await.unwrap(), "registry.example.com");
    let (before, _) = server.stats().await;
    let api: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let patch = json!({"spec": {"target": {"namespaces": [first_ns, second_ns], "secretName": "retarget-pull",
        "secretTemplate": {"labels": {"team": "blue"}}}, "serviceAccounts": {"names": ["default"]}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    wait_synced(&client, &name, 2, 0, Duration::from_secs(60)).await;
    for ns in [&first_ns, &second_ns] {
        let copies: Api<Secret> = Api::namespaced(client.clone(), ns);
        let s = wait_for(Duration::from_secs(30), &format!("{ns}: the copy with the new label"), || async {
            copies.get_opt("retarget-pull").await.ok()?.filter(|s| s.labels().get("team").map(String::as_str) == Some("blue"))
        })
        .await;
        assert_eq!(password_in(&s, "registry.example.com"), token, "{ns} holds another token");
        wait_for(Duration::from_secs(30), &format!("{ns}: the default ServiceAccount's entry"), || async {
            let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt("default").await.ok()??;
            sa.image_pull_secrets.iter().flatten().any(|r| r.name == "retarget-pull").then_some(())
        })
        .await;
    }
    // Past the least interval between mints, and a reconcile of the fleet since.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, _) = server.stats().await;
    eprintln!("retarget: token requests {before} before the new target, {after} after");
    assert_eq!(after, before, "a new target or serviceAccounts minted a new token");
}
