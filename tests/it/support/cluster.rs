//! One real control plane per test run (our envtest): started by
//! `tests/controlplane/up.sh` on 127.0.0.1 and stopped when this process
//! exits (its stdin pipe closes). With `USE_EXISTING_CLUSTER=true` the tests
//! use the cluster `KUBECONFIG` points at instead.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    /// Directory of kubectl (and, when we started it, the control plane binaries).
    pub bin: Option<PathBuf>,
    _process: Option<Child>,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn start() -> ControlPlane {
    if std::env::var("USE_EXISTING_CLUSTER").as_deref() == Ok("true") {
        let kubeconfig = std::env::var("KUBECONFIG").expect("USE_EXISTING_CLUSTER=true needs KUBECONFIG");
        return ControlPlane { kubeconfig: kubeconfig.into(), bin: None, _process: None };
    }
    let dir = std::env::temp_dir().join(format!("regcred-cp-{}", std::process::id()));
    let mut child = Command::new(repo_root().join("tests/controlplane/up.sh"))
        .arg("--until-stdin-closes")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting tests/controlplane/up.sh");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut kubeconfig = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("reading up.sh output");
        if let Some(path) = line.strip_prefix("READY ") {
            kubeconfig = Some(PathBuf::from(path));
            break;
        }
    }
    let kubeconfig = kubeconfig.expect("the control plane did not start (see the log above)");
    let bin = Command::new(repo_root().join("tests/controlplane/build.sh"))
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string()));
    // `child` keeps the pipe to up.sh's stdin open until this process exits.
    ControlPlane { kubeconfig, bin, _process: Some(child) }
}

pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(start)
}

impl ControlPlane {
    /// A client for the current test's runtime (a client must not outlive
    /// the runtime that created it, and every test has its own).
    pub async fn client(&self) -> Client {
        regcred::install_crypto_provider();
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("reading kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// `kubectl` with the test kubeconfig.
    pub fn kubectl(&self) -> Command {
        let exe = self.bin.as_ref().map(|b| b.join("kubectl")).unwrap_or_else(|| "kubectl".into());
        let mut c = Command::new(exe);
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// Run kubectl and return (success, stdout, stderr).
    pub fn kubectl_output(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.kubectl().args(args).output().expect("running kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The audit log's entries (JSON lines) for a subresource (`token`,
/// `eviction`) in a namespace; None on a cluster of yours, where the tests
/// have no audit log (tests/controlplane/up.sh writes one).
pub fn audit_entries(ns: &str, subresource: &str) -> Option<Vec<String>> {
    let dir = control_plane().kubeconfig.parent()?.to_path_buf();
    let log = std::fs::read_to_string(dir.join("audit.log")).ok()?;
    let (sub, namespace) = (format!(r#""subresource":"{subresource}""#), format!(r#""namespace":"{ns}""#));
    Some(log.lines().filter(|l| l.contains(&sub) && l.contains(&namespace)).map(String::from).collect())
}

/// A namespace of its own for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
    kubectl: Command,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = self
            .kubectl
            .args(["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Create a fresh namespace named after the test.
pub async fn namespace(client: &Client, prefix: &str) -> TestNamespace {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": format!("{prefix}-"), "labels": {"regcred.dev/test": "true"}}
    }))
    .unwrap();
    let ns = api.create(&PostParams::default(), &ns).await.expect("creating test namespace");
    TestNamespace {
        name: ns.metadata.name.unwrap(),
        kubeconfig: control_plane().kubeconfig.clone(),
        kubectl: control_plane().kubectl(),
    }
}

/// Install the generated CRDs (server-side apply, idempotent) and wait until
/// they are Established and served.
pub async fn install_crd(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["crds/registrycredential.yaml", "crds/clusterregistrycredential.yaml"] {
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(file)).expect("reading a CRD")).expect("parsing a CRD");
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply("regcred-tests").force(), &Patch::Apply(&crd))
            .await
            .expect("applying a CRD");
        wait_for(Duration::from_secs(60), "CRD Established", || async {
            let c = api.get(&name).await.ok()?;
            let established = c.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        })
        .await;
    }
    // Established can precede discovery by a moment.
    let rc: Api<regcred::api::RegistryCredential> = Api::all(client.clone());
    let crc: Api<regcred::api::ClusterRegistryCredential> = Api::all(client.clone());
    wait_for(Duration::from_secs(30), "both kinds served", || async {
        rc.list(&Default::default()).await.ok()?;
        crc.list(&Default::default()).await.ok().map(|_| ())
    })
    .await;
}

/// Poll `f` every 200 ms until it returns Some, or panic after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Delete an object in the foreground style tests want: ignore "not found".
pub async fn delete<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// A ValidatingAdmissionPolicy (`spec` as given) with a binding that
/// denies what it refuses; both removed when dropped. Cluster-scoped: name
/// it after the test's own objects.
pub struct AdmissionPolicy(String);

impl AdmissionPolicy {
    pub fn install(name: &str, spec: serde_json::Value) -> Self {
        let docs = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": name}, "spec": spec},
            {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
             "metadata": {"name": name}, "spec": {"policyName": name, "validationActions": ["Deny"]}}
        ]});
        let file = std::env::temp_dir().join(format!("{name}-{}.json", std::process::id()));
        std::fs::write(&file, docs.to_string()).unwrap();
        let (ok, out, err) = control_plane().kubectl_output(&["apply", "-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        assert!(ok, "{out}{err}");
        Self(name.to_string())
    }
}

impl Drop for AdmissionPolicy {
    fn drop(&mut self) {
        for kind in ["validatingadmissionpolicybinding", "validatingadmissionpolicy"] {
            let _ = control_plane().kubectl_output(&["delete", kind, &self.0, "--ignore-not-found", "--wait=false"]);
        }
    }
}

/// Helm (built with the control plane), pointed at the test cluster.
pub fn helm() -> Command {
    let bin = control_plane().bin.clone().expect("helm comes with the test control plane");
    let mut c = Command::new(bin.join("helm"));
    c.env("KUBECONFIG", &control_plane().kubeconfig).env("HELM_CACHE_HOME", std::env::temp_dir().join("regcred-helm-cache"));
    c
}

/// Run a command that must succeed; its stdout.
pub fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
