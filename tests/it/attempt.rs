//! One attempt, whatever comes of it: every attempt that asked the source
//! counts against the least interval between mints, and one deadline covers
//! the source and the verification at the registries.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::support::*;

/// Requests the hostile endpoint counted for `case`.
async fn requests(hostile: &Hostile, case: &str) -> u64 {
    hostile.counts().await.get(case).copied().unwrap_or(0)
}

/// A tenant keeps its pull Secret "not intact" (a new data digest every
/// 200 ms) while its token endpoint takes 1 s to answer: every write of a
/// new credential loses the race. The attempts still count: at most one
/// mint per `--min-mint-interval-seconds` (10 s), so at most 7 in 60 s.
#[tokio::test]
async fn a_secret_that_keeps_changing_gets_at_most_one_mint_per_interval() {
    let (client, ns) = setup("cap").await;
    let hostile = Hostile::start("127.0.0.1", None).await;
    let _operator = Operator::start(&ns.name);
    let body = r#"{"token":"cap-tok-{n}","expires_in":3600}"#;
    let url = hostile.url("cap", "slow", &[("ms", "1000"), ("b", body)]);
    let http = json!({"url": url, "allowInsecureHTTP": true, "registries": ["registry.example.com"]});
    create_credential(&client, &ns.name, "cred", json!({"source": {"http": http}})).await;
    wait_ready(&client, &ns.name, "cred", "True", Some("Rotated"), Duration::from_secs(30)).await;
    let before = requests(&hostile, "cap").await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let started = tokio::time::Instant::now();
    let mut patches = 0u64;
    while started.elapsed() < Duration::from_secs(60) {
        let digest = format!("tampered-{patches}");
        let patch = json!({"metadata": {"annotations": {"regcred.dev/data-digest": digest}}});
        secrets.patch("cred", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        patches += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let minted = requests(&hostile, "cap").await - before;
    eprintln!("cap: {minted} token requests in 60 s while the Secret changed {patches} times");
    assert!(minted >= 1, "the changed Secret was never repaired");
    assert!(minted <= 7, "{minted} token requests in 60 s: the least interval between mints (10 s) did not hold");
    // Left alone, the Secret is repaired at the next allowed mint.
    wait_for(Duration::from_secs(30), "the Secret to be repaired", || async {
        let s = secrets.get("cred").await.unwrap();
        let digest = s.metadata.annotations.unwrap_or_default().get("regcred.dev/data-digest").cloned().unwrap_or_default();
        (!digest.starts_with("tampered-")).then_some(())
    })
    .await;
}

/// The source answers at ~0.9× the mint timeout (31 s) and the registry's
/// login check takes ~18 s more: each alone fits, the attempt does not. One
/// deadline for the whole attempt: it fails once, status says so, and no
/// Secret is written.
#[tokio::test]
async fn one_deadline_covers_the_source_and_the_registry_check() {
    let (client, ns) = setup("deadline").await;
    // The registry's token realm answers 9 s late, and so does /v2/ (the
    // check's HTTP client gives up on a request after 10 s).
    let realm_host = Hostile::start("127.0.0.1", None).await;
    let realm = realm_host.url("realm", "slow", &[("ms", "9000"), ("b", r#"{"token":"realm-tok"}"#)]);
    let registry = Hostile::start("127.0.0.1", Some(&realm)).await;
    registry.set_body("v2-delay-ms", "9000").await;
    let source = Hostile::start("127.0.0.1", None).await;
    let url = source.url("deadline", "slow", &[("ms", "27000"), ("b", r#"{"token":"dl-tok-{n}","expires_in":3600}"#)]);
    let operator = Operator::start_with(&ns.name, &["--mint-timeout-seconds=31"], &[]);
    let http = json!({
        "url": url, "allowInsecureHTTP": true, "timeout": "60s", "verify": true,
        "registries": [registry.host()],
    });
    create_credential(&client, &ns.name, "cred", json!({"source": {"http": http}})).await;

    let cr = wait_ready(&client, &ns.name, "cred", "False", Some("MintFailed"), Duration::from_secs(50)).await;
    let msg = &cr.ready().unwrap().message;
    assert!(msg.contains("within the attempt's 31s"), "{msg}");
    let st = cr.status.clone().unwrap();
    assert_eq!(st.failed_attempts, 1, "{st:?}");
    assert_eq!(requests(&source, "deadline").await, 1);
    assert!(requests(&registry, "v2").await >= 1, "the registry was never asked");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    assert!(secrets.get_opt("cred").await.unwrap().is_none(), "a Secret was written after the deadline");
    assert_no_secrets(&client, &ns.name, &operator, &["dl-tok-1".to_string()]).await;
}
