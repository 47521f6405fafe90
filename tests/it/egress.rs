//! One egress policy for every connection regcred makes: through a real
//! forward proxy (tinyproxy), in the AWS SDK's client, in the CLI, in
//! metadata discovery. "Denied" addresses are the sealed run's stand-ins on
//! its loopback (tests/seal/sealed.sh), reached by the test names it puts
//! in the run's /etc/hosts.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;

use crate::day2::cli_with;
use crate::support::*;

fn message(cr: &regcred::api::RegistryCredential) -> String {
    cr.ready().map(|c| c.message.clone()).unwrap_or_default()
}

/// `h`'s URL for `case` with the host replaced by `name` (a test name that
/// resolves to `h`'s address).
fn by_name(h: &Hostile, name: &str, case: &str, body: &str) -> String {
    let addr = h.host();
    let ip = addr.rsplit_once(':').unwrap().0;
    h.url(case, "body", &[("b", body)]).replacen(ip, name, 1)
}

/// The sealed run's test names resolve to its stand-ins; unsealed, the
/// test is skipped with a printed reason.
fn test_names() -> bool {
    if !sealed() {
        println!("skipped: needs the sealed run's test names (tests/seal/sealed.sh), which resolve to its stand-ins");
    }
    sealed()
}

fn http_source(url: &str) -> serde_json::Value {
    json!({"source": {"http": {"url": url, "allowInsecureHTTP": true, "registries": ["registry.example.com"]}}})
}

/// The variables a cluster-wide proxy (OpenShift's) injects into operator
/// Pods; `NO_PROXY` names the API server (127.0.0.1 here).
fn openshift_proxy_env(proxy: &Tinyproxy) -> Vec<(&'static str, String)> {
    vec![
        ("HTTP_PROXY", proxy.url.clone()),
        ("HTTPS_PROXY", proxy.url.clone()),
        ("NO_PROXY", "127.0.0.1,localhost,.cluster.local,.svc,10.96.0.0/12".to_string()),
    ]
}

#[tokio::test]
async fn a_proxy_carries_token_requests_but_not_past_the_egress_policy() {
    if !test_names() {
        return;
    }
    let (client, ns) = setup("egress-proxy").await;
    // The proxy and the token servers on loopback addresses NO_PROXY does not name.
    let proxy = Tinyproxy::start("127.0.0.4").await;
    let allowed = Hostile::start("127.0.0.2", None).await;
    let metadata = metadata_standin();
    let denied = Hostile::start(&metadata, None).await;
    let env = openshift_proxy_env(&proxy);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // An admin-allowed AWS override by a name that leads to the stand-in
    // (the SDK honours the proxy variables too).
    let aws_named = by_name(&denied, "metadata.regcred.test", "aws", "").split("/c/").next().unwrap().to_string();
    let operator = Operator::start_with(&ns.name, &["--egress-deny-cidrs", &format!("169.254.0.0/16,{metadata}/32"), "--aws-endpoint-overrides", &aws_named], &env);
    create_secret(&client, &ns.name, "aws-keys", json!({"AWS_ACCESS_KEY_ID": "AKIASTATIC0000000001", "AWS_SECRET_ACCESS_KEY": "aws-secret-key-proxy-4"})).await;
    create_credential(&client, &ns.name, "aws-to-metadata", json!({"source": {"ecr": {"region": "eu-west-1", "endpoint": aws_named,
        "allowInsecureHTTP": true, "credentialsSecretRef": {"name": "aws-keys"}}}})).await;

    let body = r#"{"token":"proxied-tok-{n}","expires_in":3600}"#;
    create_credential(&client, &ns.name, "through-proxy", http_source(&by_name(&allowed, "tokens.regcred.test", "ok", body))).await;
    // The same over https (CONNECT through the proxy), the test CA from a Secret.
    let certs = TestCerts::new();
    let allowed_tls = Hostile::start_tls_on(&certs, "127.0.0.2").await;
    create_secret(&client, &ns.name, "ca", json!({"ca.crt": certs.pem("ca.crt")})).await;
    let https_url = by_name(&allowed_tls, "tokens.regcred.test", "tls", body);
    create_credential(&client, &ns.name, "https-through-proxy", json!({"source": {"http": {"url": https_url, "registries": ["registry.example.com"],
        "tls": {"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}}}}})).await;
    create_credential(&client, &ns.name, "to-metadata", http_source(&by_name(&denied, "metadata.regcred.test", "stolen", body))).await;
    create_credential(&client, &ns.name, "metadata-literal", http_source(&denied.url("literal", "body", &[("b", body)]))).await;

    // The allowed host works through the proxy.
    wait_ready(&client, &ns.name, "through-proxy", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let s = Api::<Secret>::namespaced(client.clone(), &ns.name).get("through-proxy").await.unwrap();
    assert!(password_in(&s, "registry.example.com").starts_with("proxied-tok-"));
    let asked = proxy.requests();
    assert!(asked.iter().any(|r| r.starts_with("GET http://tokens.regcred.test:") && r.contains("/c/ok/body")), "the proxy carried: {asked:?}");
    wait_ready(&client, &ns.name, "https-through-proxy", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let tls_port = allowed_tls.host().rsplit_once(':').unwrap().1.to_string();
    let asked = proxy.requests();
    assert!(asked.iter().any(|r| r.starts_with(&format!("CONNECT tokens.regcred.test:{tls_port} "))), "the proxy carried: {asked:?}");

    // A name that resolves to a denied address is refused before the proxy is asked.
    for name in ["to-metadata", "metadata-literal", "aws-to-metadata"] {
        let cr = wait_ready(&client, &ns.name, name, "False", Some("EgressDenied"), Duration::from_secs(60)).await;
        assert!(message(&cr).contains("is denied by the operator's egress policy"), "{name}: {}", message(&cr));
    }
    assert!(message(&wait_ready(&client, &ns.name, "to-metadata", "False", None, Duration::from_secs(5)).await).contains("metadata.regcred.test"));
    let asked = proxy.requests();
    assert!(!asked.iter().any(|r| r.contains("metadata.regcred.test") || r.contains(&metadata)), "the proxy was asked for the denied host: {asked:?}");
    assert_eq!(denied.total().await, 0, "the denied stand-in was reached");
    // The API server is in NO_PROXY: the operator reached it directly.
    assert!(!asked.iter().any(|r| r.contains("127.0.0.1:")), "the API server connection went through the proxy: {asked:?}");
    assert!(operator.logs().contains("watching RegistryCredentials"), "the operator did not start behind the proxy");
    assert_no_secrets(&client, &ns.name, &operator, &["proxied-tok-".to_string(), "aws-secret-key-proxy-4".to_string()]).await;
}

#[tokio::test]
async fn the_api_server_is_reached_through_the_proxy_unless_no_proxy_names_it() {
    let (_client, ns) = setup("egress-api-proxy").await;
    let proxy = Tinyproxy::start("127.0.0.4").await;
    // No NO_PROXY: the commands reach the API server through the proxy (CONNECT).
    let (code, _, err) = cli_with(&["status", "-n", &ns.name], &[("HTTPS_PROXY", &proxy.url), ("NO_PROXY", ""), ("no_proxy", "")]);
    assert_eq!(code, 0, "{err}");
    let asked = proxy.requests();
    assert!(asked.iter().any(|r| r.starts_with("CONNECT 127.0.0.1:")), "the proxy carried: {asked:?}");
    // NO_PROXY names it: straight there.
    let before = asked.len();
    let (code, _, err) = cli_with(&["status", "-n", &ns.name], &[("HTTPS_PROXY", &proxy.url), ("NO_PROXY", "localhost,127.0.0.1"), ("no_proxy", "")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(proxy.requests().len(), before, "NO_PROXY names the API server, yet the proxy was asked: {:?}", proxy.requests());
}

#[tokio::test]
async fn an_aws_endpoint_override_by_name_obeys_the_egress_policy() {
    let (client, ns) = setup("egress-aws").await;
    let moto = MotoEcr::start(43_200, &[]).await;
    // The admin allows the override by name, and denies the address the
    // name resolves to (localhost: 127.0.0.1, where moto listens).
    let named = format!("http://localhost:{}", moto.port);
    let operator = Operator::start_with(
        &ns.name,
        &["--aws-endpoint-overrides", &named, "--egress-deny-cidrs", "127.0.0.0/8,::1/128", "--ecr-role-arns", "arn:aws:iam::210987654321:role/pull*"],
        &[],
    );
    create_secret(&client, &ns.name, "aws-keys", json!({"AWS_ACCESS_KEY_ID": "AKIASTATIC0000000001", "AWS_SECRET_ACCESS_KEY": "aws-secret-key-egress1"})).await;
    let ecr = |extra: serde_json::Value| {
        let mut spec = json!({"region": "eu-west-1", "endpoint": named, "allowInsecureHTTP": true, "credentialsSecretRef": {"name": "aws-keys"}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"source": {"ecr": spec}})
    };
    create_credential(&client, &ns.name, "ecr-by-name", ecr(json!({}))).await;
    create_credential(&client, &ns.name, "sts-by-name", ecr(json!({"stsEndpoint": named, "roleArn": "arn:aws:iam::210987654321:role/pull"}))).await;
    for name in ["ecr-by-name", "sts-by-name"] {
        let cr = wait_ready(&client, &ns.name, name, "False", Some("EgressDenied"), Duration::from_secs(60)).await;
        assert!(message(&cr).contains("egress to localhost is denied"), "{name}: {}", message(&cr));
    }
    assert_eq!(moto.calls("GetAuthorizationToken").await, 0, "ECR was asked");
    assert_eq!(moto.calls("AssumeRole").await, 0, "STS was asked");
    assert_no_secrets(&client, &ns.name, &operator, &["aws-secret-key-egress1".to_string()]).await;
}

#[tokio::test]
async fn mint_reads_secrets_only_inside_its_secrets_dir() {
    let (_client, ns) = setup("egress-mint-dir").await;
    // A token server that captures what it is sent (counted per case).
    let capture = Hostile::start("127.0.0.1", None).await;
    let base = TempDir::new("mint-dir");
    let inside = base.join("secrets");
    for (dir, secret) in [(inside.join("client"), "inside-client-secret-3"), (base.join("outside"), "outside-client-secret-7")] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("client_id"), "client-1").unwrap();
        std::fs::write(dir.join("client_secret"), secret).unwrap();
    }
    let body = r#"{"access_token":"captured-tok","expires_in":3600}"#;
    let oauth2 = |case: &str, name: &str| {
        json!({"apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": "local"},
            "spec": {"source": {"oauth2": {"tokenURL": capture.url(case, "body", &[("b", body)]), "allowInsecureHTTP": true,
                "clientSecretRef": {"name": name}, "registries": ["registry.example.com"]}}}})
    };
    let ecr = json!({"apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": "local"},
        "spec": {"source": {"ecr": {"region": "eu-west-1", "endpoint": capture.url("aws", "body", &[]), "allowInsecureHTTP": true,
            "credentialsSecretRef": {"name": "../../root/.aws"}}}}});
    let mint = |manifest: &serde_json::Value, file: &str| {
        let path = base.join(file);
        std::fs::write(&path, serde_yaml::to_string(manifest).unwrap()).unwrap();
        cli_with(&["mint", "-f", path.to_str().unwrap(), "-n", &ns.name, "--secrets-dir", inside.to_str().unwrap()], &[])
    };
    let mut outputs = Vec::new();
    for (manifest, field) in [(oauth2("escape", "../outside"), "spec.source.oauth2.clientSecretRef.name"), (ecr, "spec.source.ecr.credentialsSecretRef.name")] {
        let (code, out, err) = mint(&manifest, "escape.yaml");
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains(&format!("{field}: must match")), "{err}");
        outputs.extend([out, err]);
    }
    let counts = capture.counts().await;
    assert_eq!(counts.get("escape").copied().unwrap_or(0) + counts.get("aws").copied().unwrap_or(0), 0, "a secret from outside the directory was sent: {counts:?}");
    // The directory itself works: the inside Secret is read and sent.
    let (code, out, err) = mint(&oauth2("inside", "client"), "inside.yaml");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(capture.counts().await.get("inside").copied(), Some(1));
    outputs.extend([out, err]);
    for o in &outputs {
        assert!(!o.contains("outside-client-secret-7") && !o.contains("inside-client-secret-3") && !o.contains("captured-tok"), "{o}");
    }
}

#[tokio::test]
async fn revocation_finds_an_issuer_under_a_path_and_ignores_another_tenants_document() {
    let (client, ns) = setup("egress-discovery").await;
    // Mounted as Keycloak realms are; the root's discovery document belongs
    // to another tenant and names that tenant's revocation endpoint.
    let server = OAuth2Server::start_mounted(3600, "/realms/team-a").await;
    let origin = format!("http://127.0.0.1:{}", server.port);
    let _operator = Operator::start(&ns.name);
    create_secret(&client, &ns.name, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    let spec = |revoke: serde_json::Value| {
        json!({"source": {"oauth2": {"tokenURL": server.token_url(), "allowInsecureHTTP": true, "clientSecretRef": {"name": "client"},
            "registries": ["registry.example.com"], "revoke": revoke}}})
    };
    create_credential(&client, &ns.name, "derived", spec(json!({"onDelete": true}))).await;
    create_credential(&client, &ns.name, "named", spec(json!({"onDelete": true, "issuer": server.base()}))).await;
    create_credential(&client, &ns.name, "wrong-issuer", spec(json!({"onDelete": true, "issuer": origin}))).await;
    let api: Api<regcred::api::RegistryCredential> = Api::namespaced(client.clone(), &ns.name);
    let mut tokens = Vec::new();
    for name in ["derived", "named", "wrong-issuer"] {
        let cr = wait_ready(&client, &ns.name, name, "True", Some("Rotated"), Duration::from_secs(60)).await;
        let s = Api::<Secret>::namespaced(client.clone(), &ns.name).get(name).await.unwrap();
        let token = password_in(&s, "registry.example.com");
        assert!(server.active(&token).await, "{name}");
        tokens.push((name, token, cr.metadata.uid.unwrap()));
        api.delete(name, &Default::default()).await.unwrap();
    }
    // Found under the issuer's path (from the token URL, or named): revoked.
    for (name, token, _) in &tokens[..2] {
        wait_for(Duration::from_secs(30), &format!("{name}'s token revoked"), || async { (!server.active(token).await).then_some(()) }).await;
    }
    // Named as the origin, whose document names another issuer: not used.
    let (_, token, uid) = &tokens[2];
    let said = wait_for(Duration::from_secs(30), "a RevocationFailed Event", || async {
        event_messages(&client, &ns.name, uid).await.into_iter().find(|m| m.starts_with("Revoking a token failed"))
    })
    .await;
    assert!(said.contains("no metadata naming issuer") && said.contains("set issuer or revocationURL"), "{said}");
    assert!(server.active(token).await, "revoked through another tenant's document?");
    assert_eq!(server.foreign_requests().await, 0, "another tenant's endpoint was asked");
}

/// A pull Secret (`kubernetes.io/dockerconfigjson`) for `registry`.
async fn pull_secret(client: &kube::Client, ns: &str, name: &str, registry: &str) {
    let config = json!({"auths": {registry: {"username": "u", "password": "checked-pw-5"}}}).to_string();
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&Default::default(), &s).await.unwrap();
}

#[tokio::test]
async fn key_apis_revocation_and_check_are_refused_a_name_that_leads_to_a_denied_address() {
    if !test_names() {
        return;
    }
    let (client, ns) = setup("egress-more").await;
    let metadata = metadata_standin();
    let denied = Hostile::start(&metadata, None).await;
    let server = OAuth2Server::start(3600).await;
    let operator = Operator::start_with(&ns.name, &["--egress-deny-cidrs", &format!("169.254.0.0/16,{metadata}/32")], &[]);
    let named = |case: &str| by_name(&denied, "metadata.regcred.test", case, "{}");
    // The vendor API of a rotate source.
    create_secret(&client, &ns.name, "admin", json!({"username": "admin", "password": "admin-pw-egress-2"})).await;
    create_credential(&client, &ns.name, "keys", json!({"source": {"rotate": {"dockerHub": {}, "url": named("vendor").split("/c/").next().unwrap(),
        "allowInsecureHTTP": true, "adminSecretRef": {"name": "admin"}}}})).await;
    let cr = wait_ready(&client, &ns.name, "keys", "False", Some("EgressDenied"), Duration::from_secs(60)).await;
    assert!(message(&cr).contains("egress to metadata.regcred.test is denied"), "{}", message(&cr));
    // A revocation endpoint (RFC 7009) named by the tenant.
    create_secret(&client, &ns.name, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    create_credential(&client, &ns.name, "revoked", json!({"source": {"oauth2": {"tokenURL": server.token_url(), "allowInsecureHTTP": true,
        "clientSecretRef": {"name": "client"}, "registries": ["registry.example.com"],
        "revoke": {"onDelete": true, "revocationURL": named("revoke")}}}})).await;
    let cr = wait_ready(&client, &ns.name, "revoked", "True", Some("Rotated"), Duration::from_secs(60)).await;
    Api::<regcred::api::RegistryCredential>::namespaced(client.clone(), &ns.name).delete("revoked", &Default::default()).await.unwrap();
    let uid = cr.metadata.uid.unwrap();
    let said = wait_for(Duration::from_secs(30), "a RevocationFailed Event", || async {
        event_messages(&client, &ns.name, &uid).await.into_iter().find(|m| m.starts_with("Revoking a token failed"))
    })
    .await;
    assert!(said.contains("egress to metadata.regcred.test is denied"), "{said}");
    // `regcred check` (its default policy) against a registry by that name.
    let host = by_name(&denied, "metadata.regcred.test", "x", "").split('/').nth(2).unwrap().to_string();
    pull_secret(&client, &ns.name, "pull", &host).await;
    let (code, out, err) = cli_with(&["check", "pull", "-n", &ns.name, "--insecure-http"], &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{host}  not reachable (denied by the egress policy)")), "{out}{err}");
    assert_eq!(denied.total().await, 0, "the denied stand-in was reached");
    assert_no_secrets(&client, &ns.name, &operator, &["admin-pw-egress-2".to_string(), "checked-pw-5".to_string()]).await;
}
