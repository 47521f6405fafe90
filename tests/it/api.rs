//! The API as the real API server sees it: the CRD installs, valid
//! credentials round-trip unchanged, invalid ones are rejected naming the
//! field, `kubectl explain` shows the docs, garbage collection runs.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use regcred::api::RegistryCredential;
use serde_json::{json, Value};

use crate::support::{control_plane, install_crd, namespace, wait_for};

fn credential(name: &str, spec: Value) -> RegistryCredential {
    serde_json::from_value(json!({
        "apiVersion": "regcred.dev/v1alpha1",
        "kind": "RegistryCredential",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn valid_specs() -> Vec<(&'static str, Value)> {
    vec![
        ("ecr", json!({
            "source": {"ecr": {
                "region": "eu-west-1",
                "registryIds": ["123456789012", "210987654321"],
                "roleArn": "arn:aws:iam::123456789012:role/pull",
                "externalId": "ext-1",
                "credentialsSecretRef": {"name": "aws-keys"}
            }},
            "renewBefore": "1h",
            "secretTemplate": {"labels": {"team": "shop"}, "annotations": {"note": "x"}}
        })),
        ("ecr-web", json!({
            "source": {"ecr": {
                "region": "us-east-1",
                "roleArn": "arn:aws:iam::123456789012:role/team",
                "webIdentity": {"serviceAccountName": "puller", "audience": "sts.amazonaws.com"},
                "endpoint": "http://127.0.0.1:5000",
                "allowInsecureHTTP": true
            }}
        })),
        ("oauth2", json!({
            "secretName": "oauth-pull",
            "source": {"oauth2": {
                "tokenURL": "https://auth.example.com/oauth/token",
                "clientSecretRef": {"name": "client", "clientIdKey": "id"},
                "authMethod": "client_secret_post",
                "scopes": ["registry:read"],
                "audience": "registry",
                "extraParams": {"resource": "r"},
                "username": "oauth2accesstoken",
                "registries": ["registry.example.com"],
                "tls": {"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}},
                "timeout": "5s"
            }},
            "renewBeforePercentage": 40
        })),
        ("http", json!({
            "source": {"http": {
                "url": "https://registry.example.com/token",
                "method": "GET",
                "query": {"service": "registry.example.com", "scope": "repository:app:pull"},
                "headers": [{"name": "X-Api-Key", "valueFrom": {"name": "api", "key": "key"}}, {"name": "X-Client", "value": "regcred"}],
                "auth": {"basic": {"name": "robot"}},
                "response": {"passwordPointer": "/token", "expiresInPointer": "/expires_in", "defaultLifetime": "5m"},
                "registries": ["registry.example.com:5000"]
            }}
        })),
        ("basic", json!({
            "source": {"basic": {
                "secretRef": {"name": "dockerhub-token", "usernameKey": "user"},
                "registries": ["https://index.docker.io/v1/", "ghcr.io"],
                "refreshInterval": "30m"
            }}
        })),
    ]
}

#[tokio::test]
async fn crd_installs_and_valid_credentials_round_trip() {
    let cp = control_plane();
    let client = cp.client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "api-valid").await;
    let api: Api<RegistryCredential> = Api::namespaced(client, &ns.name);
    for (name, spec) in valid_specs() {
        let created = api
            .create(&PostParams::default(), &credential(name, spec.clone()))
            .await
            .unwrap_or_else(|e| panic!("{name} rejected: {e}"));
        let read = api.get(name).await.unwrap();
        assert_eq!(read.metadata.uid, created.metadata.uid);
        // What the server stored is exactly what was sent: nothing pruned or defaulted.
        let stored = serde_json::to_value(&read.spec).unwrap();
        assert_eq!(stored, spec, "{name} changed on the way through the API server");
    }
}

#[tokio::test]
async fn invalid_credentials_are_rejected_naming_the_field() {
    let cp = control_plane();
    let client = cp.client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "api-invalid").await;
    // Untyped, so specs the Rust types would refuse still reach the server.
    let ar = ApiResource::erase::<RegistryCredential>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns.name, &ar);
    let basic = json!({"secretRef": {"name": "s"}, "registries": ["r.example.com"]});
    let oauth2 = |url: &str| json!({"tokenURL": url, "clientSecretRef": {"name": "c"}, "registries": ["r.example.com"]});
    // (case, spec, what the message must contain)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("no-source", json!({"source": {}}), vec!["spec.source", "exactly one of ecr, oauth2, http, basic or rotate"]),
        ("two-sources", json!({"source": {"basic": basic, "oauth2": oauth2("https://a.example/t")}}), vec!["spec.source", "exactly one of"]),
        ("bad-duration", json!({"source": {"basic": basic}, "renewBefore": "an hour"}), vec!["spec.renewBefore", "should match"]),
        ("percentage-0", json!({"source": {"basic": basic}, "renewBeforePercentage": 0}), vec!["spec.renewBeforePercentage", "greater than or equal to 1"]),
        ("percentage-100", json!({"source": {"basic": basic}, "renewBeforePercentage": 100}), vec!["spec.renewBeforePercentage", "less than or equal to 99"]),
        ("both-renewals", json!({"source": {"basic": basic}, "renewBefore": "1h", "renewBeforePercentage": 30}), vec!["spec:", "renewBefore and renewBeforePercentage are mutually exclusive"]),
        ("http-oauth2", json!({"source": {"oauth2": oauth2("http://auth.example/t")}}), vec!["spec.source.oauth2.tokenURL", "must use https://"]),
        ("http-generic", json!({"source": {"http": {"url": "http://auth.example/t", "registries": ["r.example.com"]}}}), vec!["spec.source.http.url", "must use https://"]),
        ("http-ecr-endpoint", json!({"source": {"ecr": {"region": "eu-west-1", "endpoint": "http://127.0.0.1:1"}}}), vec!["spec.source.ecr.endpoint", "must use https://"]),
        ("bad-secret-name", json!({"secretName": "Not_A_Name", "source": {"basic": basic}}), vec!["spec.secretName", "should match"]),
        ("empty-region", json!({"source": {"ecr": {"region": ""}}}), vec!["spec.source.ecr.region", "at least 1 chars"]),
        ("bad-region", json!({"source": {"ecr": {"region": "Europe"}}}), vec!["spec.source.ecr.region", "should match"]),
        ("bad-registry-id", json!({"source": {"ecr": {"region": "eu-west-1", "registryIds": ["12345"]}}}), vec!["spec.source.ecr.registryIds[0]", "should match"]),
        ("web-identity-without-role", json!({"source": {"ecr": {"region": "eu-west-1", "webIdentity": {"serviceAccountName": "sa"}}}}), vec!["spec.source.ecr", "webIdentity requires roleArn"]),
        ("no-registries", json!({"source": {"basic": {"secretRef": {"name": "s"}, "registries": []}}}), vec!["spec.source.basic.registries", "at least 1 items"]),
        ("empty-secret-ref", json!({"source": {"basic": {"secretRef": {"name": ""}, "registries": ["r.example.com"]}}}), vec!["spec.source.basic.secretRef.name", "at least 1 chars"]),
        ("missing-token-url", json!({"source": {"oauth2": {"clientSecretRef": {"name": "c"}, "registries": ["r.example.com"]}}}), vec!["spec.source.oauth2.tokenURL", "Required value"]),
        ("bad-auth-method", json!({"source": {"oauth2": {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}, "registries": ["r.example.com"], "authMethod": "private_key_jwt"}}}), vec!["spec.source.oauth2.authMethod", "Unsupported value"]),
        ("header-value-and-from", json!({"source": {"http": {"url": "https://a.example/t", "registries": ["r.example.com"], "headers": [{"name": "X", "value": "v", "valueFrom": {"name": "s", "key": "k"}}]}}}), vec!["spec.source.http.headers[0]", "exactly one of value or valueFrom"]),
        ("bad-registry-host", json!({"source": {"basic": {"secretRef": {"name": "s"}, "registries": ["not a host"]}}}), vec!["spec.source.basic.registries[0]", "should match"]),
        // rotate: bounded lifetimes and grace, known scopes, one vendor
        ("rotate-two-vendors", json!({"source": {"rotate": {"adminSecretRef": {"name": "a"}, "dockerHub": {}, "gitlab": {"project": "g/p"}}}}), vec!["spec.source.rotate", "exactly one of dockerHub, harbor or gitlab"]),
        ("rotate-short-life", json!({"source": {"rotate": {"adminSecretRef": {"name": "a"}, "dockerHub": {}, "lifetime": "1h"}}}), vec!["spec.source.rotate.lifetime", "between 24h and 8760h"]),
        ("rotate-long-life", json!({"source": {"rotate": {"adminSecretRef": {"name": "a"}, "dockerHub": {}, "lifetime": "9000h"}}}), vec!["spec.source.rotate.lifetime", "between 24h and 8760h"]),
        ("rotate-long-grace", json!({"source": {"rotate": {"adminSecretRef": {"name": "a"}, "dockerHub": {}, "grace": "25h"}}}), vec!["spec.source.rotate.grace", "at most 24h"]),
        ("rotate-hub-scope", json!({"source": {"rotate": {"adminSecretRef": {"name": "a"}, "dockerHub": {"scopes": ["repo:admin"]}}}}), vec!["spec.source.rotate.dockerHub.scopes[0]", "Unsupported value"]),
        ("rotate-gitlab-scope", json!({"source": {"rotate": {"adminSecretRef": {"name": "a"}, "gitlab": {"project": "g/p", "scopes": ["api"]}}}}), vec!["spec.source.rotate.gitlab.scopes[0]", "Unsupported value"]),
        ("rotate-gitlab-level", json!({"source": {"rotate": {"adminSecretRef": {"name": "a"}, "gitlab": {"project": "g/p", "accessLevel": 40}}}}), vec!["spec.source.rotate.gitlab.accessLevel", "less than or equal to 30"]),
        ("rotate-harbor-no-url", json!({"source": {"rotate": {"adminSecretRef": {"name": "a"}, "harbor": {"project": "library"}, "registries": ["h.example"]}}}), vec!["spec.source.rotate", "harbor needs url"]),
        ("rotate-http-url", json!({"source": {"rotate": {"adminSecretRef": {"name": "a"}, "harbor": {"project": "library"}, "url": "http://h.example", "registries": ["h.example"]}}}), vec!["spec.source.rotate.url", "must use https://"]),
    ];
    assert!(cases.len() >= 10);
    let mut distinct = std::collections::BTreeSet::new();
    for (name, spec, wants) in cases {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(&format!("{name} was accepted"));
        let kube::Error::Api(status) = err else { panic!("{name}: not an API error: {err}") };
        assert_eq!(status.code, 422, "{name}: {}", status.message);
        for want in wants {
            assert!(status.message.contains(want), "{name}: {want:?} not in {:?}", status.message);
        }
        distinct.insert(status.message);
    }
    assert!(distinct.len() >= 10, "only {} distinct rejections", distinct.len());
    // Nothing of the rejected objects was stored.
    assert!(api.list(&Default::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn kubectl_explain_shows_the_user_docs() {
    let cp = control_plane();
    let client = cp.client().await;
    install_crd(&client).await;
    // Discovery in kubectl may lag the CRD by a moment.
    let mut last = String::new();
    for _ in 0..50 {
        let (ok, out, err) = cp.kubectl_output(&["explain", "registrycredential.spec.source"]);
        if ok {
            assert!(out.contains("Set exactly one of `ecr`, `oauth2`,"), "{out}");
            assert!(out.contains("Mint a 12-hour token with AWS ECR"), "{out}");
            let (ok, out, _) = cp.kubectl_output(&["explain", "regcred.spec.source.oauth2.tokenURL"]);
            assert!(ok);
            assert!(out.contains("Token endpoint URL."), "{out}");
            return;
        }
        last = err;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("kubectl explain failed: {last}");
}

#[tokio::test]
async fn garbage_collection_removes_owned_objects() {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = namespace(&client, "api-gc").await;
    let owners: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let owner = owners
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap())
        .await
        .unwrap();
    let owned: Secret = serde_json::from_value(json!({
        "metadata": {"name": "owned", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
            "uid": owner.metadata.uid.clone().unwrap(), "controller": true
        }]},
        "stringData": {"k": "v"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &owned).await.unwrap();
    let bystander: Secret = serde_json::from_value(json!({"metadata": {"name": "bystander"}})).unwrap();
    secrets.create(&PostParams::default(), &bystander).await.unwrap();

    owners.delete("owner", &DeleteParams::default()).await.unwrap();
    wait_for(Duration::from_secs(90), "the owned Secret to be collected", || async {
        secrets.get_opt("owned").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(secrets.get_opt("bystander").await.unwrap().is_some(), "GC took a Secret it did not own");
}
