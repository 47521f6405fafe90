//! The ECR source against moto's ECR and STS (tests/peers/moto_ecr.py) and
//! real registries that accept what moto mints; Secrets proven with skopeo.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use regcred::api::RegistryCredential;
use serde_json::{json, Value};

use crate::support::*;

const DEFAULT_ACCOUNT: &str = "123456789012"; // moto's account for unknown keys
const ROLE_ACCOUNT: &str = "210987654321";
const TEAM_ACCOUNT: &str = "333333333333";
const SECRET_KEY: &str = "aws-secret-key-f00dfeed";

pub(crate) fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "AKIAOPERATOR00000001"),
        ("AWS_SECRET_ACCESS_KEY", "operator-secret-key-cafe01"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

fn ecr(moto: &MotoEcr, extra: Value) -> Value {
    let mut spec = json!({"region": "eu-west-1", "endpoint": moto.endpoint(), "stsEndpoint": moto.endpoint(), "allowInsecureHTTP": true});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"source": {"ecr": spec}})
}

async fn keys_secret(client: &kube::Client, ns: &str) {
    create_secret(client, ns, "aws-keys", json!({"AWS_ACCESS_KEY_ID": "AKIASTATIC0000000001", "AWS_SECRET_ACCESS_KEY": SECRET_KEY})).await;
}

/// A test namespace with the `aws-keys` Secret, moto (no proxyEndpoint
/// rewrites) and an operator watching the namespace.
async fn keys_setup(prefix: &str, ttl: u64) -> (kube::Client, TestNamespace, MotoEcr, Operator) {
    let (client, ns) = setup(prefix).await;
    let moto = MotoEcr::start(ttl, &[]).await;
    let operator = Operator::start_with(&ns.name, &["--aws-endpoint-overrides", &moto.endpoint()], &[]);
    keys_secret(&client, &ns.name).await;
    (client, ns, moto, operator)
}

fn leaks() -> Vec<String> {
    vec![
        SECRET_KEY.into(),
        "operator-secret-key-cafe01".into(),
        format!("{DEFAULT_ACCOUNT}-auth-token"),
        format!("{ROLE_ACCOUNT}-auth-token"),
        format!("{TEAM_ACCOUNT}-auth-token"),
    ]
}

#[tokio::test]
async fn every_credential_mode_yields_a_secret_that_pulls() {
    let (client, ns) = setup("ecr-modes").await;
    let (default_reg, default_image) = ecr_registry(DEFAULT_ACCOUNT).await;
    let (role_reg, role_image) = ecr_registry(ROLE_ACCOUNT).await;
    let (team_reg, team_image) = ecr_registry(TEAM_ACCOUNT).await;
    let moto = MotoEcr::start(43_200, &[
        (DEFAULT_ACCOUNT, format!("http://{}", default_reg.host)),
        (ROLE_ACCOUNT, format!("http://{}", role_reg.host)),
        (TEAM_ACCOUNT, format!("http://{}", team_reg.host)),
    ])
    .await;
    let operator = Operator::start_with(&ns.name, &["--ecr-identity-namespaces", &ns.name, "--aws-endpoint-overrides", &moto.endpoint()], &aws_env());
    keys_secret(&client, &ns.name).await;
    // The ServiceAccount opts in to web identity.
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "puller", "annotations": {"regcred.dev/web-identity": "true"}}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name).create(&PostParams::default(), &sa).await.unwrap();

    let role = format!("arn:aws:iam::{ROLE_ACCOUNT}:role/pull");
    let cases: Vec<(&str, Value, &Registry, &str)> = vec![
        ("operator-identity", json!({}), &default_reg, &default_image),
        ("static-keys", json!({"credentialsSecretRef": {"name": "aws-keys"}}), &default_reg, &default_image),
        ("operator-role", json!({"roleArn": role, "externalId": "ext-42"}), &role_reg, &role_image),
        ("keys-role", json!({"credentialsSecretRef": {"name": "aws-keys"}, "roleArn": role}), &role_reg, &role_image),
        ("web-identity", json!({"roleArn": format!("arn:aws:iam::{TEAM_ACCOUNT}:role/team"), "webIdentity": {"serviceAccountName": "puller"}}), &team_reg, &team_image),
    ];
    for (name, extra, _, _) in &cases {
        create_credential(&client, &ns.name, name, ecr(&moto, extra.clone())).await;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    for (name, _, reg, image) in &cases {
        let cr = wait_ready(&client, &ns.name, name, "True", Some("Rotated"), Duration::from_secs(60)).await;
        assert_eq!(cr.status.unwrap().registries, vec![reg.host.clone()], "{name}");
        let s = secrets.get(name).await.unwrap();
        skopeo_pull(&dockerconfig(&s), image).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(moto.calls("AssumeRole").await >= 2);
    assert_eq!(moto.calls("AssumeRoleWithWebIdentity").await, 1);
    assert_no_secrets(&client, &ns.name, &operator, &leaks()).await;
}

#[tokio::test]
async fn cross_account_role_and_several_registry_ids() {
    let (client, ns, moto, operator) = keys_setup("ecr-accounts", 43_200).await;
    create_credential(&client, &ns.name, "cross", ecr(&moto, json!({
        "credentialsSecretRef": {"name": "aws-keys"}, "roleArn": format!("arn:aws:iam::{ROLE_ACCOUNT}:role/pull")
    }))).await;
    create_credential(&client, &ns.name, "multi", ecr(&moto, json!({
        "credentialsSecretRef": {"name": "aws-keys"}, "registryIds": ["111111111111", "222222222222"]
    }))).await;
    let cross = wait_ready(&client, &ns.name, "cross", "True", None, Duration::from_secs(60)).await;
    assert_eq!(cross.status.unwrap().registries, vec![format!("{ROLE_ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com")]);
    wait_ready(&client, &ns.name, "multi", "True", None, Duration::from_secs(60)).await;
    let s = Api::<Secret>::namespaced(client.clone(), &ns.name).get("multi").await.unwrap();
    let v: Value = serde_json::from_slice(&dockerconfig(&s)).unwrap();
    let auths = v["auths"].as_object().unwrap();
    assert_eq!(auths.len(), 2);
    for id in ["111111111111", "222222222222"] {
        let e = &auths[&format!("{id}.dkr.ecr.eu-west-1.amazonaws.com")];
        assert_eq!(e["username"], "AWS");
        assert_eq!(e["password"], format!("{id}-auth-token"));
    }
    let mut l = leaks();
    l.extend(["111111111111-auth-token".to_string(), "222222222222-auth-token".to_string()]);
    assert_no_secrets(&client, &ns.name, &operator, &l).await;
}

#[tokio::test]
async fn operator_identity_is_refused_where_not_allowed() {
    let (client, ns) = setup("ecr-denied").await;
    let moto = MotoEcr::start(43_200, &[]).await;
    let operator = Operator::start_with(&ns.name, &["--ecr-identity-namespaces", "some-other-namespace", "--aws-endpoint-overrides", &moto.endpoint()], &aws_env());
    create_credential(&client, &ns.name, "borrow", ecr(&moto, json!({}))).await;
    let cr = wait_ready(&client, &ns.name, "borrow", "False", Some("IdentityNotAllowed"), Duration::from_secs(60)).await;
    assert!(cr.ready().unwrap().message.contains("may not be used from namespace"));
    assert_eq!(moto.calls("GetAuthorizationToken").await, 0, "something was minted");
    assert!(Api::<Secret>::namespaced(client.clone(), &ns.name).get_opt("borrow").await.unwrap().is_none());
    assert_no_secrets(&client, &ns.name, &operator, &leaks()).await;
}

#[tokio::test]
async fn fifty_credentials_share_one_token_per_lifetime() {
    let ttl = 40;
    let (client, ns, moto, operator) = keys_setup("ecr-shared", ttl).await;
    let n = 50;
    for i in 0..n {
        create_credential(&client, &ns.name, &format!("c{i:02}"), ecr(&moto, json!({"credentialsSecretRef": {"name": "aws-keys"}}))).await;
    }
    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), &ns.name);
    let all_ready = || async {
        let list = crs.list(&Default::default()).await.ok()?;
        let firsts: Vec<_> = list.items.iter().filter(|c| c.ready().is_some_and(|r| r.status == "True")).filter_map(|c| c.status.as_ref()?.not_after).collect();
        (firsts.len() == n).then_some(firsts)
    };
    let first = wait_for(Duration::from_secs(90), "50 credentials Ready", all_ready).await;
    assert_eq!(moto.calls("GetAuthorizationToken").await, 1, "50 credentials, one token");
    assert_eq!(first.iter().collect::<BTreeSet<_>>().len(), 1, "all hold the same token");
    // One lifetime later every credential has moved to the next token, minted once.
    let old = first[0];
    wait_for(Duration::from_secs(ttl + 20), "all 50 rotated", || async {
        let list = crs.list(&Default::default()).await.ok()?;
        list.items.iter().all(|c| c.status.as_ref().and_then(|s| s.not_after).is_some_and(|t| t > old)).then_some(())
    })
    .await;
    assert_eq!(moto.calls("GetAuthorizationToken").await, 2, "one more token for the second lifetime");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..n {
        let s = secrets.get(&format!("c{i:02}")).await.unwrap();
        assert_eq!(password_in(&s, &format!("{DEFAULT_ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com")), format!("{DEFAULT_ACCOUNT}-auth-token"));
    }
    assert_no_secrets(&client, &ns.name, &operator, &leaks()).await;
}

#[tokio::test]
async fn access_denied_and_throttling_keep_the_secret() {
    let (client, ns, moto, operator) = keys_setup("ecr-errors", 43_200).await;
    create_credential(&client, &ns.name, "cred", ecr(&moto, json!({"credentialsSecretRef": {"name": "aws-keys"}}))).await;
    wait_ready(&client, &ns.name, "cred", "True", None, Duration::from_secs(60)).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let kept = secrets.get("cred").await.unwrap();
    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), &ns.name);

    let ids = [vec![DEFAULT_ACCOUNT], vec![DEFAULT_ACCOUNT, "111111111111"]];
    for ((code, reason), ids) in [("AccessDeniedException", "AccessDenied"), ("ThrottlingException", "Throttled")].into_iter().zip(ids) {
        moto.fault("GetAuthorizationToken", Some(code)).await;
        let before = moto.calls("GetAuthorizationToken").await;
        // A changed source asks for a new token at once (after the least
        // interval between mints).
        let patch = json!({"spec": {"source": {"ecr": {"registryIds": ids}}}});
        crs.patch("cred", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        let cr = wait_ready(&client, &ns.name, "cred", "False", Some(reason), Duration::from_secs(60)).await;
        assert!(cr.ready().unwrap().message.contains(code), "{}", cr.ready().unwrap().message);
        let calls = moto.calls("GetAuthorizationToken").await - before;
        // The SDK's retries are bounded (3 attempts per mint at most).
        assert!((1..=3).contains(&calls), "{code}: {calls} calls for one attempt");
        let s = secrets.get("cred").await.unwrap();
        assert_eq!(s.metadata.resource_version, kept.metadata.resource_version, "{code}: the Secret was touched");
    }
    moto.fault("GetAuthorizationToken", None).await;
    wait_ready(&client, &ns.name, "cred", "True", Some("Rotated"), Duration::from_secs(90)).await;
    assert_no_secrets(&client, &ns.name, &operator, &leaks()).await;
}

#[tokio::test]
async fn short_lived_ecr_tokens_rotate_before_expiry() {
    let ttl = 20;
    let (client, ns, moto, operator) = keys_setup("ecr-rotate", ttl).await;
    create_credential(&client, &ns.name, "cred", ecr(&moto, json!({"credentialsSecretRef": {"name": "aws-keys"}}))).await;
    wait_ready(&client, &ns.name, "cred", "True", None, Duration::from_secs(60)).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let uid = secrets.get("cred").await.unwrap().metadata.uid;
    let mut expiries = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(100);
    while expiries.len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "only {} tokens in 100 s", expiries.len());
        let s = secrets.get("cred").await.unwrap();
        assert_eq!(s.metadata.uid, uid);
        let not_after = annotation_time(&s, "regcred.dev/not-after");
        assert!(Utc::now() < not_after, "the Secret holds an expired token");
        expiries.insert(not_after);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(moto.calls("GetAuthorizationToken").await >= 4);
    assert_no_secrets(&client, &ns.name, &operator, &leaks()).await;
}

#[tokio::test]
async fn ecr_public_at_the_http_level() {
    // moto has no ECR Public: tests/peers/moto_ecr.py answers its
    // GetAuthorizationToken at the HTTP level, which is all this checks.
    let (client, ns, moto, operator) = keys_setup("ecr-public", 43_200).await;
    let spec = json!({"source": {"ecr": {"region": "us-east-1", "public": true, "endpoint": moto.endpoint(), "allowInsecureHTTP": true, "credentialsSecretRef": {"name": "aws-keys"}}}});
    create_credential(&client, &ns.name, "pub", spec).await;
    let cr = wait_ready(&client, &ns.name, "pub", "True", None, Duration::from_secs(60)).await;
    assert_eq!(cr.status.unwrap().registries, vec!["public.ecr.aws".to_string()]);
    let s = Api::<Secret>::namespaced(client.clone(), &ns.name).get("pub").await.unwrap();
    assert_eq!(password_in(&s, "public.ecr.aws"), "ecr-public-token");
    let mut l = leaks();
    l.push("ecr-public-token".into());
    assert_no_secrets(&client, &ns.name, &operator, &l).await;
}
