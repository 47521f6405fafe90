//! How people install and run regcred: the Helm chart (lint, template,
//! server-side dry run, install), its RBAC as the operator's only identity,
//! the plain manifest and examples, leader election between two processes,
//! and the metrics endpoint.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use regcred::api::RegistryCredential;
use serde_json::json;

use crate::support::*;

/// `kubectl <args>` with `input` on stdin: (success, stdout + stderr).
fn kubectl_stdin(args: &[&str], input: &str) -> (bool, String) {
    let mut child = control_plane()
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn chart_lints_renders_and_passes_a_server_side_dry_run() {
    let (_client, ns) = setup("chart").await;
    let chart = repo_root().join("charts/regcred");
    let mut lint = helm();
    lint.args(["lint", "--strict"]).arg(&chart);
    run_ok(lint);
    // Invalid values are refused by values.schema.json.
    let mut bad = helm();
    bad.args(["template", "r"]).arg(&chart).args(["--set", "logging.format=xml"]);
    assert!(!bad.output().unwrap().status.success());

    let watch = format!("watchNamespace={}", ns.name);
    let variants: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--set", &watch],
        vec!["--set", "ecr.webIdentity=true", "--set", "ecr.identityNamespaceSelector=ecr=allowed", "--set", "networkPolicy.enabled=true", "--set", "replicaCount=1"],
        vec!["--set", "proxy.httpProxy=http://proxy.example:3128", "--set", "proxy.httpsProxy=http://proxy.example:3128", "--set", r"proxy.noProxy=kubernetes.default.svc\,10.96.0.1"],
    ];
    for extra in variants {
        let mut t = helm();
        // The CRD is already installed (by the suite, under another field manager).
        t.args(["template", "r"]).arg(&chart).args(["--namespace", &ns.name, "--set", "crds.install=false"]).args(&extra);
        let rendered = run_ok(t);
        let (ok, out) = kubectl_stdin(&["apply", "--server-side", "--dry-run=server", "--field-manager", "regcred-chart-test", "-f", "-"], &rendered);
        assert!(ok, "dry run of {extra:?} failed:\n{out}");
        assert!(out.contains("deployment.apps/r-regcred serverside-applied (server dry run)"), "{out}");
        if extra.iter().any(|a| a.starts_with("proxy.")) {
            for env in ["name: HTTP_PROXY", "name: HTTPS_PROXY", "value: \"kubernetes.default.svc,10.96.0.1\""] {
                assert!(rendered.contains(env), "{env} not rendered");
            }
        } else {
            assert!(!rendered.contains("_PROXY"), "proxy variables rendered without the values");
        }
    }
    // Monitoring objects need the Prometheus Operator's CRDs, absent here:
    // check they render as the documents Prometheus expects.
    let mut t = helm();
    t.args(["template", "r"]).arg(&chart).args(["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true"]);
    let rendered = run_ok(t);
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rendered).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d.get("kind")?.as_str()).collect();
    assert!(kinds.contains(&"ServiceMonitor") && kinds.contains(&"PrometheusRule"), "{kinds:?}");
    assert!(rendered.contains("regcred_credential_expiry_timestamp_seconds") && rendered.contains("regcred_credential_ready"));
}

#[test]
fn plain_manifest_does_not_drift_from_the_chart() {
    let helm_bin = control_plane().bin.clone().unwrap().join("helm");
    let out = Command::new(repo_root().join("deploy/render.sh")).env("HELM", helm_bin).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let committed = std::fs::read_to_string(repo_root().join("deploy/regcred.yaml")).unwrap();
    assert!(committed == String::from_utf8_lossy(&out.stdout), "deploy/regcred.yaml is stale: run deploy/render.sh > deploy/regcred.yaml");
}

#[tokio::test]
async fn plain_manifest_and_examples_are_accepted_by_the_api_server() {
    let (_client, ns) = setup("examples").await;
    let manifest = std::fs::read_to_string(repo_root().join("deploy/regcred.yaml")).unwrap();
    // A dry run cannot place objects in a namespace it only pretends to create.
    let _ = control_plane().kubectl_output(&["create", "namespace", "regcred-system"]);
    let (ok, out) = kubectl_stdin(&["apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager", "regcred-manifest-test", "-f", "-"], &manifest);
    assert!(ok, "{out}");
    let dir = repo_root().join("deploy/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let (ok, out, err) = control_plane().kubectl_output(&["create", "--dry-run=server", "-n", &ns.name, "-f", path.to_str().unwrap()]);
        assert!(ok, "{}: {out}{err}", path.display());
        n += out.matches("registrycredential.regcred.dev/").count();
    }
    assert_eq!(n, 9, "every example credential is checked");
}

/// A kubeconfig that authenticates as a ServiceAccount, with a TokenRequest token.
fn service_account_kubeconfig(ns: &str, sa: &str, dir: &TempDir) -> std::path::PathBuf {
    let (ok, token, err) = control_plane().kubectl_output(&["create", "token", sa, "-n", ns, "--duration", "1h"]);
    assert!(ok, "{err}");
    let (ok, view, err) = control_plane().kubectl_output(&["config", "view", "--raw", "--minify", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&view).unwrap();
    let cluster = &v["clusters"][0]["cluster"];
    let kc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": sa, "namespace": ns}}],
        "current-context": "sa",
    });
    let path = dir.join("sa.kubeconfig");
    std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn operator_runs_with_only_the_charts_rbac() {
    let (client, ns) = setup("helm").await;
    let chart = repo_root().join("charts/regcred");
    let mut install = helm();
    install
        .args(["install", "regcred"])
        .arg(&chart)
        .args(["--namespace", &ns.name, "--set", "crds.install=false", "--set", "replicaCount=1"]);
    run_ok(install);
    let dir = TempDir::new("helm");
    let kubeconfig = service_account_kubeconfig(&ns.name, "regcred", &dir);
    let kc = kubeconfig.to_str().unwrap();
    // The chart's Deployment args, run as a process with the chart's ServiceAccount.
    let operator = Operator::start_with(
        &ns.name,
        &["--leader-elect", "--leader-election-lease-name", "regcred-leader", "--log-format", "json"],
        &[("KUBECONFIG", kc), ("POD_NAMESPACE", &ns.name), ("POD_NAME", "regcred-0")],
    );
    create_secret(&client, &ns.name, "robot", json!({"username": "u", "password": "chart-pw-4451aa"})).await;
    create_credential(&client, &ns.name, "cred", json!({"source": {"basic": {
        "secretRef": {"name": "robot"}, "registries": ["registry.example.com"], "verify": false
    }}})).await;
    let cr = wait_ready(&client, &ns.name, "cred", "True", Some("Rotated"), Duration::from_secs(60)).await;
    assert_eq!(cr.status.unwrap().secret_name.as_deref(), Some("cred"));
    assert!(operator.logs().contains("became the leader"));
    let events = control_plane().kubectl_output(&["get", "events", "-n", &ns.name, "--field-selector", "reason=Rotated", "-o", "name"]).1;
    assert!(!events.trim().is_empty(), "no Rotated Event: the chart's RBAC must allow Events");

    // Outside the chart's RBAC: really forbidden.
    let sa = |args: &[&str]| {
        let out = control_plane().kubectl().arg("--kubeconfig").arg(kc).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for args in [
        vec!["delete", "secret", "robot"],
        vec!["get", "pods"],
        vec!["get", "configmaps"],
        vec!["delete", "registrycredential", "cred"],
        vec!["create", "namespace", "regcred-escape"],
    ] {
        let (ok, err) = sa(&args);
        assert!(!ok && err.contains("Forbidden"), "{args:?} was allowed: {err}");
    }
    let (ok, _) = sa(&["get", "secrets"]);
    assert!(ok, "the chart's RBAC must allow reading Secrets");
    assert!(Api::<Secret>::namespaced(client.clone(), &ns.name).get_opt("robot").await.unwrap().is_some());
    assert_no_secrets(&client, &ns.name, &operator, &["chart-pw-4451aa".into()]).await;
}

#[tokio::test]
async fn two_replicas_one_leader_and_takeover() {
    let (client, ns) = setup("leader").await;
    let server = OAuth2Server::start(20).await;
    let args = |id: &'static str| -> Vec<String> {
        vec!["--leader-elect".into(), "--leader-election-namespace".into(), ns.name.clone(), "--leader-election-lease-seconds".into(), "6".into(), "--instance".into(), id.into()]
    };
    let a_args = args("replica-a");
    let b_args = args("replica-b");
    let a = Operator::start_with(&ns.name, &a_args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    // Let the first one take the lease, so the roles are known.
    wait_for(Duration::from_secs(30), "replica-a to lead", || async { a.logs().contains("became the leader").then_some(()) }).await;
    let b = Operator::start_with(&ns.name, &b_args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    wait_for(Duration::from_secs(30), "replica-b to stand by", || async { b.logs().contains("waiting to become the leader").then_some(()) }).await;

    let first = ready_oauth2_credential(&client, &ns.name, &server).await;
    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), &ns.name);
    // Exactly one reconciles.
    assert!(a.logs().contains("minting"));
    assert!(!b.logs().contains("minting") && !b.logs().contains("became the leader"), "the standby reconciled");

    // Stop the leader: the standby takes over and keeps rotating.
    let mut a = a;
    let stopped = Instant::now();
    a.stop();
    wait_for(Duration::from_secs(30), "replica-b to take over", || async { b.logs().contains("became the leader").then_some(()) }).await;
    let takeover = stopped.elapsed();
    let before = first.status.unwrap().not_after.unwrap();
    wait_for(Duration::from_secs(60), "a rotation by the new leader", || async {
        let cr = crs.get("cred").await.ok()?;
        (cr.status?.not_after? > before).then_some(())
    })
    .await;
    assert!(b.logs().contains("minting"));
    assert!(a.logs().contains("released the leader lease"), "the old leader did not release its lease:\n{}", a.logs().lines().rev().take(8).collect::<Vec<_>>().join("\n"));
    eprintln!("leader takeover after SIGTERM: {takeover:?}");
    assert_no_secrets(&client, &ns.name, &b, std::slice::from_ref(&server.secret)).await;
}

#[tokio::test]
async fn metrics_expose_the_expiry_of_each_credential() {
    let (client, ns) = setup("metrics").await;
    let server = OAuth2Server::start(300).await;
    let operator = Operator::start(&ns.name);
    let cr = ready_oauth2_credential(&client, &ns.name, &server).await;
    let st = cr.status.unwrap();
    let addr = operator.metrics_address().await;
    regcred::install_crypto_provider();
    let get = |path: &'static str| {
        let addr = addr.clone();
        async move {
            let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    let sample = |metric: &str| -> Option<f64> {
        let prefix = format!("{metric}{{namespace=\"{}\",name=\"cred\"}} ", ns.name);
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(sample("regcred_credential_expiry_timestamp_seconds"), Some(st.not_after.unwrap().timestamp() as f64), "{text}");
    assert_eq!(sample("regcred_credential_renewal_timestamp_seconds"), Some(st.renewal_time.unwrap().timestamp() as f64));
    assert_eq!(sample("regcred_credential_ready"), Some(1.0));
    assert_eq!(sample("regcred_rotations_total"), Some(1.0));
    assert!(text.contains("regcred_reconcile_duration_seconds_count"));
    assert!(text.contains("regcred_mints_total{source=\"oauth2\"} 1"));
    assert!(!text.contains(&server.secret));
}

/// The Dockerfile's USER, ENTRYPOINT, CMD and the binary's path.
fn dockerfile_says() -> (String, Vec<String>, Vec<String>, String) {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    // The last stage is the image.
    let last = &text[text.rfind("\nFROM ").unwrap()..];
    let line = |key: &str| last.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in the Dockerfile's last stage")).trim().to_string();
    let exec = |key: &str| serde_json::from_str::<Vec<String>>(&line(key)).unwrap();
    let copy = line("COPY ");
    (line("USER "), exec("ENTRYPOINT "), exec("CMD "), copy.split_whitespace().last().unwrap().to_string())
}

#[test]
fn the_image_built_without_an_engine_agrees_with_the_dockerfile_and_is_reproducible() {
    let binary = release_binary();
    let dir = TempDir::new("image");
    let name = "ghcr.io/regcred/regcred:0.1.0";
    let a = build_image(&binary, name, &dir.join("a"), Some(&dir.join("a.tar")), 0);
    let b = build_image(&binary, name, &dir.join("b"), Some(&dir.join("b.tar")), 0);
    assert_eq!(a, b, "two builds from one binary, two digests");
    assert!(std::fs::read(dir.join("a.tar")).unwrap() == std::fs::read(dir.join("b.tar")).unwrap(), "the archives differ");

    // skopeo reads it, and it says what the Dockerfile says.
    let inspect = |extra: &[&str]| -> serde_json::Value {
        let mut c = Command::new(peers().path("SKOPEO"));
        c.arg("inspect").args(extra).arg(format!("oci:{}:0.1.0", dir.join("a").display()));
        serde_json::from_str(&run_ok(c)).unwrap()
    };
    assert_eq!(inspect(&[])["Digest"], a.as_str());
    let config = inspect(&["--config"]);
    let (user, entrypoint, cmd, path) = dockerfile_says();
    assert_eq!(config["config"]["User"], user.as_str());
    assert_eq!(config["config"]["Entrypoint"], json!(entrypoint));
    assert_eq!(config["config"]["Cmd"], json!(cmd));
    assert_eq!(entrypoint[0], path, "the entrypoint is the binary the Dockerfile copies");
    assert_eq!(config["os"], "linux");

    // The binary is where the entrypoint says, and the user exists: unpack the
    // layers and run it as that user, from that root.
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("a/index.json")).unwrap()).unwrap();
    let blob = |d: &str| dir.join("a/blobs/sha256").join(d.trim_start_matches("sha256:"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap()).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let mut c = Command::new("tar");
        c.arg("-xzf").arg(blob(layer["digest"].as_str().unwrap())).arg("-C").arg(&root);
        run_ok(c);
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let uid = user.split(':').next().unwrap();
    assert!(passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)), "no passwd entry for {uid}");
    let mut c = Command::new("chroot");
    c.arg(format!("--userspec={user}")).arg(&root).arg(&path).arg("--version");
    let out = run_ok(c);
    assert!(out.starts_with("regcred "), "{out}");
    assert!(root.join("etc/ssl/certs/ca-certificates.crt").is_file());
}
