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
    /// Ask for a new credential now (sets regcred.dev/renew-requested-at;
    /// the operator mints once for it). Exit 1: not found; 3: cluster error.
    Renew(crate::day2::RenewArgs),
    /// List credentials by urgency (soonest expiry first): Ready, reason,
    /// registries, expires in, renews in, failed attempts.
    Status(crate::day2::StatusArgs),
    /// Log in to each registry of a pull Secret (any dockerconfigjson
    /// Secret) and print OK, refused (HTTP status) or not reachable. Exit 1
    /// when any registry fails; 3: cluster error.
    Check(crate::day2::CheckArgs),
    /// Run one mint of a RegistryCredential spec locally, writing nothing to
    /// the cluster; print the result with passwords redacted, the expiry and
    /// the renewal instant. Exit 1 when the mint fails.
    Mint(crate::day2::MintArgs),
    /// Print the RegistryCredential CustomResourceDefinition as YAML.
    Crd {
        /// Print the ClusterRegistryCredential CRD instead.
        #[arg(long)]
        cluster: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch RegistryCredentials in this namespace only (default: all namespaces).
    #[arg(long, env = "REGCRED_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Reconcile only RegistryCredentials matching this label selector
    /// (e.g. `team=a`; for sharding or canaries). Default: all.
    #[arg(long, env = "REGCRED_SELECTOR")]
    pub selector: Option<String>,

    /// How many attempts (asking a source for a credential) run at once.
    /// Due renewals and repairs go first, then new credentials, then retries.
    #[arg(long, env = "REGCRED_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// How many attempts of one namespace run at once, so a namespace whose
    /// endpoints hang cannot take every slot.
    #[arg(long, env = "REGCRED_NAMESPACE_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub namespace_concurrency: u16,

    /// Attempts to one endpoint origin (scheme, host, port; ECR's regional
    /// endpoint) at once, over every namespace; within one namespace an
    /// origin gets at most half of --namespace-concurrency. A token server
    /// that hangs holds only its own slots. Default: half of --concurrency.
    #[arg(long, env = "REGCRED_ORIGIN_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..))]
    pub origin_concurrency: Option<u16>,

    /// The least time between two mints of one credential, in seconds,
    /// whatever lifetime its source answers (a source handing out 1-second
    /// tokens gets a warning condition, not a loop). Retries after a failed
    /// attempt follow the failure backoff instead (from 5 s, doubling, and
    /// fitted into what is left of the current credential's life).
    #[arg(long, env = "REGCRED_MIN_MINT_INTERVAL_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub min_mint_interval_seconds: u32,

    /// The longest one attempt may take, in seconds (every request of it:
    /// token endpoint, AWS calls, then verification at the registries, under
    /// one deadline). Each reconcile is bounded by this plus 30 s; one that
    /// runs out is recorded as a failure and retried with backoff.
    #[arg(long, env = "REGCRED_MINT_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub mint_timeout_seconds: u32,

    /// Allow credentials with `spec.restartStuckPods` to restart Pods of their
    /// namespace stuck in ErrImagePull/ImagePullBackOff after a new credential
    /// is written (controller-owned Pods are evicted, bare Pods get an Event).
    /// Needs `list` on pods and `create` on pods/eviction.
    #[arg(long, env = "REGCRED_RESTART_STUCK_PODS")]
    pub restart_stuck_pods: bool,

    /// The least time between two restarts of one workload's Pods stuck
    /// pulling (a ReplicaSet's Deployment counts as one workload), however
    /// often its credential rotates. Pods whose image does not exist are
    /// never restarted.
    #[arg(long, env = "REGCRED_RESTART_STUCK_PODS_INTERVAL_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub restart_stuck_pods_interval_seconds: u32,

    /// Largest response body read from a token endpoint or registry, in
    /// bytes; larger answers fail the mint.
    #[arg(long, env = "REGCRED_MAX_RESPONSE_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1024..=1048576))]
    pub max_response_bytes: u32,

    /// CIDRs tenant-named endpoints may never reach (token endpoints,
    /// registries for login checks, redirects, ECR/STS overrides), checked on
    /// the resolved address at connect time. Comma-separated; replaces the
    /// default (link-local and cloud metadata addresses).
    #[arg(long, env = "REGCRED_EGRESS_DENY_CIDRS", value_delimiter = ',', default_value = crate::egress::DEFAULT_DENIED)]
    pub egress_deny_cidrs: Vec<String>,

    /// Hosts tenant-named endpoints must be on (`registry.example.com`,
    /// `*.example.com`), comma-separated. Default: any host not denied.
    #[arg(long, env = "REGCRED_EGRESS_ALLOW_HOSTS", value_delimiter = ',')]
    pub egress_allow_hosts: Vec<String>,

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

    /// Audiences a web-identity ServiceAccount token may be requested for
    /// (comma-separated).
    #[arg(long, env = "REGCRED_WEB_IDENTITY_AUDIENCES", value_delimiter = ',', default_value = "sts.amazonaws.com")]
    pub web_identity_audiences: Vec<String>,

    /// ECR/STS endpoint overrides RegistryCredentials may use: origins such
    /// as `https://sts.eu-west-1.amazonaws.com` or a VPC endpoint,
    /// comma-separated, or `*` for any. Default: none (the region's AWS
    /// endpoints only), since an override receives AWS credentials and web
    /// identity tokens.
    #[arg(long, env = "REGCRED_AWS_ENDPOINT_OVERRIDES", value_delimiter = ',')]
    pub aws_endpoint_overrides: Vec<String>,

    /// Role ARN patterns (`*` matches anything) that credentials using the
    /// operator's own AWS identity may assume, comma-separated. Default: any.
    #[arg(long, env = "REGCRED_ECR_ROLE_ARNS", value_delimiter = ',')]
    pub ecr_role_arns: Vec<String>,

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
