use std::sync::Arc;

use clap::Parser;
use regcred::cli::{Cli, Command, RunArgs};
use regcred::controller::{self, Settings};
use regcred::metrics::Metrics;
use regcred::source::EcrSettings;

fn main() -> anyhow::Result<()> {
    regcred::install_crypto_provider();
    match Cli::parse().command {
        Command::Crd => print!("{}", regcred::crdgen::crd_yaml()),
        Command::Run(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))?;
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    regcred::telemetry::init(args.log_format, &args.log_level);
    let client = kube::Client::try_default().await?;
    let settings = Settings {
        namespace: args.watch_namespace.clone(),
        concurrency: args.concurrency,
        instance: args.instance.clone(),
        ecr: EcrSettings {
            identity_namespaces: args.ecr_identity_namespaces.clone(),
            identity_namespace_selector: args.ecr_identity_namespace_selector.clone(),
            max_attempts: args.aws_max_attempts,
            ..Default::default()
        },
    };
    let metrics = Arc::new(Metrics::default());
    tracing::info!(version = env!("CARGO_PKG_VERSION"), namespace = ?settings.namespace, "regcred starting");
    controller::run(client, settings, metrics, shutdown_signal()).await;
    tracing::info!("regcred stopped");
    Ok(())
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
