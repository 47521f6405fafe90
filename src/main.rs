use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use kube_lease_manager::LeaseManagerBuilder;
use regcred::cli::{Cli, Command, RunArgs};
use regcred::context::{Progress, Settings};
use regcred::controller;
use regcred::http::Health;
use regcred::metrics::Metrics;
use regcred::egress::EgressPolicy;
use regcred::source::{EcrSettings, NetPolicy};
use tokio::sync::watch;
use tracing::{error, info};

fn main() -> anyhow::Result<()> {
    regcred::install_crypto_provider();
    match Cli::parse().command {
        Command::Crd { cluster: false } => print!("{}", regcred::crdgen::crd_yaml()),
        Command::Crd { cluster: true } => print!("{}", regcred::crdgen::cluster_crd_yaml()),
        Command::Run(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))?;
        }
        Command::Renew(args) => day2(regcred::day2::renew(args)),
        Command::Status(args) => day2(regcred::day2::status(args)),
        Command::Check(args) => day2(regcred::day2::check(args)),
        Command::Mint(args) => day2(regcred::day2::mint(args)),
    }
    Ok(())
}

/// Run a day-2 command: one line on stderr and its exit code when it fails.
fn day2(f: impl std::future::Future<Output = Result<(), regcred::day2::CliError>>) {
    if let Err(e) = regcred::source::httpclient::trust_ssl_cert_file() {
        eprintln!("regcred: {e}");
        std::process::exit(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("regcred: {e}");
            std::process::exit(3);
        }
    };
    if let Err(e) = rt.block_on(f) {
        eprintln!("regcred: {e}");
        std::process::exit(e.exit_code());
    }
}

/// Resolves once SIGTERM (Kubernetes) or Ctrl-C arrives; registered at once so
/// a signal during start-up or standby is not lost.
fn shutdown_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("shutdown requested");
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// How long in-flight reconciles get after a shutdown request. The
/// controller also waits for its first list of credentials, which never
/// completes while, say, the CRD is missing; this bounds that wait.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// Run the controller until `stop` resolves, and at most `SHUTDOWN_GRACE`
/// after a shutdown request.
async fn run_controller(
    client: kube::Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    shutdown: watch::Receiver<bool>,
) {
    let deadline = async move {
        wait_true(shutdown).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = controller::run(client, settings, metrics, progress, stop) => {}
        _ = deadline => error!("in-flight work did not finish within {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    regcred::telemetry::init(args.log_format, &args.log_level);
    match regcred::source::httpclient::trust_ssl_cert_file().context("SSL_CERT_FILE")? {
        0 => {}
        n => info!(certificates = n, "trusting the CA certificates of SSL_CERT_FILE besides the public roots"),
    }
    let shutdown = shutdown_signal()?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let bound = regcred::http::serve(args.metrics_bind_address, metrics.clone(), health.clone())
        .await
        .with_context(|| format!("binding {}", args.metrics_bind_address))?;
    info!(version = env!("CARGO_PKG_VERSION"), address = %bound, "regcred starting; serving /metrics, /healthz, /readyz");

    let client = regcred::proxy::kube_client().await.context("loading the Kubernetes client configuration")?;
    let version = client.apiserver_version().await.context("reaching the API server")?;
    info!(server = %version.git_version, "connected to the API server");
    health.set_ready(true);

    let settings = settings(&args)?;
    // Stalled: work in flight and nothing finished for longer than any
    // reconcile may take.
    let progress = Arc::new(Progress::new(settings.reconcile_timeout() + std::time::Duration::from_secs(30)));
    health.watch(progress.clone());

    let selector = args.selector.as_deref().map(|s| format!(" labelled {s}")).unwrap_or_default();
    match &args.watch_namespace {
        Some(ns) => info!(
            "watching RegistryCredentials{selector} in namespace {ns} only (--watch-namespace); credentials elsewhere, and ClusterRegistryCredentials, are left alone"
        ),
        None => info!("watching RegistryCredentials{selector} in every namespace, and ClusterRegistryCredentials{selector}"),
    }
    if !args.leader_elect {
        // No election: this replica is the one reconciling.
        metrics.leader.set(1);
        run_controller(client, settings, metrics, progress, wait_true(shutdown.clone()), shutdown).await;
        info!("regcred stopped");
        return Ok(());
    }
    lead(&args, client, settings, metrics, progress, shutdown).await
}

/// What the reconciles need from the command line.
fn settings(args: &RunArgs) -> anyhow::Result<Settings> {
    let egress = EgressPolicy::new(args.egress_deny_cidrs.clone(), args.egress_allow_hosts.clone())
        .map_err(|e| anyhow::anyhow!("--egress-deny-cidrs: {e}"))?;
    Ok(Settings {
        namespace: args.watch_namespace.clone(),
        selector: args.selector.clone(),
        concurrency: args.concurrency,
        namespace_concurrency: args.namespace_concurrency,
        origin_concurrency: args.origin_concurrency,
        instance: args.instance.clone(),
        ecr: EcrSettings {
            identity_namespaces: args.ecr_identity_namespaces.clone(),
            identity_namespace_selector: args.ecr_identity_namespace_selector.clone(),
            max_attempts: args.aws_max_attempts,
            web_identity_audiences: args.web_identity_audiences.clone(),
            endpoint_overrides: args.aws_endpoint_overrides.clone(),
            role_arns: args.ecr_role_arns.clone(),
            ..Default::default()
        },
        net: NetPolicy::new(egress, args.max_response_bytes as usize),
        min_mint_interval: chrono::Duration::seconds(i64::from(args.min_mint_interval_seconds)),
        mint_timeout: std::time::Duration::from_secs(u64::from(args.mint_timeout_seconds)),
        operator_namespace: args.leader_election_namespace.clone(),
        restart_stuck_pods: args.restart_stuck_pods,
        restart_stuck_pods_interval: chrono::Duration::seconds(i64::from(args.restart_stuck_pods_interval_seconds)),
    })
}

/// Stand by until this replica holds the leader lease, then run the
/// controller until SIGTERM or the lease is lost; release the lease on the
/// way out so a standby takes over at once.
async fn lead(
    args: &RunArgs,
    client: kube::Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let lease = LeaseManagerBuilder::new(client.clone(), &args.leader_election_lease_name)
        .with_namespace(&args.leader_election_namespace)
        .with_identity(&args.instance)
        .with_duration(args.leader_election_lease_seconds)
        .with_grace((args.leader_election_lease_seconds / 3).max(1))
        .with_field_manager(regcred::api::FIELD_MANAGER)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leading, lease_task) = lease.watch().await;
    info!(lease = %args.leader_election_lease_name, namespace = %args.leader_election_namespace, identity = %args.instance, "waiting to become the leader");
    let mut stop = shutdown.clone();
    let became_leader = tokio::select! {
        r = leading.wait_for(|v| *v) => { r.context("leader election stopped")?; true }
        _ = stop.wait_for(|v| *v) => false,
    };
    if !became_leader {
        drop(leading);
        let _ = lease_task.await;
        info!("regcred stopped while standing by");
        return Ok(());
    }
    info!("became the leader; reconciling");
    metrics.leader.set(1);

    // Stop on SIGTERM, or when the lease is lost (another replica takes over).
    let (lost_tx, lost_rx) = watch::channel(false);
    let mut watch_leading = leading.clone();
    let lost_watch = tokio::spawn(async move {
        if watch_leading.wait_for(|v| !*v).await.is_ok() {
            let _ = lost_tx.send(true);
        }
    });
    let lost = lost_rx.clone();
    let term = shutdown.clone();
    let stop = async move {
        tokio::select! {
            _ = wait_true(term) => {}
            _ = wait_true(lost) => {}
        }
    };
    run_controller(client, settings, metrics.clone(), progress, stop, shutdown).await;
    // Every receiver must be gone for the lease manager to release the lease.
    lost_watch.abort();
    let _ = lost_watch.await;
    metrics.leader.set(0);
    if *lost_rx.borrow() {
        error!("lost the leader lease; exiting so a fresh process can stand by");
        anyhow::bail!("lost the leader lease");
    }
    // Releasing the lease lets a standby take over at once.
    drop(leading);
    match lease_task.await {
        Ok(Ok(_)) => info!("released the leader lease"),
        Ok(Err(e)) => error!(error = %e, "releasing the leader lease failed"),
        Err(e) => error!(error = %e, "the leader election task failed"),
    }
    info!("regcred stopped");
    Ok(())
}
