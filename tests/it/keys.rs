//! `rotate`: long-lived registry keys rotated at the source. The vendors'
//! key APIs are tests/peers/vendors.py (Docker Hub, Harbor and GitLab, from
//! their API docs), which is also the token realm of a real distribution
//! registry: a pull works exactly while the key is live at the peer, so a
//! revoked key gets 401 at the registry, and a Pod on the test node pulls
//! with the key regcred wrote.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use regcred::api::RegistryCredential;
use serde_json::{json, Value};

use super::support::*;

const ADMIN_USER: &str = "hub-admin";
const ADMIN_PASSWORD: &str = "admin-pw-4b1d2c3e";
const ADMIN_TOKEN: &str = "glpat-admin-7e6f5a4b";
const LIMITED_PASSWORD: &str = "limited-pw-9a8b7c";
const LIMITED_TOKEN: &str = "glpat-limited-1c2d3e";
const PUSHER: (&str, &str) = ("pusher", "pusher-pw-5d6e7f");

/// The registry and its vendor peer, with the test image pushed.
async fn vendors() -> (Registry, String) {
    let reg = Registry::vendors(&peer_env(), PUSHER).await;
    let image = reg.push_app_image("library/app", PUSHER.0, PUSHER.1);
    (reg, image)
}

fn peer_env() -> Vec<(&'static str, String)> {
    vec![
        ("ADMIN_USER", ADMIN_USER.to_string()),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD.to_string()),
        ("ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("LIMITED_USER", "limited".to_string()),
        ("LIMITED_PASSWORD", LIMITED_PASSWORD.to_string()),
        ("LIMITED_TOKEN", LIMITED_TOKEN.to_string()),
    ]
}

fn http() -> reqwest::Client {
    regcred::install_crypto_provider();
    reqwest::Client::new()
}

/// Every key the peer holds (no secrets), by id.
async fn peer_keys(reg: &Registry) -> HashMap<String, Value> {
    let body = http().get(format!("{}/_keys", reg.realm_origin())).send().await.unwrap().bytes().await.unwrap();
    let list: Vec<Value> = serde_json::from_slice(&body).unwrap();
    list.into_iter().map(|k| (k["id"].as_str().unwrap().to_string(), k)).collect()
}

/// The live keys whose name starts with `prefix`.
async fn live_keys(reg: &Registry, prefix: &str) -> Vec<Value> {
    peer_keys(reg).await.into_values().filter(|k| k["live"] == true && k["name"].as_str().unwrap().starts_with(prefix)).collect()
}

async fn fault(reg: &Registry, op: &str, mode: &str, hold: Option<u64>) {
    let mut url = format!("{}/_fault?op={op}&mode={mode}", reg.realm_origin());
    if let Some(h) = hold {
        url.push_str(&format!("&hold={h}"));
    }
    assert!(http().post(url).send().await.unwrap().status().is_success());
}

/// The `rotate` source for a vendor against the peer.
fn rotate(reg: &Registry, vendor: Value, admin: &str) -> Value {
    let mut spec = json!({"url": reg.realm_origin(), "adminSecretRef": {"name": admin}, "registries": [reg.host],
        "allowInsecureHTTP": true, "grace": "2s", "lifetime": "48h"});
    spec.as_object_mut().unwrap().extend(vendor.as_object().unwrap().clone());
    json!({"source": {"rotate": spec}})
}

async fn admin_secrets(client: &Client, ns: &str) {
    create_secret(client, ns, "hub-admin", json!({"username": ADMIN_USER, "password": ADMIN_PASSWORD})).await;
    create_secret(client, ns, "harbor-admin", json!({"username": ADMIN_USER, "password": ADMIN_PASSWORD})).await;
    create_secret(client, ns, "gitlab-admin", json!({"token": ADMIN_TOKEN})).await;
    create_secret(client, ns, "hub-limited", json!({"username": "limited", "password": LIMITED_PASSWORD})).await;
    create_secret(client, ns, "gitlab-limited", json!({"token": LIMITED_TOKEN})).await;
}

fn key_prefix(cr: &RegistryCredential) -> String {
    regcred::source::rotate::key_prefix(cr.metadata.uid.as_deref().unwrap())
}

/// (username, password) of the Secret's entry for `host`.
fn creds_in(secret: &Secret, host: &str) -> (String, String) {
    let v: Value = serde_json::from_slice(&dockerconfig(secret)).unwrap();
    let e = &v["auths"][host];
    (e["username"].as_str().unwrap().to_string(), e["password"].as_str().unwrap().to_string())
}

async fn renew(client: &Client, ns: &str, name: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {"regcred.dev/renew-requested-at": value}}});
    Api::<RegistryCredential>::namespaced(client.clone(), ns).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

fn key_annotation(s: &Secret) -> Option<String> {
    s.annotations().get("regcred.dev/key-id").cloned()
}

#[tokio::test]
async fn keys_rotate_at_each_vendor_and_the_replaced_key_stops_pulling() {
    let node = node();
    let (client, ns) = setup("keys").await;
    let n = &ns.name;
    let (reg, image) = vendors().await;
    if let Some(node) = &node {
        node.trust(&reg);
    }
    admin_secrets(&client, n).await;
    let operator = Operator::start(n);
    let cases = [
        ("hub", json!({"dockerHub": {"scopes": ["repo:read"]}}), "hub-admin"),
        ("harbor", json!({"harbor": {"project": "library", "actions": ["pull"]}}), "harbor-admin"),
        ("gitlab", json!({"gitlab": {"project": "group/app", "scopes": ["read_registry"]}}), "gitlab-admin"),
        ("gitlab-group", json!({"gitlab": {"group": "group", "accessLevel": 10}}), "gitlab-admin"),
    ];
    for (name, vendor, admin) in &cases {
        create_credential(&client, n, name, rotate(&reg, vendor.clone(), admin)).await;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let mut leaks = vec![ADMIN_PASSWORD.to_string(), ADMIN_TOKEN.to_string()];
    let started = chrono::Utc::now();
    for (name, _, _) in &cases {
        let cr = wait_ready(&client, n, name, "True", Some("Rotated"), Duration::from_secs(60)).await;
        let prefix = key_prefix(&cr);
        let live = live_keys(&reg, &prefix).await;
        assert_eq!(live.len(), 1, "{name}: one live key at the peer: {live:?}");
        let key = &live[0];
        // requested scope and expiry (48h; Harbor counts days, GitLab's date
        // ends at a midnight at least 48h away)
        let expected_scope = match *name { "hub" => "repo:read", "harbor" => "pull", _ => "read_registry" };
        if name.starts_with("gitlab") {
            let (owner, level) = if *name == "gitlab" { ("projects/group/app", 20) } else { ("groups/group", 10) };
            assert_eq!((key["owner"].as_str(), key["access_level"].as_i64()), (Some(owner), Some(level)), "{name}: {key}");
        }
        assert_eq!(key["scopes"], json!([expected_scope]), "{name}: {key}");
        let expires = key["expires"].as_f64().unwrap() as i64;
        let life = expires - started.timestamp();
        assert!((48 * 3600 - 120..=72 * 3600 + 120).contains(&life), "{name}: lives {life}s");
        let st = cr.status.as_ref().unwrap().key.as_ref().unwrap();
        assert_eq!(st.id.as_deref(), key["id"].as_str(), "{name}: status names the key");
        assert!(st.expires_at.is_some() && st.pending.is_none(), "{name}: {st:?}");
        let s = secrets.get(name).await.unwrap();
        assert_eq!(key_annotation(&s).as_deref(), key["id"].as_str());
        let (user, password) = creds_in(&s, &reg.host);
        skopeo_pull_creds(&user, &password, &image).unwrap_or_else(|e| panic!("{name}: the first key does not pull: {e}"));
        leaks.push(password);
    }
    // Rotate each: the Secret is swapped in place, the old key revoked after its grace.
    for (name, _, _) in &cases {
        let before = secrets.get(name).await.unwrap();
        let (user, old) = creds_in(&before, &reg.host);
        let old_id = key_annotation(&before).unwrap();
        renew(&client, n, name, "2026-12-03T18:00:00Z").await;
        let after = wait_for(Duration::from_secs(60), &format!("{name}: a new key in the Secret"), || async {
            let s = secrets.get(name).await.ok()?;
            (key_annotation(&s).as_deref() != Some(old_id.as_str())).then_some(s)
        })
        .await;
        assert_eq!(after.metadata.uid, before.metadata.uid, "{name}: swapped in place");
        let (new_user, new) = creds_in(&after, &reg.host);
        assert_ne!(new, old);
        leaks.push(new.clone());
        skopeo_pull_creds(&new_user, &new, &image).unwrap_or_else(|e| panic!("{name}: the new key does not pull: {e}"));
        wait_for(Duration::from_secs(30), &format!("{name}: the replaced key revoked"), || async {
            (peer_keys(&reg).await.get(&old_id)?["live"] == false).then_some(())
        })
        .await;
        let refused = skopeo_pull_creds(&user, &old, &image).expect_err("the revoked key still pulls");
        assert!(refused.contains("401") || refused.to_lowercase().contains("unauthorized"), "{name}: {refused}");
        let cr = wait_for(Duration::from_secs(10), "status without retiring keys", || async {
            let cr = Api::<RegistryCredential>::namespaced(client.clone(), n).get(name).await.ok()?;
            cr.status.as_ref()?.key.as_ref()?.retiring.is_empty().then_some(cr)
        })
        .await;
        assert_eq!(live_keys(&reg, &key_prefix(&cr)).await.len(), 1, "{name}: one live key after the rotation");
        let events = event_messages(&client, n, cr.metadata.uid.as_deref().unwrap()).await;
        assert!(events.iter().any(|e| e.starts_with("Created key regcred-")), "{name}: {events:?}");
        assert!(events.iter().any(|e| e.starts_with("Revoked replaced key regcred-")), "{name}: {events:?}");
    }
    // A Pod on the node pulls with each rotated key.
    if let Some(node) = &node {
        for (name, _, _) in &cases {
            let (outcome, _, _) = start_pod(&client, n, node.pod(&format!("pod-{name}"), &image, &[name]), Duration::from_secs(90)).await;
            assert_eq!(outcome, PodOutcome::Running, "{name}: the Pod did not pull with the rotated key");
        }
    }
    assert_no_secrets(&client, n, &operator, &leaks).await;
    // Deleting a credential revokes its keys at the vendor (a finalizer).
    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), n);
    let hub = crs.get("hub").await.unwrap();
    delete(&crs, "hub").await;
    let prefix = key_prefix(&hub);
    wait_for(Duration::from_secs(30), "the deleted credential's keys revoked", || async { live_keys(&reg, &prefix).await.is_empty().then_some(()) }).await;
    wait_for(Duration::from_secs(30), "the credential gone", || async { crs.get_opt("hub").await.unwrap().is_none().then_some(()) }).await;
}

#[tokio::test]
async fn a_crash_between_create_and_swap_leaves_one_live_key_and_no_orphan() {
    let (client, ns) = setup("keys-crash").await;
    let n = &ns.name;
    let (reg, image) = vendors().await;
    admin_secrets(&client, n).await;
    let mut operator = Operator::start(n);
    create_credential(&client, n, "harbor", rotate(&reg, json!({"harbor": {"project": "library"}}), "harbor-admin")).await;
    let cr = wait_ready(&client, n, "harbor", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let prefix = key_prefix(&cr);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let first = key_annotation(&secrets.get("harbor").await.unwrap()).unwrap();
    // The peer makes the next robot and never answers: the operator is
    // killed while it waits, between create and swap.
    fault(&reg, "create", "created-then-hang", Some(300)).await;
    renew(&client, n, "harbor", "crash-1").await;
    let orphan = wait_for(Duration::from_secs(30), "the second robot created", || async {
        let live = live_keys(&reg, &prefix).await;
        live.into_iter().map(|k| k["id"].as_str().unwrap().to_string()).find(|id| *id != first)
    })
    .await;
    let pending = Api::<RegistryCredential>::namespaced(client.clone(), n).get("harbor").await.unwrap();
    let st = pending.status.unwrap().key.unwrap();
    assert!(st.pending.as_deref().is_some_and(|p| p.starts_with(&prefix)), "the pending key is recorded before the vendor is asked: {st:?}");
    operator.crash_and_restart();
    fault(&reg, "create", "none", None).await;
    // The restarted operator revokes the orphan, makes a fresh key, swaps
    // it in, and revokes the first after its grace.
    wait_for(Duration::from_secs(60), "the orphan revoked", || async { (peer_keys(&reg).await.get(&orphan)?["live"] == false).then_some(()) }).await;
    let s = wait_for(Duration::from_secs(60), "a new key in the Secret", || async {
        let s = secrets.get("harbor").await.ok()?;
        key_annotation(&s).filter(|k| *k != first && *k != orphan).map(|_| s)
    })
    .await;
    let current = key_annotation(&s).unwrap();
    wait_for(Duration::from_secs(30), "exactly one live key", || async {
        let live = live_keys(&reg, &prefix).await;
        (live.len() == 1 && live[0]["id"] == json!(current)).then_some(())
    })
    .await;
    let (user, password) = creds_in(&s, &reg.host);
    skopeo_pull_creds(&user, &password, &image).unwrap();
    let cr = wait_ready(&client, n, "harbor", "True", Some("Rotated"), Duration::from_secs(10)).await;
    assert_eq!(cr.status.unwrap().key.unwrap().pending, None);
    assert!(operator.logs().contains("no Secret uses it"), "the sweep says what it revoked");
}

#[tokio::test]
async fn a_failing_vendor_keeps_the_secret_and_says_why() {
    let (client, ns) = setup("keys-fail").await;
    let n = &ns.name;
    let (reg, image) = vendors().await;
    admin_secrets(&client, n).await;
    let operator = Operator::start(n);
    create_credential(&client, n, "gitlab", rotate(&reg, json!({"gitlab": {"project": "group/app"}}), "gitlab-admin")).await;
    wait_ready(&client, n, "gitlab", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let kept = secrets.get("gitlab").await.unwrap();
    // 5xx, then a refusal: the Secret stays as it was, the condition says why.
    for (i, (mode, reason, words)) in [("503", "MintFailed", "answered HTTP 503"), ("403", "AccessDenied", "answered HTTP 403")].into_iter().enumerate() {
        fault(&reg, "create", mode, None).await;
        renew(&client, n, "gitlab", &format!("fail-{i}")).await;
        let cr = wait_ready(&client, n, "gitlab", "False", Some(reason), Duration::from_secs(60)).await;
        let msg = cr.ready().unwrap().message.clone();
        assert!(msg.contains(words) && msg.contains("/api/v4/projects/group%2Fapp/access_tokens"), "{msg}");
        let now = secrets.get("gitlab").await.unwrap();
        assert_eq!(now.data, kept.data, "the Secret is kept");
    }
    fault(&reg, "create", "none", None).await;
    let (user, password) = creds_in(&kept, &reg.host);
    skopeo_pull_creds(&user, &password, &image).unwrap();
    // An admin credential without the right to create keys, and a vendor
    // that is down: no Secret, a clear condition.
    create_credential(&client, n, "limited", rotate(&reg, json!({"dockerHub": {}}), "hub-limited")).await;
    let cr = wait_ready(&client, n, "limited", "False", Some("AccessDenied"), Duration::from_secs(60)).await;
    assert!(cr.ready().unwrap().message.contains("/v2/access-tokens answered HTTP 403"), "{:?}", cr.ready());
    let mut down = rotate(&reg, json!({"harbor": {"project": "library"}}), "harbor-admin");
    down["source"]["rotate"]["url"] = json!(format!("http://127.0.0.1:{}", free_port()));
    create_credential(&client, n, "down", down).await;
    let cr = wait_ready(&client, n, "down", "False", Some("MintFailed"), Duration::from_secs(60)).await;
    assert!(cr.ready().unwrap().message.contains("connection refused"), "{:?}", cr.ready());
    for name in ["limited", "down"] {
        assert!(secrets.get_opt(name).await.unwrap().is_none(), "{name}: no Secret");
    }
    // A ClusterRegistryCredential cannot rotate keys (one key per consumer).
    let ar = ApiResource::erase::<regcred::api::ClusterRegistryCredential>(&());
    let crcs: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let spec = json!({"source": rotate(&reg, json!({"dockerHub": {}}), "hub-admin")["source"], "target": {"namespaces": [n]}});
    let obj: DynamicObject = serde_json::from_value(json!({"apiVersion": "regcred.dev/v1alpha1", "kind": "ClusterRegistryCredential",
        "metadata": {"name": format!("{n}-rotate")}, "spec": spec})).unwrap();
    let err = crcs.create(&PostParams::default(), &obj).await.expect_err("a cluster credential with rotate was accepted");
    assert!(err.to_string().contains("source.rotate is supported by RegistryCredential only"), "{err}");
    assert_no_secrets(&client, n, &operator, &[ADMIN_PASSWORD.to_string(), ADMIN_TOKEN.to_string(), LIMITED_PASSWORD.to_string(), LIMITED_TOKEN.to_string(), password]).await;
}

#[tokio::test]
async fn hostile_vendor_answers_fail_cleanly_and_leave_no_key() {
    let (client, ns) = setup("keys-hostile").await;
    let n = &ns.name;
    let (reg, _) = vendors().await;
    admin_secrets(&client, n).await;
    let mut operator = Operator::start(n);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let cases = [
        ("huge", json!({"dockerHub": {}}), "hub-admin", "larger than"),
        ("malformed", json!({"harbor": {"project": "library"}}), "harbor-admin", "not the JSON object expected"),
        ("expired", json!({"gitlab": {"project": "group/app"}}), "gitlab-admin", "already expired"),
        ("noexpiry", json!({"harbor": {"project": "library"}}), "harbor-admin", "has no expiry"),
    ];
    for (mode, vendor, admin, words) in cases {
        fault(&reg, "create", mode, None).await;
        create_credential(&client, n, mode, rotate(&reg, vendor, admin)).await;
        let cr = wait_ready(&client, n, mode, "False", Some("InvalidResponse"), Duration::from_secs(60)).await;
        assert!(cr.ready().unwrap().message.contains(words), "{mode}: {:?}", cr.ready());
        assert!(secrets.get_opt(mode).await.unwrap().is_none(), "{mode}: nothing written");
        // A key the peer made and regcred could not use is revoked at once.
        let prefix = key_prefix(&cr);
        wait_for(Duration::from_secs(30), &format!("{mode}: no live key left"), || async { live_keys(&reg, &prefix).await.is_empty().then_some(()) }).await;
        assert!(operator.is_running(), "{mode}: the operator is still running");
    }
    fault(&reg, "create", "none", None).await;
    // Forty keys with a credential's prefix that nothing uses: the sweep on
    // start revokes at most 16 per pass and goes on until none is left,
    // never touching the Secret's.
    create_credential(&client, n, "swept", rotate(&reg, json!({"harbor": {"project": "library"}}), "harbor-admin")).await;
    let cr = wait_ready(&client, n, "swept", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let prefix = key_prefix(&cr);
    let url = format!("{}/_seed?vendor=harbor&prefix={prefix}orphan-&n=40", reg.realm_origin());
    assert!(http().post(url).send().await.unwrap().status().is_success());
    assert_eq!(live_keys(&reg, &prefix).await.len(), 41);
    let current = key_annotation(&secrets.get("swept").await.unwrap()).unwrap();
    operator.crash_and_restart();
    wait_for(Duration::from_secs(60), "the orphans revoked", || async {
        let live = live_keys(&reg, &prefix).await;
        (live.len() == 1 && live[0]["id"] == json!(current)).then_some(())
    })
    .await;
    assert_eq!(key_annotation(&secrets.get("swept").await.unwrap()).unwrap(), current, "the Secret's key is kept");
    let events = event_messages(&client, n, cr.metadata.uid.as_deref().unwrap()).await;
    assert!(events.iter().any(|e| e.contains("no Secret uses it")), "{events:?}");
}

#[tokio::test]
async fn the_vendor_api_over_https_with_the_credentials_ca() {
    let (client, ns) = setup("keys-tls").await;
    let n = &ns.name;
    let certs = TestCerts::new();
    let (reg, https) = Registry::vendors_tls(&peer_env(), PUSHER, &certs).await;
    let image = reg.push_app_image("library/app", PUSHER.0, PUSHER.1);
    admin_secrets(&client, n).await;
    create_secret(&client, n, "ca", json!({"ca.crt": certs.pem("ca.crt")})).await;
    let operator = Operator::start(n);
    let mut trusted = rotate(&reg, json!({"dockerHub": {}}), "hub-admin");
    trusted["source"]["rotate"]["url"] = json!(https);
    trusted["source"]["rotate"]["tls"] = json!({"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}});
    create_credential(&client, n, "trusted", trusted.clone()).await;
    let mut untrusted = trusted;
    untrusted["source"]["rotate"].as_object_mut().unwrap().remove("tls");
    create_credential(&client, n, "untrusted", untrusted).await;
    wait_ready(&client, n, "trusted", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let s = Api::<Secret>::namespaced(client.clone(), n).get("trusted").await.unwrap();
    let (user, password) = creds_in(&s, &reg.host);
    skopeo_pull_creds(&user, &password, &image).unwrap();
    let cr = wait_ready(&client, n, "untrusted", "False", Some("MintFailed"), Duration::from_secs(60)).await;
    assert!(cr.ready().unwrap().message.contains("not signed by a trusted CA"), "{:?}", cr.ready());
    assert!(live_keys(&reg, &key_prefix(&cr)).await.is_empty(), "nothing was created without trust");
    assert_no_secrets(&client, n, &operator, &[ADMIN_PASSWORD.to_string(), password]).await;
}
