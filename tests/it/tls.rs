//! The https path, the only one production uses, against the real peers
//! serving TLS with a CA the tests make: the OAuth2 server (also demanding a
//! client certificate), docker-registry with htpasswd and with token
//! authentication, and distribution's token server. skopeo verifies the
//! chain when it pulls with the written Secrets. (Wrong host names and
//! expired certificates are in the hostile suite.)

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support::*;

/// The CA bundle Secret `ca` and the client certificate Secret `client-cert`.
async fn tls_secrets(client: &kube::Client, ns: &str, certs: &TestCerts) {
    create_secret(client, ns, "ca", json!({"ca.crt": certs.pem("ca.crt")})).await;
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "client-cert"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": certs.pem("client.crt"), "tls.key": certs.pem("client.key")}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &s).await.unwrap();
}

fn key_line(certs: &TestCerts) -> String {
    certs.pem("client.key").lines().nth(1).unwrap().to_string()
}

/// An OAuth2 server over https (demanding client certificates when
/// `mutual`), an operator, and the Secrets `client`, `ca`, `client-cert`.
async fn oauth2_tls_setup(prefix: &str, mutual: bool) -> (kube::Client, TestNamespace, TestCerts, OAuth2Server, Operator) {
    let (client, ns) = setup(prefix).await;
    let certs = TestCerts::new();
    let server = OAuth2Server::start_tls(300, &certs, mutual).await;
    let operator = Operator::start(&ns.name);
    tls_secrets(&client, &ns.name, &certs).await;
    create_secret(&client, &ns.name, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    (client, ns, certs, server, operator)
}

fn oauth2_spec(server: &OAuth2Server, tls: serde_json::Value) -> serde_json::Value {
    json!({"source": {"oauth2": {
        "tokenURL": server.token_url(), "clientSecretRef": {"name": "client"},
        "registries": ["registry.example.com"], "tls": tls
    }}})
}

/// `ok` becomes Ready with a token the server calls active; `refused` fails
/// with a message holding `words`; only one token request reached the server.
async fn one_works_one_is_refused(client: &kube::Client, ns: &str, server: &OAuth2Server, ok: &str, refused: &str, words: &[&str]) -> String {
    wait_ready(client, ns, ok, "True", Some("Rotated"), Duration::from_secs(60)).await;
    let s = Api::<Secret>::namespaced(client.clone(), ns).get(ok).await.unwrap();
    let token = password_in(&s, "registry.example.com");
    assert!(server.active(&token).await, "{ok}: the token minted over https is not active");
    let cr = wait_ready(client, ns, refused, "False", Some("MintFailed"), Duration::from_secs(60)).await;
    let msg = &cr.ready().unwrap().message;
    assert!(words.iter().all(|w| msg.contains(w)), "{refused}: {msg}");
    // The refused handshake sent no token request.
    assert_eq!(server.stats().await.0, 1, "token requests at the server");
    token
}

#[tokio::test]
async fn oauth2_over_https_with_a_private_ca() {
    let (client, ns, certs, server, operator) = oauth2_tls_setup("tls-oauth2", false).await;
    create_credential(&client, &ns.name, "trusted", oauth2_spec(&server, json!({"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}}))).await;
    create_credential(&client, &ns.name, "untrusted", oauth2_spec(&server, json!({}))).await;
    let token = one_works_one_is_refused(&client, &ns.name, &server, "trusted", "untrusted", &["not signed by a trusted CA"]).await;
    assert_no_secrets(&client, &ns.name, &operator, &[server.secret.clone(), token, key_line(&certs)]).await;
}

#[tokio::test]
async fn oauth2_server_demanding_a_client_certificate() {
    let (client, ns, certs, server, operator) = oauth2_tls_setup("tls-mtls", true).await;
    create_credential(&client, &ns.name, "with-cert", oauth2_spec(&server, json!({
        "caBundleSecretRef": {"name": "ca", "key": "ca.crt"}, "clientCertificateSecretRef": {"name": "client-cert"}
    }))).await;
    create_credential(&client, &ns.name, "without-cert", oauth2_spec(&server, json!({"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}}))).await;
    let token = one_works_one_is_refused(&client, &ns.name, &server, "with-cert", "without-cert", &["TLS", "client certificate"]).await;
    assert_no_secrets(&client, &ns.name, &operator, &[server.secret.clone(), token, key_line(&certs)]).await;
}

#[tokio::test]
async fn registries_and_token_server_over_https() {
    let (client, ns) = setup("tls-registry").await;
    let certs = TestCerts::new();
    let robot_pw = "robot-pw-tls-5e6f";
    let plain = Registry::htpasswd_tls(&[("robot", robot_pw)], &certs).await;
    let plain_image = plain.push_test_image("app", "robot", robot_pw);
    let tokened = Registry::token_auth_tls(&[("robot", robot_pw)], &certs).await;
    let tokened_image = tokened.push_test_image("robot/app", "robot", robot_pw);
    let operator = Operator::start(&ns.name);
    tls_secrets(&client, &ns.name, &certs).await;
    create_secret(&client, &ns.name, "robot", json!({"username": "robot", "password": robot_pw})).await;
    let ca = json!({"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}});
    // basic, verified against each registry over https (the token-auth one
    // through its token server), and once without the CA.
    create_credential(&client, &ns.name, "htpasswd", json!({"source": {"basic": {
        "secretRef": {"name": "robot"}, "registries": [plain.host], "tls": ca
    }}})).await;
    create_credential(&client, &ns.name, "token-auth", json!({"source": {"basic": {
        "secretRef": {"name": "robot"}, "registries": [tokened.host], "tls": ca
    }}})).await;
    create_credential(&client, &ns.name, "no-ca", json!({"source": {"basic": {
        "secretRef": {"name": "robot"}, "registries": [plain.host]
    }}})).await;
    // http: a token from the token server over https.
    create_credential(&client, &ns.name, "jwt", json!({"source": {"http": {
        "url": tokened.token_server.clone().unwrap(),
        "query": {"service": "regcred-test-registry", "scope": "repository:robot/app:pull"},
        "auth": {"basic": {"name": "robot"}}, "registries": [tokened.host], "tls": ca
    }}})).await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    for (name, reg, image) in [("htpasswd", &plain, &plain_image), ("token-auth", &tokened, &tokened_image)] {
        wait_ready(&client, &ns.name, name, "True", Some("Rotated"), Duration::from_secs(60)).await;
        let s = secrets.get(name).await.unwrap();
        let dir = reg.cert_dir.as_ref().unwrap();
        skopeo_pull_tls(&dockerconfig(&s), image, dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The check can fail: a wrong password does not pull over https either.
    let wrong = json!({"auths": {plain.host.clone(): {"username": "robot", "password": "nope-nope"}}});
    assert!(skopeo_pull_tls(wrong.to_string().as_bytes(), &plain_image, plain.cert_dir.as_ref().unwrap()).is_err());
    let cr = wait_ready(&client, &ns.name, "no-ca", "False", Some("MintFailed"), Duration::from_secs(60)).await;
    assert!(cr.ready().unwrap().message.contains("not signed by a trusted CA"), "{}", cr.ready().unwrap().message);
    assert!(secrets.get_opt("no-ca").await.unwrap().is_none());
    let cr = wait_ready(&client, &ns.name, "jwt", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let jwt = password_in(&secrets.get("jwt").await.unwrap(), &tokened.host);
    assert_eq!(jwt.split('.').count(), 3, "a JWT from the token server");
    assert!(cr.status.unwrap().not_after.is_some());
    assert_no_secrets(&client, &ns.name, &operator, &[robot_pw.into(), jwt, key_line(&certs)]).await;
}
