//! The day-2 commands of the `regcred` binary, run as a user runs them
//! (KUBECONFIG pointing at the test control plane), against the operator and
//! the real peers: `renew`, `status`, `check`.

use std::process::Command;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use regcred::api::RegistryCredential;
use serde_json::{json, Value};

use crate::support::*;

/// Run `regcred ARGS`: (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    cli_with(args, &[])
}

/// Run `regcred ARGS` with environment variables set (after KUBECONFIG).
pub fn cli_with(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regcred"))
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("running regcred");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn no_secret_in(outputs: &[&str], secrets: &[&str]) {
    for o in outputs {
        for s in secrets {
            assert!(!o.contains(s), "a secret reached the CLI's output");
        }
    }
}

#[tokio::test]
async fn renew_forces_exactly_one_extra_mint() {
    let (client, ns) = setup("renew").await;
    let server = OAuth2Server::start(300).await;
    let operator = Operator::start(&ns.name);
    ready_oauth2_credential(&client, &ns.name, &server).await;
    assert_eq!(server.stats().await.0, 1);

    let (code, out, err) = cli(&["renew", "cred", "-n", &ns.name]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("renewal requested"), "{out}");
    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), &ns.name);
    let served = wait_for(Duration::from_secs(40), "the renew request served", || async {
        let c = crs.get("cred").await.ok()?;
        let asked = c.metadata.annotations.as_ref()?.get("regcred.dev/renew-requested-at")?.clone();
        (c.status?.renew_request_served.as_ref() == Some(&asked)).then_some(asked)
    })
    .await;
    wait_ready(&client, &ns.name, "cred", "True", Some("Rotated"), Duration::from_secs(30)).await;
    assert_eq!(server.stats().await.0, 2, "one renew, one more token request");

    // The same value again (the object changes, the request does not): nothing.
    let patch = json!({"metadata": {"annotations": {"regcred.dev/renew-requested-at": served, "touched": "again"}}});
    crs.patch("cred", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(server.stats().await.0, 2, "a served renew request minted again");

    let (code, _, err) = cli(&["renew", "nope", "-n", &ns.name]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = cli(&["renew", "-n", &ns.name]);
    assert_eq!(code, 2, "bad usage: {err}");
    assert_no_secrets(&client, &ns.name, &operator, std::slice::from_ref(&server.secret)).await;
}

#[tokio::test]
async fn status_lists_the_failing_credential_first() {
    let (client, ns) = setup("status").await;
    let server = OAuth2Server::start(300).await;
    let operator = Operator::start(&ns.name);
    ready_oauth2_credential(&client, &ns.name, &server).await;
    create_credential(&client, &ns.name, "broken", json!({"source": {"oauth2": {
        "tokenURL": format!("http://127.0.0.1:{}/token", free_port()), "allowInsecureHTTP": true,
        "clientSecretRef": {"name": "client"}, "registries": ["registry.example.com"]
    }}})).await;
    // A credential that never expires (a static password): after the one
    // that expires, however far away that is.
    create_secret(&client, &ns.name, "robot", json!({"username": "robot", "password": "static-pw-77d0"})).await;
    create_credential(&client, &ns.name, "a-static", json!({"source": {"basic": {
        "secretRef": {"name": "robot"}, "registries": ["registry.example.com"], "verify": false
    }}})).await;
    wait_ready(&client, &ns.name, "broken", "False", Some("MintFailed"), Duration::from_secs(60)).await;
    wait_ready(&client, &ns.name, "a-static", "True", Some("Rotated"), Duration::from_secs(60)).await;

    let (code, out, err) = cli(&["status", "-n", &ns.name]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0][..3], ["NAMESPACE", "NAME", "READY"], "{out}");
    assert_eq!(lines[1][1..4], ["broken", "False", "MintFailed"], "{out}");
    assert_eq!(lines[1][5], "-", "no credential yet: {out}");
    assert_eq!(lines[2][1..4], ["cred", "True", "Rotated"], "{out}");
    assert_eq!(lines[2][4], "registry.example.com", "{out}");
    assert_eq!(lines[3][1..4], ["a-static", "True", "Rotated"], "{out}");
    assert_eq!(lines[3][5], "never", "{out}");
    let (code, json_out, _) = cli(&["status", "-n", &ns.name, "-o", "json"]);
    assert_eq!(code, 0);
    let rows: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(rows[0]["name"], "broken");
    assert!(rows[0]["failedAttempts"].as_i64().unwrap() >= 1);
    assert_eq!(rows[1]["reason"], "Rotated");
    assert!(rows[1]["notAfter"].is_string());
    assert_eq!(rows[2]["name"], "a-static");
    no_secret_in(&[&out, &err, &json_out], &[&server.secret]);
    assert_no_secrets(&client, &ns.name, &operator, std::slice::from_ref(&server.secret)).await;
}

#[tokio::test]
async fn check_tells_a_working_secret_from_a_refused_one() {
    let (client, ns) = setup("check").await;
    let robot_pw = "robot-pw-check-31";
    let plain = Registry::htpasswd(&[("robot", robot_pw)]).await;
    let tokened = Registry::token_auth(&[("robot", robot_pw)]).await;
    let operator = Operator::start(&ns.name);
    create_secret(&client, &ns.name, "robot", json!({"username": "robot", "password": robot_pw})).await;
    for (name, reg) in [("plain", &plain), ("tokened", &tokened)] {
        create_credential(&client, &ns.name, name, json!({"source": {"basic": {
            "secretRef": {"name": "robot"}, "registries": [reg.host], "allowInsecureHTTP": true
        }}})).await;
        wait_ready(&client, &ns.name, name, "True", Some("Rotated"), Duration::from_secs(60)).await;
        // A Secret of the same shape with a wrong password, not regcred's.
        let wrong = json!({"auths": {reg.host.clone(): {"username": "robot", "password": "wrong-pw-check"}}}).to_string();
        let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-wrong")}, "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": wrong}
        }))
        .unwrap();
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns.name).create(&Default::default(), &s).await.unwrap();
    }
    let mut outputs = Vec::new();
    for (name, reg) in [("plain", &plain), ("tokened", &tokened)] {
        let (code, out, err) = cli(&["check", name, "-n", &ns.name, "--insecure-http"]);
        assert_eq!(code, 0, "{name}: {out}{err}");
        assert_eq!(out.trim(), format!("{}  OK", reg.host), "{name}");
        let (code, out2, err2) = cli(&["check", &format!("{name}-wrong"), "-n", &ns.name, "--insecure-http"]);
        assert_eq!(code, 1, "{name}-wrong: {out2}{err2}");
        assert_eq!(out2.trim(), format!("{}  refused (HTTP 401)", reg.host), "{name}-wrong");
        assert!(err2.contains("1 of 1 registries refused"), "{err2}");
        outputs.extend([out, err, out2, err2]);
    }
    let (code, _, err) = cli(&["check", "absent", "-n", &ns.name]);
    assert_eq!(code, 1, "{err}");
    let refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    no_secret_in(&refs, &[robot_pw, "wrong-pw-check"]);
    assert_no_secrets(&client, &ns.name, &operator, &[robot_pw.into(), "wrong-pw-check".into()]).await;
}

#[tokio::test]
async fn verify_before_swap_keeps_the_last_good_credential() {
    let (client, ns) = setup("verify").await;
    let reg = Registry::htpasswd(&[("token", "good-token-41")]).await;
    let image = reg.push_test_image("app", "token", "good-token-41");
    let endpoint = Hostile::start("127.0.0.1", None).await;
    endpoint.set_body("verify", r#"{"token":"good-token-41","expires_in":20}"#).await;
    let operator = Operator::start(&ns.name);
    create_credential(&client, &ns.name, "checked", json!({"source": {"http": {
        "url": endpoint.url("verify", "body", &[]), "allowInsecureHTTP": true, "verify": true, "registries": [reg.host]
    }}})).await;
    wait_ready(&client, &ns.name, "checked", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let good = secrets.get("checked").await.unwrap();
    skopeo_pull(&dockerconfig(&good), &image).expect("the verified credential pulls");

    // The endpoint starts handing out tokens the registry refuses.
    endpoint.set_body("verify", r#"{"token":"bad-token-42","expires_in":20}"#).await;
    let cr = wait_ready(&client, &ns.name, "checked", "False", Some("RegistryRejected"), Duration::from_secs(60)).await;
    let msg = &cr.ready().unwrap().message;
    assert!(msg.contains(&reg.host) && msg.contains("HTTP 401"), "{msg}");
    let kept = secrets.get("checked").await.unwrap();
    assert_eq!(kept.metadata.resource_version, good.metadata.resource_version, "a refused credential was written");
    assert_eq!(password_in(&kept, &reg.host), "good-token-41");

    // Fixed: back to Ready with a credential that pulls.
    endpoint.set_body("verify", r#"{"token":"good-token-41","expires_in":20}"#).await;
    wait_ready(&client, &ns.name, "checked", "True", Some("Rotated"), Duration::from_secs(60)).await;
    skopeo_pull(&dockerconfig(&secrets.get("checked").await.unwrap()), &image).expect("pulls after recovery");
    assert_no_secrets(&client, &ns.name, &operator, &["good-token-41".into(), "bad-token-42".into()]).await;
}

#[tokio::test]
async fn mint_prints_a_redacted_summary_and_writes_a_file_that_pulls() {
    let (client, ns) = setup("mint").await;
    let dir = TempDir::new("mint");
    // oauth2, Secrets from the cluster
    let server = OAuth2Server::start(300).await;
    create_secret(&client, &ns.name, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    // ECR on moto, keys from the cluster, a registry that accepts what moto mints
    let (reg, image) = ecr_registry("123456789012").await;
    let moto = MotoEcr::start(43_200, &[("123456789012", format!("http://{}", reg.host))]).await;
    create_secret(&client, &ns.name, "aws-keys", json!({"AWS_ACCESS_KEY_ID": "AKIASTATIC0000000001", "AWS_SECRET_ACCESS_KEY": "aws-secret-key-mint-9"})).await;
    // http, its basic-auth Secret from files
    let endpoint = Hostile::start("127.0.0.1", None).await;
    std::fs::create_dir_all(dir.join("robot")).unwrap();
    std::fs::write(dir.join("robot/username"), "robot").unwrap();
    std::fs::write(dir.join("robot/password"), "robot-pw-from-file").unwrap();

    let specs = [
        ("oauth2", json!({"oauth2": {"tokenURL": server.token_url(), "allowInsecureHTTP": true, "clientSecretRef": {"name": "client"}, "registries": ["registry.example.com"]}}), "registry.example.com", false),
        ("http", json!({"http": {"url": endpoint.url("mint", "body", &[("b", r#"{"token":"http-minted-token-7","expires_in":600}"#)]), "allowInsecureHTTP": true, "auth": {"basic": {"name": "robot"}}, "registries": ["registry.example.com"]}}), "registry.example.com", true),
        ("ecr", json!({"ecr": {"region": "eu-west-1", "endpoint": moto.endpoint(), "allowInsecureHTTP": true, "credentialsSecretRef": {"name": "aws-keys"}}}), reg.host.as_str(), false),
    ];
    let mut outputs = Vec::new();
    let mut passwords = Vec::new();
    for (kind, source, registry, from_files) in &specs {
        let manifest = dir.join(&format!("{kind}.yaml"));
        let cr = json!({"apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": kind}, "spec": {"source": source}});
        std::fs::write(&manifest, serde_yaml::to_string(&cr).unwrap()).unwrap();
        let out_file = dir.join(&format!("{kind}.json"));
        let mut args = vec!["mint", "-f", manifest.to_str().unwrap(), "-n", &ns.name, "--output-dockerconfigjson", out_file.to_str().unwrap()];
        let secrets_dir = dir.0.display().to_string();
        if *from_files {
            args.extend(["--secrets-dir", &secrets_dir]);
        }
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{kind}: {out}{err}");
        assert!(out.contains(&format!("registry {registry}")) && out.contains("password <redacted>"), "{kind}: {out}");
        assert!(!out.contains("characters"), "{kind}: the password's length was printed: {out}");
        assert!(out.contains("expires  ") && out.contains("renews   "), "{kind}: {out}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777, 0o600, "{kind}");
        let written = std::fs::read(&out_file).unwrap();
        let v: Value = serde_json::from_slice(&written).unwrap();
        let password = v["auths"][*registry]["password"].as_str().unwrap().to_string();
        assert!(!out.contains(&password) && !err.contains(&password), "{kind}: the password was printed");
        if *kind == "oauth2" {
            assert!(server.active(&password).await, "the minted token is not active");
        }
        if *kind == "ecr" {
            skopeo_pull(&written, &image).expect("the written dockerconfigjson pulls");
        }
        passwords.push(password);
        outputs.extend([out, err]);
    }
    // Nothing was written to the cluster.
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns.name).list(&Default::default()).await.unwrap();
    assert_eq!(secrets.items.len(), 2, "mint wrote to the cluster");
    let (code, _, err) = cli(&["mint", "-f", "/nonexistent.yaml"]);
    assert_eq!(code, 1, "{err}");
    // A `rotate` source creates keys at a registry, which only the operator
    // tracks (in status): `mint` refuses before anything is asked.
    let rotate = json!({"apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": "keys"},
        "spec": {"source": {"rotate": {"dockerHub": {}, "url": endpoint.url("keys", "body", &[]), "allowInsecureHTTP": true, "adminSecretRef": {"name": "robot"}}}}});
    let manifest = dir.join("rotate.yaml");
    std::fs::write(&manifest, serde_yaml::to_string(&rotate).unwrap()).unwrap();
    let before = endpoint.total().await;
    let (code, out, err) = cli(&["mint", "-f", manifest.to_str().unwrap(), "--secrets-dir", &dir.0.display().to_string()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("keys are created by the operator for a RegistryCredential only"), "{err}");
    assert_eq!(endpoint.total().await, before, "mint asked the vendor");
    let refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let mut leaks: Vec<&str> = passwords.iter().map(String::as_str).collect();
    leaks.extend([server.secret.as_str(), "aws-secret-key-mint-9", "robot-pw-from-file"]);
    no_secret_in(&refs, &leaks);
}

#[tokio::test]
async fn argocd_and_basic_auth_outputs() {
    let (client, ns) = setup("outputs").await;
    let robot_pw = "robot-pw-argo-5";
    let reg = Registry::htpasswd(&[("robot", robot_pw)]).await;
    let image = reg.push_test_image("charts/app", "robot", robot_pw);
    let operator = Operator::start(&ns.name);
    create_secret(&client, &ns.name, "robot", json!({"username": "robot", "password": robot_pw})).await;
    let basic = json!({"secretRef": {"name": "robot"}, "registries": [reg.host], "allowInsecureHTTP": true});
    create_credential(&client, &ns.name, "argo", json!({"source": {"basic": basic},
        "output": {"format": "argocd", "argocdSecretType": "repo-creds", "argocdName": "team charts"}})).await;
    create_credential(&client, &ns.name, "plain", json!({"source": {"basic": basic}, "output": {"format": "basic-auth"}})).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let text = |s: &k8s_openapi::api::core::v1::Secret, k: &str| String::from_utf8(s.data.as_ref().unwrap()[k].0.clone()).unwrap();

    wait_ready(&client, &ns.name, "argo", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let argo = secrets.get("argo").await.unwrap();
    let keys: Vec<&String> = argo.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["enableOCI", "name", "password", "type", "url", "username"], "the keys Argo CD documents");
    assert_eq!(argo.labels().get("argocd.argoproj.io/secret-type").map(String::as_str), Some("repo-creds"));
    assert_eq!((text(&argo, "type").as_str(), text(&argo, "enableOCI").as_str()), ("helm", "true"));
    assert_eq!((text(&argo, "url"), text(&argo, "name").as_str()), (reg.host.clone(), "team charts"));
    skopeo_pull_creds(&text(&argo, "username"), &text(&argo, "password"), &image).expect("the Argo CD credential logs in");

    wait_ready(&client, &ns.name, "plain", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let plain = secrets.get("plain").await.unwrap();
    assert_eq!(plain.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    assert_eq!(plain.data.as_ref().unwrap().len(), 2);
    skopeo_pull_creds(&text(&plain, "username"), &text(&plain, "password"), &image).expect("the basic-auth credential logs in");
    // The rules hold: an edit is repaired in place.
    let uid = plain.metadata.uid.clone();
    secrets.patch("plain", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"password": "edited"}}))).await.unwrap();
    wait_for(Duration::from_secs(30), "the edited Secret repaired", || async {
        let s = secrets.get("plain").await.ok()?;
        (text(&s, "password") == robot_pw && s.metadata.uid == uid).then_some(())
    })
    .await;
    // argocd holds one registry: two are refused, and nothing is written.
    create_credential(&client, &ns.name, "two", json!({"source": {"basic": {"secretRef": {"name": "robot"}, "registries": [reg.host, "other.example"], "verify": false}},
        "output": {"format": "argocd"}})).await;
    let cr = wait_ready(&client, &ns.name, "two", "False", None, Duration::from_secs(60)).await;
    assert!(cr.ready().unwrap().message.contains("holds one registry"), "{}", cr.ready().unwrap().message);
    assert!(secrets.get_opt("two").await.unwrap().is_none());
    assert_no_secrets(&client, &ns.name, &operator, &[robot_pw.into()]).await;
}

#[tokio::test]
async fn replaced_and_deleted_tokens_are_revoked() {
    let (client, ns) = setup("revoke").await;
    let server = OAuth2Server::start(20).await;
    let operator = Operator::start(&ns.name);
    create_secret(&client, &ns.name, "client", json!({"client_id": "regcred-basic", "client_secret": server.secret})).await;
    create_credential(&client, &ns.name, "cred", json!({"source": {"oauth2": {
        "tokenURL": server.token_url(), "allowInsecureHTTP": true, "clientSecretRef": {"name": "client"},
        "registries": ["registry.example.com"], "revoke": {"onRotation": true, "delay": "2s", "onDelete": true}
    }}})).await;
    wait_ready(&client, &ns.name, "cred", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let first = password_in(&secrets.get("cred").await.unwrap(), "registry.example.com");
    assert!(server.active(&first).await);
    // After the rotation and the delay, the previous token is inactive, the new one active.
    let second = wait_for(Duration::from_secs(40), "a rotation", || async {
        let t = password_in(&secrets.get("cred").await.ok()?, "registry.example.com");
        (t != first).then_some(t)
    })
    .await;
    wait_for(Duration::from_secs(20), "the previous token revoked", || async { (!server.active(&first).await).then_some(()) }).await;
    assert!(server.active(&second).await, "the current token was revoked");
    // Deleting the credential revokes the current one.
    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), &ns.name);
    assert!(crs.get("cred").await.unwrap().finalizers().contains(&"regcred.dev/cleanup".to_string()));
    let current = password_in(&secrets.get("cred").await.unwrap(), "registry.example.com");
    crs.delete("cred", &Default::default()).await.unwrap();
    wait_for(Duration::from_secs(30), "the credential gone", || async { crs.get_opt("cred").await.ok()?.is_none().then_some(()) }).await;
    assert!(!server.active(&current).await, "the deleted credential's token is still active");
    assert_no_secrets(&client, &ns.name, &operator, &[server.secret.clone(), first, second, current]).await;
}
