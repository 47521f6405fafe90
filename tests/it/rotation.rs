//! The rotation engine end to end: the `regcred` process against the real
//! control plane, real registries, a real token server and a real OAuth2
//! server, all on 127.0.0.1.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use regcred::api::RegistryCredential;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn basic_secret_pulls_from_token_registry_and_survives_a_wrong_password() {
    let (client, ns) = setup("basic").await;
    let robot_pw = "robot-pw-8c1f2e";
    // distribution's token server grants each user the repositories under its own name.
    let reg = Registry::token_auth(&[("robot", robot_pw), ("other", "other-pw-1234")]).await;
    let image = reg.push_test_image("robot/app", "robot", robot_pw);
    // Another user is refused: the registry's authorization is real.
    let other = json!({"auths": {reg.host.clone(): {"auth": base64::engine::general_purpose::STANDARD.encode("other:other-pw-1234")}}});
    assert!(skopeo_pull(other.to_string().as_bytes(), &image).is_err());
    let operator = Operator::start(&ns.name);
    create_secret(&client, &ns.name, "robot", json!({"username": "robot", "password": robot_pw})).await;
    create_credential(&client, &ns.name, "pull", json!({"source": {"basic": {
        "secretRef": {"name": "robot"}, "registries": [reg.host], "allowInsecureHTTP": true
    }}})).await;
    wait_ready(&client, &ns.name, "pull", "True", Some("Rotated"), Duration::from_secs(60)).await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let first = secrets.get("pull").await.unwrap();
    assert_eq!(first.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    skopeo_pull(&dockerconfig(&first), &image).expect("pull with the written Secret");
    // The check can fail: a wrong password does not pull.
    let wrong = json!({"auths": {reg.host.clone(): {"auth": base64::engine::general_purpose::STANDARD.encode("robot:nope")}}});
    assert!(skopeo_pull(wrong.to_string().as_bytes(), &image).is_err());

    // A wrong password in the source Secret: Ready=False, the Secret stays.
    let bad_pw = "wrong-pw-5d9e33";
    secrets
        .patch("robot", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"password": bad_pw}})))
        .await
        .unwrap();
    let cr = wait_ready(&client, &ns.name, "pull", "False", Some("AccessDenied"), Duration::from_secs(60)).await;
    let msg = &cr.ready().unwrap().message;
    assert!(msg.contains("answered HTTP 401"), "{msg}");
    let after = secrets.get("pull").await.unwrap();
    assert_eq!(after.metadata.uid, first.metadata.uid);
    assert_eq!(after.metadata.resource_version, first.metadata.resource_version, "the Secret was written");
    skopeo_pull(&dockerconfig(&after), &image).expect("the kept Secret still pulls");

    assert_no_secrets(&client, &ns.name, &operator, &[robot_pw.into(), bad_pw.into()]).await;
}

#[tokio::test]
async fn oauth2_token_is_renewed_before_each_expiry() {
    let (client, ns) = setup("oauth2").await;
    let ttl = 20;
    let server = OAuth2Server::start(ttl).await;
    let operator = Operator::start(&ns.name);
    create_secret(&client, &ns.name, "client", json!({"client_id": "regcred-post", "client_secret": server.secret})).await;
    create_credential(&client, &ns.name, "gar", json!({"source": {"oauth2": {
        "tokenURL": server.token_url(), "allowInsecureHTTP": true,
        "clientSecretRef": {"name": "client"}, "authMethod": "client_secret_post",
        "scopes": ["registry:pull"], "registries": ["registry.example.com"]
    }}})).await;
    wait_ready(&client, &ns.name, "gar", "True", None, Duration::from_secs(60)).await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), &ns.name);
    let uid = secrets.get("gar").await.unwrap().metadata.uid;
    let mut tokens = BTreeSet::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(100);
    // Watch until the fourth token (three rotations after the first).
    while tokens.len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "only {} tokens in 100 s", tokens.len());
        let s = secrets.get("gar").await.unwrap();
        assert_eq!(s.metadata.uid, uid, "the Secret was recreated");
        let token = password_in(&s, "registry.example.com");
        let not_after = annotation_time(&s, "regcred.dev/not-after");
        let issued = annotation_time(&s, "regcred.dev/issued-at");
        let now = Utc::now();
        assert!(now < not_after, "the Secret holds an expired token ({now} >= {not_after})");
        assert!(server.active(&token).await, "the token in the Secret is not active at the server");
        assert_eq!((not_after - issued).num_seconds(), ttl as i64, "notAfter does not match the token lifetime");
        if tokens.insert(token.clone()) {
            seen.push(not_after);
            let st = crs.get("gar").await.unwrap().status.unwrap();
            // Status is written right after the Secret: wait for it to catch up.
            if st.not_after == Some(not_after) {
                let renewal = st.renewal_time.unwrap();
                assert!(renewal < not_after && renewal > issued, "renewal {renewal} outside ({issued}, {not_after})");
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Each new token arrived before the previous one expired.
    for w in seen.windows(2) {
        let lead = w[0] - (w[1] - chrono::Duration::seconds(ttl as i64));
        assert!(lead > chrono::Duration::zero(), "a token was replaced after it expired");
    }
    let (requests, issued) = server.stats().await;
    assert!(issued >= 4 && requests <= issued + 1, "{requests} requests for {issued} tokens");
    let mut leaks: Vec<String> = tokens.into_iter().collect();
    leaks.push(server.secret.clone());
    assert_no_secrets(&client, &ns.name, &operator, &leaks).await;
}

#[tokio::test]
async fn endpoint_outage_keeps_the_secret_and_recovers() {
    let (client, ns) = setup("outage").await;
    let ttl = 20;
    let mut server = OAuth2Server::start(ttl).await;
    let operator = Operator::start(&ns.name);
    ready_oauth2_credential(&client, &ns.name, &server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let kept = secrets.get("cred").await.unwrap();
    let token = password_in(&kept, "registry.example.com");

    server.stop();
    let down_since = tokio::time::Instant::now();
    // Down for longer than a token lifetime.
    while down_since.elapsed() < Duration::from_secs(ttl + 10) {
        let s = secrets.get("cred").await.expect("the Secret must stay");
        assert_eq!(s.metadata.resource_version, kept.metadata.resource_version, "the Secret was touched during the outage");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cr = wait_ready(&client, &ns.name, "cred", "False", Some("MintFailed"), Duration::from_secs(5)).await;
    let st = cr.status.clone().unwrap();
    let msg = &cr.ready().unwrap().message;
    assert!(msg.contains(&format!("http://127.0.0.1:{}/token", server.port)) && msg.contains("connection refused"), "{msg}");
    // Attempts are bounded by the backoff: every one is logged once.
    let attempts = operator.logs().matches("mint failed").count() as i32;
    assert!(st.failed_attempts >= 2 && st.failed_attempts <= 12, "{} attempts in {} s", st.failed_attempts, ttl + 10);
    assert!((attempts - st.failed_attempts).abs() <= 1, "{attempts} logged vs {} in status", st.failed_attempts);

    server.resume().await;
    let back = tokio::time::Instant::now();
    // The next retry is at most one backoff step away (1 minute without a valid credential).
    wait_ready(&client, &ns.name, "cred", "True", Some("Rotated"), Duration::from_secs(75)).await;
    let s = secrets.get("cred").await.unwrap();
    assert_eq!(s.metadata.uid, kept.metadata.uid);
    assert_ne!(password_in(&s, "registry.example.com"), token);
    eprintln!("outage: {} failed attempts, Ready again {:?} after the endpoint returned", st.failed_attempts, back.elapsed());
    assert_no_secrets(&client, &ns.name, &operator, &[token, server.secret.clone()]).await;
}

#[tokio::test]
async fn restarted_operator_does_not_mint_again() {
    let (client, ns) = setup("restart").await;
    let server = OAuth2Server::start(300).await;
    let mut operator = Operator::start(&ns.name);
    ready_oauth2_credential(&client, &ns.name, &server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let before = secrets.get("cred").await.unwrap();
    let (requests, _) = server.stats().await;
    assert_eq!(requests, 1);

    operator.restart();
    // The new process has looked at the credential and decided to wait.
    wait_for(Duration::from_secs(30), "the restarted operator to reconcile", || async {
        operator.current_logs().contains("nothing to do yet").then_some(())
    })
    .await;
    let (after, _) = server.stats().await;
    assert_eq!(after, requests, "the restarted operator minted again");
    let now = secrets.get("cred").await.unwrap();
    assert_eq!(now.metadata.resource_version, before.metadata.resource_version, "the Secret was rewritten");
    assert_no_secrets(&client, &ns.name, &operator, &[server.secret.clone(), password_in(&before, "registry.example.com")]).await;
}

#[tokio::test]
async fn foreign_secret_is_left_untouched() {
    let (client, ns) = setup("conflict").await;
    let operator = Operator::start(&ns.name);
    create_secret(&client, &ns.name, "taken", json!({"keep": "me-exactly"})).await;
    create_secret(&client, &ns.name, "robot", json!({"username": "u", "password": "robot-pw-31c0aa"})).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let before = secrets.get("taken").await.unwrap();
    create_credential(&client, &ns.name, "cred", json!({"secretName": "taken", "source": {"basic": {
        "secretRef": {"name": "robot"}, "registries": ["registry.example.com"], "verify": false
    }}})).await;
    let cr = wait_ready(&client, &ns.name, "cred", "False", Some("SecretConflict"), Duration::from_secs(60)).await;
    assert!(cr.ready().unwrap().message.contains("not owned by this RegistryCredential"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = secrets.get("taken").await.unwrap();
    assert_eq!(serde_json::to_value(&after).unwrap(), serde_json::to_value(&before).unwrap(), "the foreign Secret changed");
    assert_no_secrets(&client, &ns.name, &operator, &["robot-pw-31c0aa".into()]).await;
}

#[tokio::test]
async fn deleting_the_credential_collects_its_secret_and_edits_are_repaired() {
    let (client, ns) = setup("delete").await;
    let operator = Operator::start(&ns.name);
    create_secret(&client, &ns.name, "robot", json!({"username": "u", "password": "robot-pw-9911ab"})).await;
    create_credential(&client, &ns.name, "cred", json!({
        "source": {"basic": {"secretRef": {"name": "robot"}, "registries": ["registry.example.com"], "verify": false}},
        "secretTemplate": {"labels": {"team": "shop"}}
    })).await;
    wait_ready(&client, &ns.name, "cred", "True", None, Duration::from_secs(60)).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let s = secrets.get("cred").await.unwrap();
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(labels["team"], "shop");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "regcred");
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("RegistryCredential", Some(true)));

    // Someone empties the data: regcred writes it again, in place.
    secrets
        .patch("cred", &PatchParams::default(), &Patch::Merge(json!({"data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode("{}")}})))
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "the edited Secret to be repaired", || async {
        let s = secrets.get("cred").await.ok()?;
        (password_in_opt(&s) == Some("robot-pw-9911ab".into())).then_some(())
    })
    .await;
    assert_eq!(secrets.get("cred").await.unwrap().metadata.uid, s.metadata.uid);

    // A changed source Secret is picked up at once.
    secrets
        .patch("robot", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"password": "robot-pw-2nd-77"}})))
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "the new password to arrive", || async {
        let s = secrets.get("cred").await.ok()?;
        (password_in_opt(&s) == Some("robot-pw-2nd-77".into())).then_some(())
    })
    .await;

    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), &ns.name);
    crs.delete("cred", &DeleteParams::default()).await.unwrap();
    wait_for(Duration::from_secs(90), "garbage collection of the Secret", || async {
        secrets.get_opt("cred").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(secrets.get_opt("robot").await.unwrap().is_some(), "the source Secret must stay");
    assert_no_secrets(&client, &ns.name, &operator, &["robot-pw-9911ab".into(), "robot-pw-2nd-77".into()]).await;
}

fn password_in_opt(s: &Secret) -> Option<String> {
    let v: Value = serde_json::from_slice(&s.data.as_ref()?.get(".dockerconfigjson")?.0).ok()?;
    v["auths"]["registry.example.com"]["password"].as_str().map(String::from)
}

#[tokio::test]
async fn http_source_maps_a_docker_token_server_response() {
    let (client, ns) = setup("http").await;
    let robot_pw = "robot-pw-a0b1c2";
    let reg = Registry::token_auth(&[("robot", robot_pw)]).await;
    let realm = reg.token_server.clone().unwrap();
    let operator = Operator::start(&ns.name);
    create_secret(&client, &ns.name, "robot", json!({"username": "robot", "password": robot_pw})).await;
    create_credential(&client, &ns.name, "tok", json!({"source": {"http": {
        "url": realm, "allowInsecureHTTP": true,
        "query": {"service": "regcred-test-registry", "scope": "repository:app:pull"},
        "auth": {"basic": {"name": "robot"}},
        "registries": [reg.host]
    }}})).await;
    let cr = wait_ready(&client, &ns.name, "tok", "True", None, Duration::from_secs(60)).await;
    let st = cr.status.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let s = secrets.get("tok").await.unwrap();
    let token = password_in(&s, &reg.host);
    assert_eq!(token.split('.').count(), 3, "a JWT from the token server");
    // The token server's tokens last 15 minutes (expires_in 900).
    let issued = annotation_time(&s, "regcred.dev/issued-at");
    assert_eq!((st.not_after.unwrap() - issued).num_seconds(), 900);
    assert_no_secrets(&client, &ns.name, &operator, &[robot_pw.into(), token]).await;
}
