//! Prometheus metrics. Labels are object names and bounded reasons, never
//! secret material.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevocationLabels {
    pub namespace: String,
    pub name: String,
    /// `revoked` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodRestartLabels {
    pub namespace: String,
    pub name: String,
    /// One of [`POD_RESTART_RESULTS`].
    pub result: String,
}

/// `evicted`, `blocked` (by a PodDisruptionBudget), `notified` (a bare Pod
/// got an Event) or `failed`.
pub const POD_RESTART_RESULTS: [&str; 5] = ["evicted", "blocked", "notified", "failed", "braked"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkLabels {
    /// One of `renewal`, `repair`, `first_mint`, `retry` (the kinds of work of the slots queue).
    pub work: String,
}

fn wait_histogram() -> Histogram {
    Histogram::new([0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0])
}

pub struct Metrics {
    registry: Registry,
    /// Credentials that have series, so the series of credentials that are
    /// gone can be found and removed.
    seen: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    pub expiry: Family<CredentialLabels, Gauge>,
    pub renewal: Family<CredentialLabels, Gauge>,
    pub ready: Family<CredentialLabels, Gauge>,
    pub rotations: Family<CredentialLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub mints: Family<SourceLabels, Counter>,
    pub revocations: Family<RevocationLabels, Counter>,
    pub pod_restarts: Family<PodRestartLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub leader: Gauge,
    /// Attempts asking their source now, by source kind.
    pub attempts_in_flight: Family<SourceLabels, Gauge>,
    /// Attempts waiting for a slot, by source kind.
    pub attempts_waiting: Family<SourceLabels, Gauge>,
    /// How long attempts waited for a slot, by kind of work.
    pub queue_wait: Family<WorkLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("regcred");
        let m = Self {
            expiry: Family::default(),
            renewal: Family::default(),
            ready: Family::default(),
            rotations: Family::default(),
            failures: Family::default(),
            mints: Family::default(),
            revocations: Family::default(),
            pod_restarts: Family::default(),
            reconcile_duration: Histogram::new([0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            leader: Gauge::default(),
            attempts_in_flight: Family::default(),
            attempts_waiting: Family::default(),
            queue_wait: Family::new_with_constructor(wait_histogram),
            registry: Registry::default(),
            seen: Default::default(),
        };
        registry.register(
            "credential_expiry_timestamp_seconds",
            "When the credential in the Secret expires (Unix seconds)",
            m.expiry.clone(),
        );
        registry.register(
            "credential_renewal_timestamp_seconds",
            "When regcred will mint the next credential (Unix seconds)",
            m.renewal.clone(),
        );
        registry.register("credential_ready", "1 when the credential is Ready", m.ready.clone());
        registry.register("rotations", "Secrets written with a new credential", m.rotations.clone());
        registry.register("mint_failures", "Failed attempts to mint, by reason", m.failures.clone());
        registry.register("mints", "Credentials minted, by source kind", m.mints.clone());
        registry.register("revocations", "Revocations of replaced tokens (RFC 7009) and registry keys (rotate), by result", m.revocations.clone());
        registry.register(
            "pod_restarts",
            "Pods stuck pulling that regcred restarted after writing a new credential (restartStuckPods), by result",
            m.pod_restarts.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            m.reconcile_duration.clone(),
        );
        registry.register("leader", "1 while this replica reconciles: it holds the leader lease, or runs without --leader-elect", m.leader.clone());
        registry.register("attempts_in_flight", "Attempts asking their source now, by source kind", m.attempts_in_flight.clone());
        registry.register("attempts_waiting", "Attempts waiting for a slot (see --origin-concurrency), by source kind", m.attempts_waiting.clone());
        registry.register(
            "queue_wait_seconds",
            "How long attempts waited for a slot, by kind of work (renewal, repair, first_mint, retry)",
            m.queue_wait.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// Note that a credential has (or is about to have) series.
    pub fn seen(&self, l: &CredentialLabels) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert((l.namespace.clone(), l.name.clone()));
    }

    /// Drop every per-credential series of a deleted credential, failures
    /// of every reason included.
    pub fn forget(&self, namespace: &str, name: &str) {
        let l = CredentialLabels { namespace: namespace.into(), name: name.into() };
        self.expiry.remove(&l);
        self.renewal.remove(&l);
        self.ready.remove(&l);
        self.rotations.remove(&l);
        for result in ["revoked", "failed"] {
            self.revocations.remove(&RevocationLabels { namespace: namespace.into(), name: name.into(), result: result.into() });
        }
        for result in POD_RESTART_RESULTS {
            self.pod_restarts.remove(&PodRestartLabels { namespace: namespace.into(), name: name.into(), result: result.into() });
        }
        for reason in crate::status::reason::FAILURES {
            self.failures.remove(&FailureLabels { namespace: namespace.into(), name: name.into(), reason: reason.to_string() });
        }
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&(namespace.to_string(), name.to_string()));
    }

    /// Forget every credential of one kind not in `live` (after a relist,
    /// deletions missed while the watch was down show up only as absences).
    /// Cluster-scoped credentials have an empty namespace label; each
    /// controller forgets only its own kind.
    pub fn retain_only(&self, live: &[(String, String)], cluster_scoped: bool) {
        let live: std::collections::HashSet<&(String, String)> = live.iter().collect();
        let gone: Vec<(String, String)> = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|k| k.0.is_empty() == cluster_scoped && !live.contains(k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.forget(&ns, &name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_and_forgets() {
        let m = Metrics::default();
        let l = CredentialLabels { namespace: "ns".into(), name: "c".into() };
        m.expiry.get_or_create(&l).set(1_800_000_000);
        m.failures.get_or_create(&FailureLabels { namespace: "ns".into(), name: "c".into(), reason: "MintFailed".into() }).inc();
        let text = m.encode();
        assert!(text.contains(r#"regcred_credential_expiry_timestamp_seconds{namespace="ns",name="c"} 1800000000"#), "{text}");
        assert!(text.contains(r#"regcred_mint_failures_total{namespace="ns",name="c",reason="MintFailed"} 1"#), "{text}");
        m.forget("ns", "c");
        let text = m.encode();
        assert!(!text.contains("regcred_credential_expiry_timestamp_seconds{"), "{text}");
        assert!(!text.contains("regcred_mint_failures_total{"), "failure series outlived the credential: {text}");
    }

    #[test]
    fn a_relist_forgets_what_is_gone() {
        let m = Metrics::default();
        for name in ["kept", "gone"] {
            let l = CredentialLabels { namespace: "ns".into(), name: name.into() };
            m.seen(&l);
            m.ready.get_or_create(&l).set(1);
            m.failures.get_or_create(&FailureLabels { namespace: "ns".into(), name: name.into(), reason: "SecretRejected".into() }).inc();
        }
        let cluster = CredentialLabels { namespace: String::new(), name: "fleet".into() };
        m.seen(&cluster);
        m.ready.get_or_create(&cluster).set(1);
        m.retain_only(&[("ns".to_string(), "kept".to_string())], false);
        let text = m.encode();
        assert!(text.contains(r#"name="kept""#) && !text.contains(r#"name="gone""#), "{text}");
        assert!(text.contains(r#"name="fleet""#), "a namespaced relist forgot a cluster credential: {text}");
        m.retain_only(&[], true);
        assert!(!m.encode().contains(r#"name="fleet""#));
    }
}
