//! A real node: containerd and a kubelet started by tests/node/up.sh for the
//! test control plane, once per test process, taken down (processes, mounts,
//! cgroups, sysctls, files outside its directory) when the process exits.
//!
//! One node per machine and one node test at a time: [`node`] hands out the
//! node under a process-wide lock, and up.sh itself takes a machine-wide file
//! lock (`/tmp/regcred-node.lock`), so a second test process waits.
//!
//! With `USE_EXISTING_CLUSTER=true` the node tests are skipped, with a
//! printed reason: they need a node that reaches registries on this
//! machine's 127.0.0.1, which another cluster's nodes do not.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

use super::{control_plane, repo_root, wait_for, Registry};

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    /// From starting up.sh to the Node being Ready.
    pub started_in: Duration,
    _process: Mutex<Child>,
}

static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// The node, held for one test; `None` (with the reason printed) when the
/// tests run against an existing cluster.
pub struct NodeGuard {
    pub node: &'static Node,
    _exclusive: MutexGuard<'static, ()>,
}

impl std::ops::Deref for NodeGuard {
    type Target = Node;
    fn deref(&self) -> &Node {
        self.node
    }
}

pub fn node() -> Option<NodeGuard> {
    if std::env::var("USE_EXISTING_CLUSTER").as_deref() == Ok("true") {
        eprintln!("SKIPPED: USE_EXISTING_CLUSTER=true: node tests need a kubelet that pulls from registries on this machine's 127.0.0.1");
        return None;
    }
    // A failed test poisons the lock; the node itself is still fine.
    let exclusive = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let node = NODE.get_or_init(start).as_ref().unwrap_or_else(|e| panic!("{e}"));
    Some(NodeGuard { node, _exclusive: exclusive })
}

fn start() -> Result<Node, String> {
    let cp = control_plane();
    let cp_dir = cp.kubeconfig.parent().expect("kubeconfig in the control plane's directory").to_path_buf();
    let dir = std::env::temp_dir().join(format!("regcred-node-{}", std::process::id()));
    let began = Instant::now();
    let mut child = Command::new(repo_root().join("tests/node/up.sh"))
        .arg("--until-stdin-closes")
        .arg(&cp_dir)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting tests/node/up.sh: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading up.sh output: {e}"))?;
        if let Some(rest) = line.strip_prefix("READY ") {
            let name = rest.split_whitespace().next().unwrap_or_default().to_string();
            let started_in = began.elapsed();
            eprintln!("node {name} Ready {:.1} s after starting tests/node/up.sh", started_in.as_secs_f64());
            return Ok(Node { name, dir, started_in, _process: Mutex::new(child) });
        }
    }
    Err("the node did not start (see the log above)".into())
}

impl Node {
    /// Tell containerd how to reach `registry` (http, or https with the test CA).
    pub fn trust(&self, registry: &Registry) {
        let d = self.dir.join("containerd/certs.d").join(&registry.host);
        std::fs::create_dir_all(&d).unwrap();
        let toml = match &registry.cert_dir {
            Some(ca) => format!(
                "server = \"https://{h}\"\n[host.\"https://{h}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
                ca.join("ca.crt").display(),
                h = registry.host
            ),
            None => format!("server = \"http://{h}\"\n[host.\"http://{h}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", h = registry.host),
        };
        std::fs::write(d.join("hosts.toml"), toml).unwrap();
    }

    /// A Pod on this node (hostNetwork: the node has only a loopback CNI
    /// network) running `image`, pulling with `pull_secrets`.
    pub fn pod(&self, name: &str, image: &str, pull_secrets: &[&str]) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": self.pod_spec(image, pull_secrets),
        })
    }

    pub fn pod_spec(&self, image: &str, pull_secrets: &[&str]) -> Value {
        json!({
            "nodeName": self.name,
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 1,
            "imagePullSecrets": pull_secrets.iter().map(|s| json!({"name": s})).collect::<Vec<_>>(),
            "containers": [{"name": "app", "image": image, "imagePullPolicy": "Always"}],
        })
    }
}

/// Where a Pod got to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodOutcome {
    Running,
    /// Waiting with this reason (ErrImagePull, ImagePullBackOff).
    PullFailed(String),
}

/// Running, or waiting on a failed pull, or still pending (None).
pub fn pod_outcome(pod: &Pod) -> Option<PodOutcome> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Running") {
        return Some(PodOutcome::Running);
    }
    status.container_statuses.iter().flatten().find_map(|c| {
        let reason = c.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
        matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff").then_some(PodOutcome::PullFailed(reason))
    })
}

/// Create a Pod and wait until it runs or fails to pull; how long that took.
pub async fn start_pod(client: &Client, ns: &str, pod: Value, timeout: Duration) -> (PodOutcome, Duration, Pod) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let name = pod.metadata.name.clone().unwrap();
    let began = Instant::now();
    api.create(&PostParams::default(), &pod).await.unwrap();
    let (outcome, pod) = wait_for(timeout, &format!("Pod {name} to run or fail to pull"), || async {
        let p = api.get(&name).await.ok()?;
        pod_outcome(&p).map(|o| (o, p))
    })
    .await;
    (outcome, began.elapsed(), pod)
}

/// The messages of the Events about the object with this UID.
pub async fn event_messages(client: &Client, ns: &str, uid: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
    api.list(&lp).await.map(|l| l.items.into_iter().filter_map(|e| e.message).collect()).unwrap_or_default()
}

/// The kubelet's and containerd's resident memory, in KiB.
pub fn rss_kib(node: &Node) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (what, pattern) in [("kubelet", format!("kubelet --config {}", node.dir.display())), ("containerd", format!("containerd --config {}", node.dir.display()))] {
        let pids = Command::new("pgrep").arg("-f").arg(&pattern).output().unwrap();
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()) {
                out.push((what.to_string(), kib));
            }
        }
    }
    out
}
