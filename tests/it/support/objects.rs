//! Helpers for the objects tests create and inspect.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, PostParams};
use kube::Client;
use regcred::api::RegistryCredential;
use serde_json::{json, Value};

use super::{control_plane, install_crd, namespace, Operator, TestNamespace};

pub async fn setup(prefix: &str) -> (Client, TestNamespace) {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let ns = namespace(&client, prefix).await;
    (client, ns)
}

pub async fn create_secret(client: &Client, ns: &str, name: &str, data: Value) {
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &s).await.unwrap();
}

pub async fn create_credential(client: &Client, ns: &str, name: &str, spec: Value) {
    let cr: RegistryCredential = serde_json::from_value(json!({
        "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    Api::<RegistryCredential>::namespaced(client.clone(), ns).create(&PostParams::default(), &cr).await.unwrap();
}

/// Wait until the Ready condition has this status (and reason, when given).
/// On time-out, the panic says what the condition was.
pub async fn wait_ready(client: &Client, ns: &str, name: &str, status: &str, reason: Option<&str>, timeout: Duration) -> RegistryCredential {
    let api: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let cr = api.get(name).await.ok();
        if let Some(c) = cr.as_ref().and_then(|cr| cr.ready()) {
            if c.status == status && reason.is_none_or(|r| c.reason == r) {
                return cr.unwrap();
            }
        }
        if tokio::time::Instant::now() > deadline {
            let last = cr.and_then(|c| c.ready().cloned()).map(|c| format!("{} {}: {}", c.status, c.reason, c.message));
            panic!("timed out after {timeout:?} waiting for {name} Ready={status} {reason:?}; last seen: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn dockerconfig(secret: &Secret) -> Vec<u8> {
    secret.data.as_ref().unwrap()[".dockerconfigjson"].0.clone()
}

pub fn password_in(secret: &Secret, registry: &str) -> String {
    let v: Value = serde_json::from_slice(&dockerconfig(secret)).unwrap();
    v["auths"][registry]["password"].as_str().unwrap().to_string()
}

pub fn annotation_time(secret: &Secret, key: &str) -> DateTime<Utc> {
    let a = secret.metadata.annotations.as_ref().unwrap();
    DateTime::parse_from_rfc3339(&a[key]).unwrap().with_timezone(&Utc)
}

/// Everything a user could read about the credential: operator logs, Events
/// and the RegistryCredential's status. None of it may hold a secret.
pub async fn assert_no_secrets(client: &Client, ns: &str, operator: &Operator, secrets: &[String]) {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let events = events.list(&Default::default()).await.unwrap();
    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    let statuses = serde_json::to_string(&crs.list(&Default::default()).await.unwrap().items.iter().map(|c| &c.status).collect::<Vec<_>>()).unwrap();
    let texts = [
        ("operator logs", operator.logs()),
        ("events", serde_json::to_string(&events.items).unwrap()),
        ("status", statuses),
    ];
    assert!(!texts[0].1.is_empty(), "no operator logs captured");
    for s in secrets.iter().filter(|s| s.len() >= 6) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(s);
        for (what, text) in &texts {
            assert!(!text.contains(s.as_str()), "a secret leaked into the {what}");
            assert!(!text.contains(&b64), "a base64 secret leaked into the {what}");
        }
    }
}


/// The client Secret and an `oauth2` RegistryCredential named `cred` against
/// `server` (client_secret_basic), once Ready.
pub async fn ready_oauth2_credential(client: &Client, ns: &str, server: &super::OAuth2Server) -> RegistryCredential {
    create_secret(client, ns, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    create_credential(client, ns, "cred", json!({"source": {"oauth2": {
        "tokenURL": server.token_url(), "allowInsecureHTTP": true,
        "clientSecretRef": {"name": "client"}, "registries": ["registry.example.com"]
    }}})).await;
    wait_ready(client, ns, "cred", "True", None, Duration::from_secs(60)).await
}
