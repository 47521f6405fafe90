//! The ClusterRegistryCredential controller's wiring: the credentials'
//! watch (recorded in the reference index), the caches of namespaces, our
//! Secrets and ServiceAccounts, and what each change triggers.


use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};

use crate::api::{self, ClusterRegistryCredential};
use crate::context::Context;
use crate::index::ReferenceIndex;

use super::{error_policy, reconcile, refs_namespace, FleetContext, KIND};

/// A cache of `api`'s objects (without their managed fields) and the stream
/// of changes that fills it.
fn cached<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// Where the cluster credentials' source Secrets are recorded.
struct Refs {
    index: Arc<ReferenceIndex>,
    home_namespace: String,
}

impl Refs {
    fn set(&self, c: &ClusterRegistryCredential) {
        let ns = refs_namespace(c, &self.home_namespace);
        self.index.set((String::new(), c.name_any()), &ns, crate::source::referenced_secrets(&c.spec.source));
    }
}

/// The cluster credentials, reflected into `writer` and recorded in the
/// reference index, their metric series and attempt memory dropped with them.
fn credential_stream(
    base: &Arc<Context>,
    ccrs: Api<ClusterRegistryCredential>,
    selector: Option<&str>,
    writer: reflector::store::Writer<ClusterRegistryCredential>,
    live: Store<ClusterRegistryCredential>,
    refs: Refs,
) -> impl futures::Stream<Item = Result<ClusterRegistryCredential, watcher::Error>> + Send + 'static {
    let mut config = watcher::Config::default();
    if let Some(sel) = selector {
        config = config.labels(sel);
    }
    let base = base.clone();
    watcher(ccrs, config)
        .default_backoff()
        .modify(|c| {
            c.managed_fields_mut().clear();
        })
        .reflect(writer)
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => refs.set(c),
            Ok(watcher::Event::Init) => refs.index.clear_kind(true),
            Ok(watcher::Event::Delete(c)) => {
                refs.index.remove(&(String::new(), c.name_any()));
                base.metrics.forget("", &c.name_any());
                base.attempts.forget("", &c.name_any());
            }
            Ok(watcher::Event::InitDone) => {
                let names: Vec<(String, String)> = live.state().iter().map(|c| (String::new(), c.name_any())).collect();
                base.metrics.retain_only(&names, true);
            }
            _ => {}
        })
        .touched_objects()
}

/// How the ClusterRegistryCredential controller runs.
pub struct Fleet {
    /// Where home Secrets live and, by default, what sources read.
    pub home_namespace: String,
    pub selector: Option<String>,
    /// Reconciles at once; 0: unbounded (what bounds the work is the
    /// attempts' slots and the reads gate, see `crate::slots`).
    pub concurrency: u16,
}

/// Run the ClusterRegistryCredential controller until `shutdown` resolves.
/// The credentials' source Secrets are kept in `index`; the names of those
/// whose source Secret changed come in on `triggered`.
pub async fn run(
    fleet: Fleet,
    client: Client,
    base: Arc<Context>,
    index: Arc<ReferenceIndex>,
    triggered: impl futures::Stream<Item = String> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Fleet { home_namespace, selector, concurrency } = fleet;
    let (ccr_reader, ccr_writer) = reflector::store();
    let refs = Refs { index, home_namespace: home_namespace.clone() };
    let ccr_stream = credential_stream(&base, Api::all(client.clone()), selector.as_deref(), ccr_writer, ccr_reader.clone(), refs);
    let (namespaces, ns_stream) = cached(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default());
    let (owned, owned_stream) = cached(Api::<PartialObjectMeta<Secret>>::all(client.clone()), watcher::Config::default().labels(api::CLUSTER_CREDENTIAL_LABEL));
    let (accounts, sa_stream) = cached(Api::<ServiceAccount>::all(client.clone()), watcher::Config::default());

    let ctx = Arc::new(FleetContext { base, namespaces, owned, accounts, home_namespace, written: Default::default() });
    let (all, with_accounts) = (ccr_reader.clone(), ccr_reader.clone());
    let every = move |store: &Store<ClusterRegistryCredential>, only_accounts: bool| -> Vec<ObjectRef<ClusterRegistryCredential>> {
        store
            .state()
            .iter()
            .filter(|c| !only_accounts || c.spec.service_accounts.is_some())
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect()
    };
    let results = Controller::for_stream(ccr_stream, ccr_reader)
        .watches_stream(ns_stream, move |_| every(&all, false))
        .watches_stream(owned_stream, |s| {
            s.metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|o| o.kind == KIND)
                .map(|o| ObjectRef::new(&o.name))
                .collect::<Vec<_>>()
        })
        .watches_stream(sa_stream, move |_| every(&with_accounts, true))
        .reconcile_on(triggered.map(|name| ObjectRef::new(&name)))
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx);
    crate::telemetry::drain(results, "fleet reconcile error").await;
}

