//! The operator's controllers, wired together: the namespaced kind always,
//! the cluster-scoped kind when the operator watches every namespace. They
//! share one [`Context`].

use std::sync::Arc;

use kube::Client;

use crate::context::{Context, Progress, Settings};
use crate::credential;
use crate::index::ReferenceIndex;
use crate::metrics::Metrics;

/// Run the controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(Context::new(client.clone(), &settings, metrics, progress));
    let shutdown = futures::FutureExt::shared(shutdown);
    // On shutdown, attempts still waiting for a slot are sent away (they
    // ask nothing and write nothing), so the controllers stop promptly.
    let slots = ctx.slots.clone();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.await;
        slots.close();
    });
    let index = Arc::new(ReferenceIndex::default());
    // ClusterRegistryCredentials need cluster-wide access: only when the
    // operator watches every namespace.
    if settings.namespace.is_some() {
        return credential::run(ctx, index, None, shutdown).await;
    }
    // One watch of the Secrets sources read serves both kinds: changes to
    // those a cluster credential reads reach the fleet through `triggers`.
    let (triggers, triggered) = futures::channel::mpsc::unbounded();
    // Unbounded like the namespaced kind's: attempts wait in the slots'
    // queue, so one cluster credential waiting on a hanging origin does not
    // hold another's renewal in the controller's queue.
    let fleet = crate::fleet::Fleet { home_namespace: settings.operator_namespace.clone(), selector: settings.selector.clone(), concurrency: 0 };
    let fleet = crate::fleet::run(fleet, client, ctx.clone(), index.clone(), triggered, shutdown.clone());
    futures::join!(credential::run(ctx, index, Some(triggers), shutdown), fleet);
}
