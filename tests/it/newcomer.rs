//! What a newcomer meets when something is wrong: Events that follow the
//! cause, errors that say what to do, exit codes as the README gives them.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use serde_json::json;

use crate::day2::{cli, cli_with};

use crate::support::*;

/// The `Ready` message once the credential is not Ready for `reason`,
/// without the retry time status adds.
async fn failing(client: &kube::Client, ns: &str, name: &str, reason: &str) -> String {
    let cr = wait_ready(client, ns, name, "False", Some(reason), Duration::from_secs(60)).await;
    let message = &cr.ready().unwrap().message;
    message.split("; retrying at").next().unwrap().to_string()
}

#[tokio::test]
async fn an_event_follows_each_change_of_cause() {
    let (client, ns) = setup("cause").await;
    let operator = Operator::start(&ns.name);
    let reg = Registry::htpasswd(&[("robot", "right-pw-0e7d1c")]).await;
    // 1. The Secret has no password.
    create_secret(&client, &ns.name, "robot", json!({"username": "robot"})).await;
    create_credential(&client, &ns.name, "pull", json!({"source": {"basic": {
        "secretRef": {"name": "robot"}, "registries": ["no-such-registry.invalid"]
    }}})).await;
    let missing = failing(&client, &ns.name, "pull", "CredentialsNotFound").await;
    assert!(missing.contains("\"password\""), "{missing}");
    // 2. A password, but the registry's name does not resolve.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let wrong_pw = "wrong-pw-3b81aa";
    secrets.patch("robot", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"password": wrong_pw}}))).await.unwrap();
    let dns = failing(&client, &ns.name, "pull", "MintFailed").await;
    assert!(dns.contains("no-such-registry.invalid") && dns.contains("DNS"), "{dns}");
    // 3. A registry that answers, and refuses the password.
    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), &ns.name);
    let spec = json!({"spec": {"source": {"basic": {"secretRef": {"name": "robot"}, "registries": [reg.host], "allowInsecureHTTP": true}}}});
    crs.patch("pull", &PatchParams::default(), &Patch::Merge(spec)).await.unwrap();
    let refused = failing(&client, &ns.name, "pull", "AccessDenied").await;
    assert!(refused.contains("HTTP 401"), "{refused}");

    // Each cause has its own Event, saying what status said at the time.
    let uid = crs.get("pull").await.unwrap().metadata.uid.unwrap();
    let notes = wait_for(Duration::from_secs(10), "an Event for the third cause", || async {
        let notes = event_messages(&client, &ns.name, &uid).await;
        notes.iter().any(|n| n.contains("HTTP 401")).then_some(notes)
    })
    .await;
    for (reason, message) in [("CredentialsNotFound", &missing), ("MintFailed", &dns), ("AccessDenied", &refused)] {
        let n = notes.iter().filter(|n| n.starts_with(reason) && n.contains(message.as_str())).count();
        assert_eq!(n, 1, "one Event for {reason}: {message}; Events: {notes:?}");
    }
    // The same cause again (an attempt asked for with `regcred renew`) adds
    // no Event.
    let failed = crs.get("pull").await.unwrap().status.unwrap().failed_attempts;
    let (code, out, err) = cli(&["renew", "pull", "-n", &ns.name]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for(Duration::from_secs(40), "one more failed attempt", || async {
        (crs.get("pull").await.ok()?.status?.failed_attempts > failed).then_some(())
    })
    .await;
    assert_eq!(failing(&client, &ns.name, "pull", "AccessDenied").await, refused);
    let again = event_messages(&client, &ns.name, &uid).await;
    assert_eq!(again.len(), notes.len(), "retries of one cause added Events: {again:?}");
    assert_no_secrets(&client, &ns.name, &operator, &["right-pw-0e7d1c".into(), wrong_pw.into()]).await;
}

#[tokio::test]
async fn exit_codes_and_hints_of_the_commands() {
    let (client, ns) = setup("exits").await;
    // 2: bad usage.
    let (code, _, err) = cli(&["renew", "-n", &ns.name]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--all"), "{err}");
    let (code, _, err) = cli(&["renew", "x", "--all", "-n", &ns.name]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&["status", "--no-such-flag"]);
    assert_eq!(code, 2, "{err}");

    // 3: the cluster cannot be reached (nothing listens at that port).
    let dir = TempDir::new("exits");
    let kubeconfig = dir.join("kubeconfig");
    let port = free_port();
    std::fs::write(&kubeconfig, format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u, namespace: {ns}}}}}]\ncurrent-context: x\n",
        ns = ns.name
    )).unwrap();
    let manifest = dir.join("cred.yaml");
    std::fs::write(&manifest, "apiVersion: regcred.dev/v1alpha1\nkind: RegistryCredential\nmetadata: {name: m}\nspec:\n  source:\n    basic: {secretRef: {name: robot}, registries: [registry.example.com]}\n").unwrap();
    let unreachable = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    for args in [&["mint", "-f", manifest.to_str().unwrap()][..], &["renew", "m"], &["status"], &["check", "s"]] {
        let (code, out, err) = cli_with(args, &unreachable);
        assert_eq!(code, 3, "{args:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    }

    // 1, with a hint: the other kind has that name.
    let cluster_name = format!("{}-fleet", ns.name);
    let cluster_cred: ClusterRegistryCredential = serde_json::from_value(json!({
        "apiVersion": "regcred.dev/v1alpha1", "kind": "ClusterRegistryCredential", "metadata": {"name": cluster_name},
        "spec": {"source": {"basic": {"secretRef": {"name": "robot"}, "registries": ["registry.example.com"]}}, "target": {"namespaces": [ns.name]}}
    }))
    .unwrap();
    let cluster_api: Api<ClusterRegistryCredential> = Api::all(client.clone());
    cluster_api.create(&PostParams::default(), &cluster_cred).await.unwrap();
    let (code, _, err) = cli(&["renew", &cluster_name, "-n", &ns.name]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not found") && err.contains("add --cluster"), "{err}");
    let (code, out, err) = cli(&["renew", &cluster_name, "--cluster"]);
    assert_eq!(code, 0, "{out}{err}");
    create_credential(&client, &ns.name, "local", json!({"source": {"basic": {"secretRef": {"name": "robot"}, "registries": ["registry.example.com"]}}})).await;
    // No operator watches this namespace: status says so.
    let (code, out, err) = cli(&["status", "-n", &ns.name]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(1).is_some_and(|l| l.contains("local") && l.contains("Unknown")), "{out}");
    assert!(err.contains("1 of these have no status yet") && err.contains("does it watch their namespace"), "{err}");
    let (code, _, err) = cli(&["renew", "local", "--cluster", "-n", &ns.name]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("a RegistryCredential local exists in namespace {}: leave out --cluster", ns.name)), "{err}");
    cluster_api.delete(&cluster_name, &Default::default()).await.unwrap();
}

#[tokio::test]
async fn ecr_and_web_identity_failures_say_where_and_what() {
    let (client, ns) = setup("ecr-msg").await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let operator = Operator::start_with(&ns.name, &["--aws-endpoint-overrides", &closed, "--aws-max-attempts", "1"], &crate::ecr::aws_env());
    create_secret(&client, &ns.name, "aws-keys", json!({"AWS_ACCESS_KEY_ID": "AKIASTATIC0000000001", "AWS_SECRET_ACCESS_KEY": "aws-secret-key-msg-51"})).await;
    create_credential(&client, &ns.name, "closed", json!({"source": {"ecr": {
        "region": "eu-west-1", "endpoint": closed, "allowInsecureHTTP": true, "credentialsSecretRef": {"name": "aws-keys"}
    }}})).await;
    create_credential(&client, &ns.name, "no-sa", json!({"source": {"ecr": {
        "region": "eu-west-1", "roleArn": "arn:aws:iam::123456789012:role/team", "webIdentity": {"serviceAccountName": "nobody"}
    }}})).await;
    let m = failing(&client, &ns.name, "closed", "MintFailed").await;
    assert!(m.contains("GetAuthorizationToken") && m.contains(&closed) && m.contains("connection refused"), "{m}");
    assert!(!m.contains("no message"), "{m}");
    let m = failing(&client, &ns.name, "no-sa", "CredentialsNotFound").await;
    assert_eq!(m, format!("ServiceAccount \"nobody\" not found in namespace \"{}\" (webIdentity.serviceAccountName)", ns.name));
    assert_no_secrets(&client, &ns.name, &operator, &["aws-secret-key-msg-51".into()]).await;
}

#[tokio::test]
async fn the_start_up_log_says_what_is_watched() {
    let (_client, ns) = setup("watched").await;
    let mut operator = Operator::start(&ns.name);
    let line = wait_for(Duration::from_secs(30), "the watch line", || async {
        operator.current_logs().lines().find(|l| l.contains("watching RegistryCredentials")).map(String::from)
    })
    .await;
    assert!(line.contains(&format!("in namespace {} only", ns.name)) && line.contains("left alone"), "{line}");
    // Without leader election this replica is the one reconciling.
    let metrics = reqwest::get(format!("http://{}/metrics", operator.metrics_address().await)).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "regcred_leader 1"), "{metrics}");
    operator.stop();
}
