//! Command-line interface. Every flag can also be set from the environment.

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// regcred keeps container-registry pull Secrets fresh.
#[derive(Parser, Debug)]
#[command(name = "regcred", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum Command {
    /// Run the operator.
    Run(RunArgs),
    /// Print the RegistryCredential CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch RegistryCredentials in this namespace only (default: all namespaces).
    #[arg(long, env = "REGCRED_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// How many credentials are reconciled at once; a slow endpoint holds up
    /// only its own credentials.
    #[arg(long, env = "REGCRED_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,

    /// Log format.
    #[arg(long, env = "REGCRED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level or filter (`info`, `debug`, `regcred=debug,kube=info`);
    /// RUST_LOG wins when set.
    #[arg(long, env = "REGCRED_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Name of this replica, for Events and the leader lease (in a Pod: its name).
    #[arg(long, env = "POD_NAME", default_value = "regcred")]
    pub instance: String,

    /// Namespaces whose credentials may mint ECR tokens with the operator's
    /// own AWS identity (comma-separated; `*` for all). Default: none, since
    /// any namespace could otherwise borrow the operator's IAM role.
    #[arg(long, env = "REGCRED_ECR_IDENTITY_NAMESPACES", value_delimiter = ',')]
    pub ecr_identity_namespaces: Vec<String>,

    /// Label selector (`key=value,key2!=value,key3`) on Namespaces whose
    /// credentials may use the operator's own AWS identity, in addition to
    /// `--ecr-identity-namespaces`.
    #[arg(long, env = "REGCRED_ECR_IDENTITY_NAMESPACE_SELECTOR")]
    pub ecr_identity_namespace_selector: Option<String>,

    /// Attempts per AWS call, the first included (SDK standard retries).
    #[arg(long, env = "REGCRED_AWS_MAX_ATTEMPTS", default_value_t = 3)]
    pub aws_max_attempts: u32,

    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints (port 0
    /// picks a free port, logged at start).
    #[arg(long, env = "REGCRED_METRICS_BIND_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_bind_address: std::net::SocketAddr,

    /// Run only while holding a coordination.k8s.io Lease, so that of several
    /// replicas exactly one reconciles and the others stand by.
    #[arg(long, env = "REGCRED_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,

    /// Namespace of the leader Lease (in a Pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,

    /// Name of the leader Lease.
    #[arg(long, env = "REGCRED_LEADER_ELECTION_LEASE_NAME", default_value = "regcred-leader")]
    pub leader_election_lease_name: String,

    /// How long a Lease stays held without renewal, in seconds; a standby
    /// takes over at most this long after a leader dies without releasing it.
    #[arg(long, env = "REGCRED_LEADER_ELECTION_LEASE_SECONDS", default_value_t = 15)]
    pub leader_election_lease_seconds: u64,
}
