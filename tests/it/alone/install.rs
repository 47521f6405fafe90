//! regcred the way users meet it: the image built without an engine from the
//! release binary (deploy/image/build.py), pushed to a registry that wants a
//! password, `helm install` on a real node (kubelet, containerd, the
//! scheduler), the operator a non-root Pod with a read-only root that finds
//! the API server with its ServiceAccount token; then a credential applied
//! with kubectl, a workload pulling with it, a takeover, an upgrade and an
//! uninstall. In tests/it/alone: it takes the node for minutes, and the
//! release it installs owns the CRDs.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use regcred::api::RegistryCredential;
use serde_json::json;

use crate::support::*;

/// The API server's port on 127.0.0.1, from the test kubeconfig.
pub fn api_server_port() -> u16 {
    let kc = std::fs::read_to_string(&control_plane().kubeconfig).unwrap();
    let server = kc.lines().find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:")).expect("server in the kubeconfig");
    server.trim().parse().unwrap()
}

/// What the kubelet wrote for the Pod's `container` (its log directory, not
/// `kubectl logs`: the API server would look the node up by name).
pub fn pod_log(node: &Node, ns: &str, pod: &Pod, container: &str) -> String {
    let dir = pod_log_dir(node, ns, pod, container);
    let mut out = String::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    out
}

/// Where the kubelet writes the logs of the Pod's `container`.
fn pod_log_dir(node: &Node, ns: &str, pod: &Pod, container: &str) -> std::path::PathBuf {
    node.dir.join("logs/pods").join(format!("{ns}_{}_{}", pod.name_any(), pod.uid().unwrap())).join(container)
}

/// The first log file of the Pod's `container`, open.
pub fn open_pod_log(node: &Node, ns: &str, pod: &Pod, container: &str) -> std::fs::File {
    let dir = pod_log_dir(node, ns, pod, container);
    std::fs::File::open(dir.join("0.log")).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// The operator's Pods (by the chart's selector labels), newest first.
pub async fn operator_pods(client: &Client, ns: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut pods = api.list(&ListParams::default().labels("app.kubernetes.io/name=regcred")).await.unwrap().items;
    pods.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)));
    pods
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The one Ready operator Pod not named `except`. On time-out, the panic
/// shows every operator Pod's status and the namespace's Events.
pub async fn ready_operator_pod(client: &Client, ns: &str, except: Option<&str>, timeout: Duration) -> Pod {
    let deadline = Instant::now() + timeout;
    loop {
        let pods = operator_pods(client, ns).await;
        if let Some(p) = pods.iter().find(|p| is_ready(p) && Some(p.name_any().as_str()) != except) {
            return p.clone();
        }
        if Instant::now() > deadline {
            let (_, events, _) = control_plane().kubectl_output(&["get", "events", "-n", ns, "-o", "custom-columns=OBJ:.involvedObject.name,REASON:.reason,MSG:.message"]);
            let statuses: Vec<String> = pods.iter().map(|p| format!("{}: {}", p.name_any(), serde_json::to_string(&p.status).unwrap())).collect();
            panic!("no Ready operator Pod after {timeout:?}:\n{}\nEvents:\n{events}", statuses.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The process running `/usr/local/bin/regcred run` in a container: its
/// /proc/PID/status and whether its root is mounted read-only.
fn container_process() -> Option<(String, bool)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let p = entry.path();
        let cmdline = std::fs::read(p.join("cmdline")).unwrap_or_default();
        if !cmdline.starts_with(b"/usr/local/bin/regcred\0run\0") {
            continue;
        }
        let status = std::fs::read_to_string(p.join("status")).ok()?;
        let mountinfo = std::fs::read_to_string(p.join("mountinfo")).ok()?;
        // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ...
        let root_ro = mountinfo.lines().filter(|l| l.split(' ').nth(4) == Some("/")).last()?.split(' ').nth(5)?.split(',').any(|o| o == "ro");
        return Some((status, root_ro));
    }
    None
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(key)).unwrap_or("").trim()
}

/// Wait until `cred`'s notAfter moves past `after`; when that was seen.
async fn next_rotation(crs: &Api<RegistryCredential>, after: DateTime<Utc>, timeout: Duration, what: &str) -> (DateTime<Utc>, DateTime<Utc>) {
    wait_for(timeout, what, || async {
        let na = crs.get("cred").await.ok()?.status?.not_after?;
        (na > after).then(|| (na, Utc::now()))
    })
    .await
}

#[tokio::test]
async fn helm_install_from_an_authenticated_registry_runs_rotates_takes_over_upgrades_and_uninstalls() {
    let Some(node) = node() else { return };
    let client = control_plane().client().await;
    let ns = namespace(&client, "install").await;
    let n = &ns.name;
    let dir = TempDir::new("install");

    // The image, from the release binary, in a registry wanting a password over https.
    let certs = TestCerts::new();
    let (pull_user, pull_pw) = ("cluster-pull", "image-pull-pw-5e71c0");
    let registry = Registry::htpasswd_tls(&[(pull_user, pull_pw)], &certs).await;
    let name = format!("{}/regcred/regcred:0.1.0", registry.host);
    let digest = build_image(&release_binary(), &name, &dir.join("image"), None, 0);
    registry.push_oci(&dir.join("image"), "0.1.0", "regcred/regcred:0.1.0", pull_user, pull_pw);
    node.trust(&registry);
    run_ok({
        let mut c = control_plane().kubectl();
        c.args(["create", "secret", "docker-registry", "operator-pull", "-n", n, "--docker-server", &registry.host])
            .args(["--docker-username", pull_user, "--docker-password", pull_pw]);
        c
    });

    // A workload's registry whose realm takes only OAuth2 tokens active now.
    let oauth2 = OAuth2Server::start(45).await;
    let realm = Registry::realm(Some(&oauth2), ("robot", "robot-pw-4d0c2b"), 600, ("pusher", "pusher-pw-9a8b7c")).await;
    let app_image = realm.push_app_image("app", "pusher", "pusher-pw-9a8b7c");
    node.trust(&realm);

    let metrics_port = free_port();
    let values = [
        format!("image.repository={}/regcred/regcred", registry.host),
        "imagePullSecrets[0].name=operator-pull".to_string(),
        "hostNetwork=true".to_string(),
        "apiServer.host=127.0.0.1".to_string(),
        format!("apiServer.port={}", api_server_port()),
        format!("metrics.port={metrics_port}"),
        // One node, on the host network: one replica; takeover is by its replacement.
        "replicaCount=1".to_string(),
    ];
    let mut install = helm();
    install.args(["install", "regcred"]).arg(repo_root().join("charts/regcred")).args(["--namespace", n, "--take-ownership"]);
    for v in &values {
        install.args(["--set", v]);
    }
    let installed = Instant::now();
    run_ok(install);

    // The Pod: pulled with the pull Secret, Ready (its probes pass), as the chart says.
    let pod = ready_operator_pod(&client, n, None, Duration::from_secs(120)).await;
    let ready_in = installed.elapsed();
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("regcred"));
    assert_eq!(spec.host_network, Some(true));
    let image_id = pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].image_id.clone();
    assert!(image_id.ends_with(&digest), "the Pod runs {image_id}, not the image built ({digest})");
    let (status, root_ro) = wait_for(Duration::from_secs(10), "the operator's process", || async { container_process() }).await;
    assert_eq!(status_field(&status, "Uid:"), "65532\t65532\t65532\t65532", "{status}");
    assert_eq!(status_field(&status, "Gid:"), "65532\t65532\t65532\t65532");
    assert_eq!(status_field(&status, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    assert!(root_ro, "the root filesystem is writable");
    // Exactly the chart's RBAC: every binding naming the ServiceAccount is the
    // release's, and what the chart does not grant is refused.
    let sa = format!("system:serviceaccount:{n}:regcred");
    let (ok, out, err) = control_plane().kubectl_output(&["get", "clusterrolebindings,rolebindings", "-A", "-o", "json"]);
    assert!(ok, "{err}");
    let bindings: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ours = 0;
    for b in bindings["items"].as_array().unwrap() {
        let names_sa = b["subjects"].as_array().into_iter().flatten().any(|s| s["kind"] == "ServiceAccount" && s["name"] == "regcred" && s["namespace"] == n.as_str());
        if names_sa {
            ours += 1;
            assert_eq!(b["metadata"]["labels"]["app.kubernetes.io/instance"], "regcred", "a binding not from the chart: {}", b["metadata"]["name"]);
        }
    }
    assert!(ours > 0, "no binding names {sa}");
    let can = |args: &[&str]| {
        let mut full = vec!["auth", "can-i", "--as", sa.as_str(), "-n", n.as_str()];
        full.extend_from_slice(args);
        control_plane().kubectl_output(&full).1.trim() == "yes"
    };
    for allowed in [&["get", "secrets"][..], &["list", "registrycredentials.regcred.dev", "-A"], &["create", "events.events.k8s.io"]] {
        assert!(can(allowed), "the chart's RBAC does not grant {allowed:?}");
    }
    for refused in [&["get", "pods"][..], &["get", "configmaps"], &["create", "namespaces"], &["delete", "registrycredentials.regcred.dev"]] {
        assert!(!can(refused), "{refused:?} is granted beyond the chart's RBAC");
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("regcred_"), "{metrics}");

    // A credential, applied with kubectl; a workload pulls with its Secret.
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "client"},
        "stringData": {"client_id": "regcred-basic", "client_secret": oauth2.secret}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), n).create(&Default::default(), &secret).await.unwrap();
    let manifest = dir.join("cred.yaml");
    std::fs::write(&manifest, serde_json::to_string(&json!({
        "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": "cred", "namespace": n},
        "spec": {"source": {"oauth2": {"tokenURL": oauth2.token_url(), "allowInsecureHTTP": true,
            "clientSecretRef": {"name": "client"}, "registries": [realm.host]}}}
    })).unwrap()).unwrap();
    let (ok, out, err) = control_plane().kubectl_output(&["apply", "--server-side", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let cr = wait_ready(&client, n, "cred", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let first_rotation_in = installed.elapsed();
    let (outcome, _, workload) = start_pod(&client, n, node.pod("workload", &app_image, &["cred"]), Duration::from_secs(60)).await;
    assert_eq!(outcome, PodOutcome::Running, "{:?}", event_messages(&client, n, &workload.uid().unwrap()).await);
    let crs: Api<RegistryCredential> = Api::namespaced(client.clone(), n);
    let mut not_after = cr.status.unwrap().not_after.unwrap();
    let mut leaks = vec![oauth2.secret.clone(), pull_pw.to_string(), "robot-pw-4d0c2b".into()];
    leaks.push(password_in(&Api::<Secret>::namespaced(client.clone(), n).get("cred").await.unwrap(), &realm.host));

    // Takeover: the leader Pod deleted, its replacement leads and renews in time.
    let leases: Api<Lease> = Api::namespaced(client.clone(), n);
    let holder = || async { leases.get("regcred-leader").await.ok()?.spec?.holder_identity };
    assert_eq!(holder().await.as_deref(), Some(pod.name_any().as_str()));
    // Held open: the kubelet removes a deleted Pod's log directory, and an open
    // file still reads what the container wrote until it stopped.
    let mut old_log_file = open_pod_log(&node, n, &pod, "regcred");
    let deleted = Instant::now();
    let deleted_at = Utc::now();
    let (ok, out, err) = control_plane().kubectl_output(&["delete", "pod", "-n", n, &pod.name_any(), "--wait=false"]);
    assert!(ok, "{out}{err}");
    let old_pod = pod;
    let pod = ready_operator_pod(&client, n, Some(&old_pod.name_any()), Duration::from_secs(120)).await;
    let name = pod.name_any();
    wait_for(Duration::from_secs(60), "the replacement to hold the lease", || async {
        (holder().await.as_deref() == Some(name.as_str())).then_some(())
    })
    .await;
    let takeover = deleted.elapsed();
    let (renewed, seen) = next_rotation(&crs, not_after, Duration::from_secs(60), "a renewal by the replacement").await;
    assert!(seen < not_after, "renewed at {seen}, after the Secret expired at {not_after}");
    let renewal = format!("first renewal {:.1} s after the delete, {:.1} s before the old credential expired", (seen - deleted_at).as_seconds_f64(), (not_after - seen).as_seconds_f64());
    not_after = renewed;
    let mut old_log = String::new();
    std::io::Read::read_to_string(&mut old_log_file, &mut old_log).unwrap();
    assert!(old_log.contains("released the leader lease"), "{old_log}");

    // helm upgrade changing a flag rolls the Deployment; rotation goes on.
    let mut second_log_file = open_pod_log(&node, n, &pod, "regcred");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), n);
    let generation = deployments.get("regcred").await.unwrap().metadata.generation;
    let mut upgrade = helm();
    upgrade.args(["upgrade", "regcred"]).arg(repo_root().join("charts/regcred")).args(["--namespace", n, "--reuse-values", "--set", "logging.level=debug"]);
    run_ok(upgrade);
    assert_ne!(deployments.get("regcred").await.unwrap().metadata.generation, generation);
    let upgraded = ready_operator_pod(&client, n, Some(&pod.name_any()), Duration::from_secs(120)).await;
    let args = upgraded.spec.as_ref().unwrap().containers[0].args.clone().unwrap_or_default();
    assert!(args.contains(&"--log-level=debug".to_string()), "{args:?}");
    let (_, seen) = next_rotation(&crs, not_after, Duration::from_secs(60), "a renewal after the upgrade").await;
    assert!(seen < not_after, "renewed at {seen}, after the Secret expired at {not_after}");
    let (outcome, _, _) = start_pod(&client, n, node.pod("workload-after", &app_image, &["cred"]), Duration::from_secs(60)).await;
    assert_eq!(outcome, PodOutcome::Running);

    // The Pods' logs: no secret in them.
    let mut second_log = String::new();
    std::io::Read::read_to_string(&mut second_log_file, &mut second_log).unwrap();
    let logs = [(old_pod.name_any(), old_log), (pod.name_any(), second_log), (upgraded.name_any(), pod_log(&node, n, &upgraded, "regcred"))];
    for (name, log) in &logs {
        assert!(log.contains("became the leader"), "{name}'s log: {log}");
        for s in &leaks {
            assert!(!log.contains(s.as_str()), "a secret in {name}'s log");
        }
    }
    // No restarts: the liveness probe passed all along.
    for p in operator_pods(&client, n).await.iter().filter(|p| is_ready(p)) {
        let restarts = p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].restart_count;
        assert_eq!(restarts, 0, "{} restarted", p.name_any());
    }

    // helm uninstall: the operator goes, the CRDs, credentials and Secrets stay.
    let mut uninstall = helm();
    uninstall.args(["uninstall", "regcred", "--namespace", n, "--wait"]);
    run_ok(uninstall);
    assert!(deployments.get_opt("regcred").await.unwrap().is_none());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in ["registrycredentials.regcred.dev", "clusterregistrycredentials.regcred.dev"] {
        assert!(crds.get_opt(crd).await.unwrap().is_some(), "{crd} went with the release");
    }
    assert!(crs.get_opt("cred").await.unwrap().is_some());
    assert!(Api::<Secret>::namespaced(client.clone(), n).get_opt("cred").await.unwrap().is_some());
    // Its finalizer would wait for an operator for ever (the README says so).
    let (ok, out, err) = control_plane().kubectl_output(&["patch", "regcred", "cred", "-n", n, "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    assert!(ok, "{out}{err}");

    eprintln!(
        "image {digest}; helm install to Pod Ready {:.1} s, to first rotation {:.1} s; takeover (leader Pod deleted to replacement holding the lease) {:.1} s, {renewal}",
        ready_in.as_secs_f64(),
        first_rotation_in.as_secs_f64(),
        takeover.as_secs_f64()
    );
}

/// `path` relative to `from` (kustomize refuses absolute paths to bases).
fn relative(from: &std::path::Path, path: &std::path::Path) -> String {
    let depth = from.components().count() - 1;
    format!("{}{}", "../".repeat(depth), path.strip_prefix("/").unwrap().display())
}

#[tokio::test]
async fn the_plain_manifest_with_the_host_network_component_runs_on_the_node() {
    let Some(node) = node() else { return };
    let client = control_plane().client().await;
    let dir = TempDir::new("manifest");

    // The image, imported into the node's containerd under the name the manifest names.
    let manifest = std::fs::read_to_string(repo_root().join("deploy/regcred.yaml")).unwrap();
    let name = manifest.lines().find_map(|l| l.trim().strip_prefix("image: ")).unwrap().to_string();
    // Another timestamp than the Helm test's image, so another image to the
    // kubelet: it records that the Helm test pulled that one with a pull
    // Secret (KubeletEnsureSecretPulledImages) and would then want every Pod
    // using it to show credentials for it, as a node that pulled it would.
    let digest = build_image(&release_binary(), &name, &dir.join("image"), Some(&dir.join("image.tar")), 1);
    let socket = node.dir.join("containerd/containerd.sock");
    let mut import = Command::new("ctr");
    import.arg("-a").arg(&socket).args(["-n", "k8s.io", "images", "import"]).arg(dir.join("image.tar"));
    run_ok(import);
    let mut list = Command::new("ctr");
    list.arg("-a").arg(&socket).args(["-n", "k8s.io", "images", "ls"]);
    let images = run_ok(list);
    // REF TYPE DIGEST SIZE PLATFORMS LABELS
    assert!(images.lines().any(|l| l.split_whitespace().next() == Some(name.as_str()) && l.contains(&digest)), "ctr did not import {name} as {digest}:\n{images}");
    let _cleanup = ManifestCleanup;

    // A kustomization of the user's own: the manifest, our host-network
    // component, and the API server's address (as the README says).
    let overlay = dir.join("overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    let deploy = repo_root().join("deploy");
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "resources: [{}]\ncomponents: [{}]\npatches:\n  - target: {{kind: Deployment, name: regcred}}\n    patch: |-\n      \
             - {{op: add, path: /spec/template/spec/containers/0/env/-, value: {{name: KUBERNETES_SERVICE_HOST, value: \"127.0.0.1\"}}}}\n      \
             - {{op: add, path: /spec/template/spec/containers/0/env/-, value: {{name: KUBERNETES_SERVICE_PORT, value: \"{}\"}}}}\n",
            relative(&overlay, &deploy),
            relative(&overlay, &deploy.join("kustomize/host-network")),
            api_server_port()
        ),
    )
    .unwrap();
    let applied = Instant::now();
    // --force-conflicts: the CRDs may already be there under another manager.
    let (ok, out, err) = control_plane().kubectl_output(&["apply", "--server-side", "--force-conflicts", "-k", overlay.to_str().unwrap()]);
    assert!(ok, "{out}{err}");

    let ns = "regcred-system";
    let pod = ready_operator_pod(&client, ns, None, Duration::from_secs(120)).await;
    let ready_in = applied.elapsed();
    let container = &pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0];
    assert_eq!(container.image, name);
    assert_eq!(pod.spec.as_ref().unwrap().host_network, Some(true));

    // One rotation.
    let tenant = namespace(&client, "manifest").await;
    let t = &tenant.name;
    create_secret(&client, t, "robot", json!({"username": "robot", "password": "manifest-pw-7c3e90"})).await;
    create_credential(&client, t, "cred", json!({"source": {"basic": {"secretRef": {"name": "robot"}, "registries": ["registry.example.com"], "verify": false}}})).await;
    wait_ready(&client, t, "cred", "True", Some("Rotated"), Duration::from_secs(60)).await;
    let log = pod_log(&node, ns, &pod, "regcred");
    assert!(log.contains("became the leader") && !log.contains("manifest-pw-7c3e90"), "{log}");
    eprintln!("plain manifest: image {digest} imported; kubectl apply -k to Pod Ready {:.1} s", ready_in.as_secs_f64());

    // The credential goes while the operator runs (its finalizer); the CRDs
    // stay (other tests use them); the operator goes with its namespace.
    let (ok, out, err) = control_plane().kubectl_output(&["delete", "regcred", "cred", "-n", t, "--timeout=60s"]);
    assert!(ok, "{out}{err}");
}

/// What the plain manifest installed, but the CRDs (other tests use them):
/// its namespace and its cluster-wide RBAC, which a Helm release of the
/// same name would otherwise conflict with.
struct ManifestCleanup;

impl Drop for ManifestCleanup {
    fn drop(&mut self) {
        // Waited for: the README's test installs into regcred-system next.
        let _ = control_plane().kubectl_output(&["delete", "namespace", "regcred-system", "--ignore-not-found", "--timeout=120s"]);
        let _ = control_plane().kubectl_output(&["delete", "clusterrole,clusterrolebinding", "-l", "app.kubernetes.io/instance=regcred", "--ignore-not-found"]);
    }
}
