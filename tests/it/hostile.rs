//! Tenant safety: one operator process, watching every namespace, faces
//! hostile tenants and hostile endpoints (tests/peers/hostile.py, moto, a
//! TLS zoo) while a bystander credential with 20 s tokens in another
//! namespace must hold a valid token at every poll. Every case here crashed,
//! looped, starved, leaked or reached a denied address before the fix.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Event, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use regcred::api::RegistryCredential;
use serde_json::{json, Value};

use crate::support::*;

const SUITE_LABEL: &str = "regcred.dev/test-suite";

struct Suite {
    client: Client,
    label: String,
}

impl Suite {
    fn credential(&self, name: &str, spec: Value) -> RegistryCredential {
        serde_json::from_value(json!({
            "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
            "metadata": {"name": name, "labels": {SUITE_LABEL: self.label}}, "spec": spec,
        }))
        .unwrap()
    }

    async fn try_create(&self, ns: &str, name: &str, spec: Value) -> Result<(), kube::Error> {
        let api: Api<RegistryCredential> = Api::namespaced(self.client.clone(), ns);
        api.create(&PostParams::default(), &self.credential(name, spec)).await.map(|_| ())
    }

    async fn create(&self, ns: &str, name: &str, spec: Value) {
        self.try_create(ns, name, spec).await.unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }

    /// `http` source against a URL (plain HTTP allowed), with extra fields.
    async fn http(&self, ns: &str, name: &str, url: &str, extra: Value) {
        let mut http = json!({"url": url, "allowInsecureHTTP": true, "registries": ["registry.example.com"]});
        http.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        self.create(ns, name, json!({"source": {"http": http}})).await;
    }
}

/// A token response with a unique token each time; `{n}` is the server's counter.
fn token_body(expires_in: &str) -> String {
    format!(r#"{{"token":"hstl-tok-{{n}}","expires_in":{expires_in}}}"#)
}

/// Events about one object, counting repeats of a series.
async fn event_count(client: &Client, ns: &str, name: &str) -> u64 {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))).await.unwrap();
    // The recorder folds repeats into a series: count those too.
    list.items
        .iter()
        .map(|e| e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1).max(1) as u64)
        .sum()
}

fn message(cr: &RegistryCredential) -> String {
    cr.ready().map(|c| c.message.clone()).unwrap_or_default()
}

/// The bystander: every 500 ms its Secret must hold a token that is not
/// expired and that the OAuth2 server calls active.
struct Sampler {
    polls: AtomicU64,
    bad: Mutex<Vec<String>>,
    stop: AtomicBool,
}

async fn sample(client: Client, ns: String, server: Arc<OAuth2Server>, s: Arc<Sampler>) {
    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    while !s.stop.load(Ordering::SeqCst) {
        let verdict = match secrets.get("bystander").await {
            Ok(sec) => {
                let token = password_in(&sec, "registry.example.com");
                let not_after = annotation_time(&sec, "regcred.dev/not-after");
                if Utc::now() >= not_after {
                    Some(format!("expired token in the Secret at {}", Utc::now()))
                } else if !server.active(&token).await {
                    Some(format!("inactive token in the Secret at {}", Utc::now()))
                } else {
                    None
                }
            }
            Err(e) => Some(format!("reading the Secret: {e}")),
        };
        s.polls.fetch_add(1, Ordering::SeqCst);
        if let Some(v) = verdict {
            s.bad.lock().unwrap().push(v);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// TokenRequests the API server's audit log recorded in a namespace (None
/// on a cluster of yours, where there is no such log).
fn token_requests(ns: &str) -> Option<usize> {
    audit_entries(ns, "token").map(|e| e.len())
}

#[tokio::test]
async fn hostile_tenants_cannot_hurt_anyone() {
    let client = control_plane().client().await;
    install_crd(&client).await;
    let suite = Suite { client: client.clone(), label: format!("hostile-{}", std::process::id()) };
    let by_ns = namespace(&client, "bystander").await;
    let h = namespace(&client, "hostile").await;
    let hang_ns = namespace(&client, "hanging").await;
    let q_ns = namespace(&client, "quota").await;

    // Peers: the hostile server, one on an address the egress policy
    // denies, one standing in for an un-allowed AWS endpoint override, a
    // registry whose Bearer realm points at the denied address, a TLS zoo,
    // moto with 40 s tokens, and the bystander's OAuth2 server.
    let a = Hostile::start("127.0.0.1", None).await;
    // Sealed, the denied peers stand where cloud metadata and a private host
    // would be (test addresses that exist only in the run's namespace).
    let (denied_at, private_at) = (metadata_standin(), private_standin());
    let denied = Hostile::start(&denied_at, None).await;
    let private = Hostile::start(&private_at, None).await;
    let deny_cidrs = format!("169.254.0.0/16,{denied_at}/32,{private_at}/32");
    let override_target = Hostile::start("127.0.0.1", None).await;
    let realm = format!("{}/c/realm/body", denied.base);
    let registry = Hostile::start("127.0.0.1", Some(&realm)).await;
    let certs = TestCerts::new();
    let tls_good = Hostile::start_tls(&certs, "server", false).await;
    let tls_wrong = Hostile::start_tls(&certs, "wronghost", false).await;
    let tls_expired = Hostile::start_tls(&certs, "expired", false).await;
    let tls_mtls = Hostile::start_tls(&certs, "server", true).await;
    let moto = MotoEcr::start(40, &[]).await;
    let oauth = Arc::new(OAuth2Server::start(20).await);

    let selector = format!("{SUITE_LABEL}={}", suite.label);
    let mut operator = Operator::start_cluster_wide(
        &[
            "--selector", &selector,
            "--egress-deny-cidrs", &deny_cidrs,
            "--aws-endpoint-overrides", &moto.endpoint(),
            "--ecr-identity-namespaces", &h.name,
            "--ecr-role-arns", "arn:aws:iam::210987654321:role/pull*",
        ],
        &[("AWS_ACCESS_KEY_ID", "AKIAOPERATOR00000001"), ("AWS_SECRET_ACCESS_KEY", "operator-secret-key-cafe01"), ("AWS_REGION", "eu-west-1"), ("AWS_EC2_METADATA_DISABLED", "true")],
    );

    // The bystander, in its own namespace, sampled throughout.
    create_secret(&client, &by_ns.name, "client", json!({"client_id": "regcred-basic", "client_secret": oauth.secret})).await;
    suite.create(&by_ns.name, "bystander", json!({"source": {"oauth2": {
        "tokenURL": oauth.token_url(), "allowInsecureHTTP": true,
        "clientSecretRef": {"name": "client"}, "registries": ["registry.example.com"]
    }}})).await;
    wait_ready(&client, &by_ns.name, "bystander", "True", None, Duration::from_secs(60)).await;
    let sampler = Arc::new(Sampler { polls: AtomicU64::new(0), bad: Mutex::new(Vec::new()), stop: AtomicBool::new(false) });
    let sampling = tokio::spawn(sample(client.clone(), by_ns.name.clone(), oauth.clone(), sampler.clone()));

    // 1. Values that crashed the operator are refused at admission, naming the field.
    let http_base = json!({"url": a.url("x", "body", &[]), "allowInsecureHTTP": true, "registries": ["r.example"]});
    let with = |extra: Value| {
        let mut v = http_base.clone();
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"source": {"http": v}})
    };
    let basic = |extra: Value| {
        let mut v = json!({"secretRef": {"name": "robot"}, "registries": ["r.example"]});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"source": {"basic": v}})
    };
    let oauth_spec = |url: &str, extra: Value| {
        let mut v = json!({"tokenURL": url, "allowInsecureHTTP": true, "clientSecretRef": {"name": "client"}, "registries": ["r.example"]});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"source": {"oauth2": v}})
    };
    let mut with_renew = with(json!({}));
    with_renew["renewBefore"] = json!("6000000000000000h");
    let refused: Vec<(&str, Value, &str)> = vec![
        ("renew-before", with_renew, "renewBefore"),
        ("refresh-huge", basic(json!({"refreshInterval": "300000000000h"})), "refreshInterval"),
        ("refresh-zero", basic(json!({"refreshInterval": "0s"})), "refreshInterval"),
        ("timeout-huge", with(json!({"timeout": "1000h"})), "timeout"),
        ("lifetime-huge", with(json!({"response": {"defaultLifetime": "6000000000000000h"}})), "defaultLifetime"),
        ("label-space", json!({"source": with(json!({}))["source"], "secretTemplate": {"labels": {"team": "platform eng"}}}), "label values"),
        ("annotation-huge", json!({"source": with(json!({}))["source"], "secretTemplate": {"annotations": {"big": "x".repeat(300 * 1024)}}}), "annotations"),
        ("label-key", json!({"source": with(json!({}))["source"], "secretTemplate": {"labels": {"bad key!": "v"}}}), "label keys"),
        ("userinfo-url", json!({"source": {"http": {"url": "http://user:pw@127.0.0.1:1/t", "allowInsecureHTTP": true, "registries": ["r.example"]}}}), "url"),
        ("userinfo-token-url", oauth_spec("http://user:pw@127.0.0.1:1/t", json!({})), "tokenURL"),
        ("colon-username", oauth_spec(&a.url("x", "body", &[]), json!({"username": "evil:user"})), "username"),
        ("control-username", with(json!({"response": {"username": "evil\nuser"}})), "username"),
    ];
    for (name, spec, field) in refused {
        match suite.try_create(&h.name, name, spec).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{name}: {}", s.message);
                assert!(s.message.contains(field), "{name}: the message does not name {field}: {}", s.message);
            }
            other => panic!("{name} was not refused at admission: {other:?}"),
        }
    }

    // Secrets the cases read.
    let echo_secret = "echo-client-secret-7f3a9b";
    create_secret(&client, &h.name, "client", json!({"client_id": "hostile", "client_secret": echo_secret})).await;
    create_secret(&client, &h.name, "ca", json!({"ca.crt": certs.pem("ca.crt")})).await;
    let tls_secret: Secret = serde_json::from_value(json!({"metadata": {"name": "client-cert"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": certs.pem("client.crt"), "tls.key": certs.pem("client.key")}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), &h.name).create(&PostParams::default(), &tls_secret).await.unwrap();
    create_secret(&client, &h.name, "aws-keys", json!({"AWS_ACCESS_KEY_ID": "AKIASTATIC0000000001", "AWS_SECRET_ACCESS_KEY": "aws-secret-key-hostile1"})).await;
    create_secret(&client, &h.name, "robot", json!({"username": "robot", "password": "robot-pw-hostile-42"})).await;

    // 2. Absurd lifetimes (http and oauth2): believed for a year at most.
    for (name, raw) in [("life-1e20", "1e20"), ("life-9e12", "9e12"), ("life-1e12", "1e12")] {
        suite.http(&h.name, name, &a.url(name, "body", &[("b", &token_body(raw))]), json!({})).await;
    }
    let oauth_body = r#"{"access_token":"hstl-tok-o{n}","token_type":"Bearer","expires_in":1e20}"#;
    suite.create(&h.name, "oauth-1e20", oauth_spec(&a.url("oauth-1e20", "body", &[("b", oauth_body)]), json!({}))).await;
    //    Unusable ones: refused, the Secret never written.
    let unusable: Vec<(&str, String, Value, &str)> = vec![
        ("life-negative", token_body("-5"), json!({}), "positive number"),
        ("life-fraction", token_body("0.5"), json!({}), "positive number"),
        ("life-string", token_body(r#""soon""#), json!({}), "positive number"),
        ("life-past", r#"{"token":"hstl-tok-p{n}","exp":"2001-01-01T00:00:00Z"}"#.into(), json!({"response": {"expiresAtPointer": "/exp"}}), "expired"),
        ("not-json", "<html>hstl-tok-{n}</html>".into(), json!({}), "not JSON"),
        ("colon-from-response", r#"{"token":"hstl-tok-c{n}","user":"evil:name"}"#.into(), json!({"response": {"usernamePointer": "/user"}}), "username"),
    ];
    for (name, body, extra, _) in &unusable {
        suite.http(&h.name, name, &a.url(name, "body", &[("b", body.as_str())]), extra.clone()).await;
    }

    // 3. Loops: 1 s tokens, and ECR at renewBeforePercentage 80.
    suite.http(&h.name, "one-second", &a.url("one-second", "body", &[("b", &token_body("1"))]), json!({})).await;
    suite.create(&h.name, "ecr80", json!({"renewBeforePercentage": 80, "source": {"ecr": {
        "region": "eu-west-1", "endpoint": moto.endpoint(), "stsEndpoint": moto.endpoint(), "allowInsecureHTTP": true,
        "credentialsSecretRef": {"name": "aws-keys"}
    }}})).await;

    // 4. Refused writes: a quota allows no new Secret in this namespace.
    create_secret(&client, &q_ns.name, "robot", json!({"username": "robot", "password": "robot-pw-hostile-42"})).await;
    let quota: k8s_openapi::api::core::v1::ResourceQuota = serde_json::from_value(json!({"metadata": {"name": "no-secrets"}, "spec": {"hard": {"secrets": "0"}}})).unwrap();
    let quotas = Api::<k8s_openapi::api::core::v1::ResourceQuota>::namespaced(client.clone(), &q_ns.name);
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    // Admission enforces a quota once the controller has computed its usage.
    wait_for(Duration::from_secs(60), "the quota's usage", || async {
        let q = quotas.get("no-secrets").await.ok()?;
        q.status?.used?.contains_key("secrets").then_some(())
    })
    .await;
    suite.create(&q_ns.name, "rejected", basic(json!({"verify": false}))).await;

    // 5. Starvation: 33 credentials whose endpoint never answers, in one namespace.
    for i in 0..33 {
        suite.http(&hang_ns.name, &format!("hang-{i:02}"), &a.url("hang", "hang", &[]), json!({"timeout": "60s"})).await;
    }

    // 6. SSRF: a literal denied address, a redirect to it, a registry whose
    //    Bearer realm is on it; an un-allowed AWS endpoint override.
    suite.http(&h.name, "ssrf-literal", &denied.url("ssrf", "body", &[("b", &token_body("300"))]), json!({})).await;
    suite.http(&h.name, "ssrf-private", &private.url("ssrf", "body", &[("b", &token_body("300"))]), json!({})).await;
    let to = denied.url("ssrf-redirected", "body", &[("b", &token_body("300"))]);
    suite.http(&h.name, "ssrf-redirect", &a.url("redirect", "redirect", &[("to", &to)]), json!({})).await;
    suite.create(&h.name, "ssrf-registry", json!({"source": {"basic": {"secretRef": {"name": "robot"}, "registries": [registry.host()], "allowInsecureHTTP": true}}})).await;
    suite.create(&h.name, "sts-override", json!({"source": {"ecr": {
        "region": "eu-west-1", "endpoint": moto.endpoint(), "stsEndpoint": override_target.base, "allowInsecureHTTP": true,
        "credentialsSecretRef": {"name": "aws-keys"}, "roleArn": "arn:aws:iam::210987654321:role/pull"
    }}})).await;
    suite.create(&h.name, "ecr-override", json!({"source": {"ecr": {
        "region": "eu-west-1", "endpoint": override_target.base, "allowInsecureHTTP": true, "credentialsSecretRef": {"name": "aws-keys"}
    }}})).await;

    // 7. Web identity: a ServiceAccount that did not opt in; an audience not allowed.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &h.name);
    for (name, ann) in [("plain", json!({})), ("opted", json!({"regcred.dev/web-identity": "true"}))] {
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name, "annotations": ann}})).unwrap();
        sas.create(&PostParams::default(), &sa).await.unwrap();
    }
    let web = |sa: &str, audience: Option<&str>| {
        let mut w = json!({"serviceAccountName": sa});
        if let Some(a) = audience {
            w["audience"] = json!(a);
        }
        json!({"source": {"ecr": {"region": "eu-west-1", "endpoint": moto.endpoint(), "stsEndpoint": moto.endpoint(),
            "allowInsecureHTTP": true, "roleArn": "arn:aws:iam::333333333333:role/team", "webIdentity": w}}})
    };
    // The operator's own identity may assume only the roles the admin lists.
    suite.create(&h.name, "role-not-allowed", json!({"source": {"ecr": {"region": "eu-west-1", "endpoint": moto.endpoint(),
        "stsEndpoint": moto.endpoint(), "allowInsecureHTTP": true, "roleArn": "arn:aws:iam::999999999999:role/admin"}}})).await;
    suite.create(&h.name, "web-not-opted", web("plain", None)).await;
    suite.create(&h.name, "web-audience", web("opted", Some("https://evil.example"))).await;

    // 8. A reflected client secret; huge, endless and slow answers; refused
    //    connections; the TLS zoo.
    suite.create(&h.name, "echo", oauth_spec(&a.url("echo", "echo-error", &[]), json!({}))).await;
    suite.http(&h.name, "huge", &a.url("huge", "huge", &[("bytes", "1048576")]), json!({})).await;
    suite.http(&h.name, "huge-chunked", &a.url("chunked", "chunked", &[("bytes", "1048576")]), json!({})).await;
    suite.http(&h.name, "endless", &a.url("endless", "endless", &[]), json!({})).await;
    suite.http(&h.name, "slow", &a.url("slow", "hang", &[]), json!({"timeout": "2s"})).await;
    suite.http(&h.name, "refused", &format!("http://127.0.0.1:{}/t", free_port()), json!({})).await;
    let tls_body = token_body("300");
    let ca = json!({"tls": {"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}}});
    let ca_and_cert = json!({"tls": {"caBundleSecretRef": {"name": "ca", "key": "ca.crt"}, "clientCertificateSecretRef": {"name": "client-cert"}}});
    let tls_cases: Vec<(&str, &Hostile, Value)> = vec![
        ("tls-ok", &tls_good, ca.clone()),
        ("tls-untrusted", &tls_good, json!({})),
        ("tls-wrong-host", &tls_wrong, ca.clone()),
        ("tls-expired", &tls_expired, ca.clone()),
        ("mtls-ok", &tls_mtls, ca_and_cert),
        ("mtls-missing", &tls_mtls, ca.clone()),
    ];
    for (name, server, extra) in &tls_cases {
        let url = server.url(name, "body", &[("b", &tls_body)]);
        let mut spec = json!({"url": url, "registries": ["registry.example.com"]});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        suite.create(&h.name, name, json!({"source": {"http": spec}})).await;
    }

    // A healthy credential created while the hanging namespace holds its
    // share of the slots is served at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    suite.http(&h.name, "late", &a.url("late", "body", &[("b", &token_body("300"))]), json!({})).await;
    wait_ready(&client, &h.name, "late", "True", Some("Rotated"), Duration::from_secs(30)).await;
    let metrics_at = operator.metrics_address().await;
    let health = reqwest::get(format!("http://{metrics_at}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "healthz while the hanging namespace is busy");

    // Outcomes.
    let now = Utc::now();
    for name in ["life-1e20", "life-9e12", "life-1e12", "oauth-1e20"] {
        let cr = wait_ready(&client, &h.name, name, "True", Some("Rotated"), Duration::from_secs(60)).await;
        let na = cr.status.unwrap().not_after.unwrap();
        assert!(na > now && na <= now + chrono::Duration::days(366), "{name}: notAfter {na}");
    }
    for (name, _, _, words) in &unusable {
        let cr = wait_ready(&client, &h.name, name, "False", Some("InvalidResponse"), Duration::from_secs(60)).await;
        assert!(message(&cr).contains(words), "{name}: {}", message(&cr));
    }
    let secrets_h: Api<Secret> = Api::namespaced(client.clone(), &h.name);
    for (name, _, _, _) in &unusable {
        assert!(secrets_h.get_opt(name).await.unwrap().is_none(), "{name}: a Secret was written");
    }
    let rejected = wait_ready(&client, &q_ns.name, "rejected", "False", Some("SecretRejected"), Duration::from_secs(60)).await;
    assert!(message(&rejected).contains("403"), "{}", message(&rejected));
    for name in ["ssrf-literal", "ssrf-private", "ssrf-redirect", "ssrf-registry", "sts-override", "ecr-override"] {
        let cr = wait_ready(&client, &h.name, name, "False", Some("EgressDenied"), Duration::from_secs(60)).await;
        assert!(message(&cr).contains("is denied by the operator's egress policy"), "{name}: {}", message(&cr));
    }
    assert!(message(&wait_ready(&client, &h.name, "ssrf-literal", "False", None, Duration::from_secs(5)).await).contains(&denied_at));
    for name in ["web-not-opted", "web-audience"] {
        wait_ready(&client, &h.name, name, "False", Some("IdentityNotAllowed"), Duration::from_secs(60)).await;
    }
    assert!(message(&wait_ready(&client, &h.name, "web-not-opted", "False", None, Duration::from_secs(5)).await).contains("regcred.dev/web-identity"));
    let role = wait_ready(&client, &h.name, "role-not-allowed", "False", Some("IdentityNotAllowed"), Duration::from_secs(60)).await;
    assert!(message(&role).contains("allowed role ARNs"), "{}", message(&role));
    let echo = wait_ready(&client, &h.name, "echo", "False", Some("MintFailed"), Duration::from_secs(60)).await;
    assert!(message(&echo).contains("HTTP 400 (unrecognised error code)"), "{}", message(&echo));
    for name in ["huge", "huge-chunked", "endless"] {
        let cr = wait_ready(&client, &h.name, name, "False", Some("InvalidResponse"), Duration::from_secs(60)).await;
        assert!(message(&cr).contains("larger than 65536 bytes"), "{name}: {}", message(&cr));
    }
    // Each transport failure reads differently.
    let expect: Vec<(&str, &str)> = vec![
        ("slow", "timed out"),
        ("refused", "connection refused"),
        ("tls-untrusted", "not signed by a trusted CA"),
        ("tls-wrong-host", "not valid for this host name"),
        ("tls-expired", "has expired"),
        ("mtls-missing", "TLS"),
    ];
    let mut seen = BTreeSet::new();
    for (name, words) in &expect {
        let cr = wait_ready(&client, &h.name, name, "False", Some("MintFailed"), Duration::from_secs(60)).await;
        let m = message(&cr);
        assert!(m.contains(words), "{name}: {m}");
        seen.insert(m.split("failed: ").nth(1).unwrap_or_default().split(';').next().unwrap_or_default().to_string());
    }
    assert_eq!(seen.len(), expect.len(), "transport failures must read differently: {seen:?}");
    for name in ["tls-ok", "mtls-ok"] {
        wait_ready(&client, &h.name, name, "True", Some("Rotated"), Duration::from_secs(60)).await;
    }

    // Counts over one minute: 1 s tokens and ECR at 80%.
    wait_ready(&client, &h.name, "one-second", "True", None, Duration::from_secs(30)).await;
    wait_ready(&client, &h.name, "ecr80", "True", None, Duration::from_secs(30)).await;
    let count_of = |c: std::collections::HashMap<String, u64>, k: &str| c.get(k).copied().unwrap_or(0);
    let (mints0, ecr0) = (count_of(a.counts().await, "one-second"), moto.calls("GetAuthorizationToken").await);
    let (ev_one0, ev_ecr0) = (event_count(&client, &h.name, "one-second").await, event_count(&client, &h.name, "ecr80").await);
    let mut versions: [BTreeSet<String>; 2] = [BTreeSet::new(), BTreeSet::new()];
    let window = tokio::time::Instant::now();
    while window.elapsed() < Duration::from_secs(60) {
        for (i, name) in ["one-second", "ecr80"].iter().enumerate() {
            if let Some(s) = secrets_h.get_opt(name).await.unwrap() {
                versions[i].insert(s.metadata.resource_version.unwrap_or_default());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mints = count_of(a.counts().await, "one-second") - mints0;
    let ecr_mints = moto.calls("GetAuthorizationToken").await - ecr0;
    let ev_one = event_count(&client, &h.name, "one-second").await - ev_one0;
    let ev_ecr = event_count(&client, &h.name, "ecr80").await - ev_ecr0;
    eprintln!(
        "per minute: 1 s tokens: {mints} mints, {} Secret versions, {ev_one} Events; ECR at 80%: {ecr_mints} GetAuthorizationToken, {} Secret versions, {ev_ecr} Events",
        versions[0].len(), versions[1].len()
    );
    // At most one mint per 10 s (7 allows for the window's edges).
    assert!((1..=7).contains(&mints), "1 s tokens: {mints} mints in a minute");
    assert!(versions[0].len() <= 8, "1 s tokens: {} Secret writes in a minute", versions[0].len());
    assert!(ev_one <= 1, "1 s tokens: {ev_one} Events in a minute (the warning was already given)");
    assert!((1..=7).contains(&ecr_mints), "ECR at 80%: {ecr_mints} mints in a minute");
    assert!(versions[1].len() <= 8, "ECR at 80%: {} Secret writes in a minute", versions[1].len());
    assert!(ev_ecr <= 7, "ECR at 80%: {ev_ecr} Events in a minute");
    let one = Api::<RegistryCredential>::namespaced(client.clone(), &h.name).get("one-second").await.unwrap();
    let warn = one.status.unwrap().conditions.into_iter().find(|c| c.type_ == "ShortLived").expect("a ShortLived warning");
    assert_eq!((warn.status.as_str(), warn.reason.as_str()), ("True", "LifetimeTooShort"));
    let ev = Api::<Event>::namespaced(client.clone(), &h.name)
        .list(&ListParams::default().fields("involvedObject.name=one-second,reason=LifetimeTooShort"))
        .await
        .unwrap();
    assert_eq!(ev.items.len(), 1, "one LifetimeTooShort Event");
    // A refused write backs off like a failed mint and is said once.
    let r = Api::<RegistryCredential>::namespaced(client.clone(), &q_ns.name).get("rejected").await.unwrap();
    let attempts = r.status.unwrap().failed_attempts;
    assert!((2..=10).contains(&attempts), "{attempts} refused writes in a few minutes: the backoff did not hold");
    assert!(event_count(&client, &q_ns.name, "rejected").await <= 2, "SecretRejected Events repeat");

    // Nothing reached the denied address or the un-allowed override, and
    // no token was requested for a refused web identity.
    assert_eq!(denied.total().await, 0, "requests reached the denied address {denied_at}");
    assert_eq!(private.total().await, 0, "requests reached the denied private address {private_at}");
    assert_eq!(override_target.total().await, 0, "requests reached an endpoint override the admin did not allow");
    assert!(count_of(a.counts().await, "hang") >= 8, "the hanging endpoint was not even tried");
    assert_eq!(moto.calls("AssumeRoleWithWebIdentity").await, 0);
    assert_eq!(moto.calls("AssumeRole").await, 0, "a role outside the allowlist was assumed");
    match token_requests(&h.name) {
        Some(n) => assert_eq!(n, 0, "TokenRequests were made for refused web identities"),
        None => eprintln!("no audit log on this cluster: TokenRequests not counted"),
    }

    // The bystander never held an expired or inactive token; the operator
    // is the one process that started.
    sampler.stop.store(true, Ordering::SeqCst);
    sampling.await.unwrap();
    let polls = sampler.polls.load(Ordering::SeqCst);
    let bad = sampler.bad.lock().unwrap().clone();
    eprintln!("bystander: {polls} polls, {} bad", bad.len());
    assert!(polls >= 100, "only {polls} polls of the bystander");
    assert!(bad.is_empty(), "the bystander's Secret went bad: {bad:?}");
    assert!(operator.is_running(), "the operator process died:\n{}", operator.logs());

    // No secret anywhere a user or a scraper can look.
    let metrics = reqwest::get(format!("http://{metrics_at}/metrics")).await.unwrap().text().await.unwrap();
    let leaks: Vec<String> = vec![
        echo_secret.into(), oauth.secret.clone(), "hstl-tok-".into(), "aws-secret-key-hostile1".into(),
        "robot-pw-hostile-42".into(), "operator-secret-key-cafe01".into(), certs.pem("client.key").lines().nth(1).unwrap().into(),
    ];
    for l in &leaks {
        assert!(!metrics.contains(l.as_str()), "a secret reached /metrics");
    }
    for ns in [&h.name, &q_ns.name, &hang_ns.name, &by_ns.name] {
        assert_no_secrets(&client, ns, &operator, &leaks).await;
    }
}
