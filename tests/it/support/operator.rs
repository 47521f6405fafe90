//! The operator as users run it: the `regcred` binary, as a process, against
//! the test control plane, watching one test namespace. Its logs are kept so
//! tests can check that no secret reaches them.

use std::process::Command;

use super::peers::{Proc, TempDir};
use super::control_plane;

pub struct Operator {
    proc: Proc,
    _dir: TempDir,
    /// Logs of earlier runs of this operator (restarts).
    earlier: String,
    namespace: Option<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Operator {
    /// Start `regcred run --watch-namespace <ns>` with debug logging.
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &[], &[])
    }

    pub fn start_with(namespace: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("operator");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let proc = spawn(Some(namespace), &extra, &env, &dir, 0);
        Self { proc, _dir: dir, earlier: String::new(), namespace: Some(namespace.into()), extra, env }
    }

    /// Start `regcred run` for every namespace. Give it a `--selector` so it
    /// leaves the other tests' credentials to their own operators.
    pub fn start_cluster_wide(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("operator");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        assert!(extra.iter().any(|a| a.starts_with("--selector")), "a cluster-wide test operator needs --selector");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let proc = spawn(None, &extra, &env, &dir, 0);
        Self { proc, _dir: dir, earlier: String::new(), namespace: None, extra, env }
    }

    /// Is the process still running (it has not crashed)?
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Stop with SIGTERM (as Kubernetes does) and start a new process.
    pub fn restart(&mut self) {
        self.proc.stop();
        self.earlier.push_str(&self.proc.output());
        self.proc = spawn(self.namespace.as_deref(), &self.extra, &self.env, &self._dir, self.earlier.len());
    }

    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Kill with SIGKILL (a crash: nothing is finished) and start a new process.
    pub fn crash_and_restart(&mut self) {
        self.proc.kill();
        self.earlier.push_str(&self.proc.output());
        self.proc = spawn(self.namespace.as_deref(), &self.extra, &self.env, &self._dir, self.earlier.len());
    }

    /// Everything every run of this operator logged.
    pub fn logs(&self) -> String {
        format!("{}{}", self.earlier, self.proc.output())
    }

    /// Logs of the current run only.
    pub fn current_logs(&self) -> String {
        self.proc.output()
    }
}

fn spawn(namespace: Option<&str>, extra: &[String], env: &[(String, String)], dir: &TempDir, n: usize) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcred"));
    cmd.arg("run");
    if let Some(ns) = namespace {
        cmd.args(["--watch-namespace", ns]);
    }
    cmd.args(["--log-level", "regcred=debug,info"])
        .args(["--metrics-bind-address", "127.0.0.1:0"])
        .args(extra)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("POD_NAME", "test-operator")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(cmd, dir.join(&format!("operator-{n}.log")))
}

impl Operator {
    /// The address `/metrics` is served on, from the start-up log line.
    pub async fn metrics_address(&self) -> String {
        super::wait_for(std::time::Duration::from_secs(30), "the metrics address in the log", || async {
            let logs = self.current_logs();
            let line = logs.lines().find(|l| l.contains("serving /metrics"))?;
            let addr = line.split("address=").nth(1)?.split_whitespace().next()?;
            Some(addr.trim_matches('"').to_string())
        })
        .await
    }
}
