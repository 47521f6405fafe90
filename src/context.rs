//! What every reconcile shares: the operator's settings, the API client and
//! Event recorder, metrics, the caches of our own writes, and what keeps one
//! tenant from hurting the others (the fair slots every attempt waits for,
//! a gate on reads, a deadline and a panic backstop per reconcile pass,
//! progress for `/healthz`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use crate::events::{Event, Recorder, Type as EventType};
use kube::Client;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::metrics::Metrics;
use crate::schedule;
use crate::secret::WriteError;
use crate::source::{self, EcrMinter, NetPolicy};

/// Operator settings the reconcile needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Reconcile only credentials matching this label selector.
    pub selector: Option<String>,
    /// Attempts (asking a source) at once, in all.
    pub concurrency: u16,
    /// Attempts of one namespace at once.
    pub namespace_concurrency: u16,
    /// Attempts to one endpoint origin at once (half of `concurrency`
    /// when `None`).
    pub origin_concurrency: Option<u16>,
    /// This replica's name, for Events.
    pub instance: String,
    pub ecr: source::EcrSettings,
    pub net: NetPolicy,
    /// The least time between two mints of one credential.
    pub min_mint_interval: chrono::Duration,
    /// The longest a mint (every request of it) may take.
    pub mint_timeout: Duration,
    /// The operator's own namespace: home of ClusterRegistryCredentials'
    /// Secrets and the default namespace of what their sources read.
    pub operator_namespace: String,
    /// Credentials may ask for Pods stuck pulling to be restarted.
    pub restart_stuck_pods: bool,
    /// The least time between two restarts of one top-level owner's Pods.
    pub restart_stuck_pods_interval: chrono::Duration,
}

impl Settings {
    /// The limits of the attempts' slots.
    pub fn limits(&self) -> crate::slots::Limits {
        let total = usize::from(self.concurrency.max(1));
        crate::slots::Limits {
            total,
            namespace: usize::from(self.namespace_concurrency.max(1)),
            origin: self.origin_concurrency.map(usize::from).unwrap_or(total.div_ceil(2)).max(1),
        }
    }

    /// The longest one reconcile may take: the mint plus room for the API calls.
    pub fn reconcile_timeout(&self) -> Duration {
        self.mint_timeout + Duration::from_secs(30)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: None,
            selector: None,
            concurrency: 32,
            namespace_concurrency: 8,
            origin_concurrency: None,
            instance: "regcred".into(),
            ecr: Default::default(),
            net: Default::default(),
            min_mint_interval: schedule::DEFAULT_MIN_MINT_INTERVAL,
            mint_timeout: Duration::from_secs(60),
            restart_stuck_pods: false,
            restart_stuck_pods_interval: chrono::Duration::minutes(10),
            operator_namespace: "default".into(),
        }
    }
}

/// Reconciles in flight and the last time one finished: a controller with
/// work in flight and nothing finished for longer than any reconcile may
/// take is stalled, and `/healthz` says so.
pub struct Progress {
    started: Instant,
    in_flight: AtomicUsize,
    last_done_ms: AtomicU64,
    pub stall_after: Duration,
}

impl Progress {
    pub fn new(stall_after: Duration) -> Self {
        Self { started: Instant::now(), in_flight: AtomicUsize::new(0), last_done_ms: AtomicU64::new(0), stall_after }
    }

    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            // Idle until now: the stall clock starts with this reconcile.
            self.mark_done();
        }
        InFlight(self.clone())
    }

    fn mark_done(&self) {
        self.last_done_ms.store(self.started.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    /// Stalled as of `at` (an instant after this was created).
    pub fn stalled_at(&self, at: Instant) -> bool {
        let now_ms = at.saturating_duration_since(self.started).as_millis() as u64;
        let idle = now_ms.saturating_sub(self.last_done_ms.load(Ordering::SeqCst));
        self.in_flight.load(Ordering::SeqCst) > 0 && idle > self.stall_after.as_millis() as u64
    }

    pub fn stalled(&self) -> bool {
        self.stalled_at(Instant::now())
    }
}

pub(crate) struct InFlight(Arc<Progress>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.mark_done();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    pub ecr: EcrMinter,
    pub now: fn() -> DateTime<Utc>,
    pub settings: Settings,
    pub progress: Arc<Progress>,
    /// The fair queue every attempt waits in for a slot.
    pub slots: Arc<crate::slots::Slots>,
    /// Reconciles reading the API server before they decide, at once: the
    /// controllers run every reconcile that is due (attempts wait in
    /// `slots`, not in the controller's queue), so a relist of thousands of
    /// credentials must not read them all at the same moment.
    pub(crate) reads: Arc<Semaphore>,
    /// When each credential last asked its source, whatever came of it.
    pub attempts: crate::memo::Attempts,
    /// Our own writes, to serve reads from the watch caches safely.
    pub memo: crate::memo::Memo,
    /// Versions of our Secrets, from their watch.
    pub owned_versions: crate::memo::Versions,
    /// Versions of the Secrets sources read, from their watch.
    pub source_versions: crate::memo::Versions,
    /// When each workload's stuck Pods were last restarted (the brake).
    pub restarts: crate::memo::Restarts,
    /// Credentials whose keys at a registry were swept by this process.
    pub swept: crate::memo::Swept,
}

impl Context {
    pub fn new(client: Client, settings: &Settings, metrics: Arc<Metrics>, progress: Arc<Progress>) -> Self {
        Self {
            recorder: Arc::new(Recorder::new(client.clone(), "regcred", &settings.instance)),
            ecr: EcrMinter::new(client.clone(), settings.ecr.clone()),
            client,
            slots: Arc::new(crate::slots::Slots::new(settings.limits(), metrics.clone())),
            reads: Arc::new(Semaphore::new(usize::from(settings.concurrency.max(1)))),
            metrics,
            now: clock,
            settings: settings.clone(),
            progress,
            memo: Default::default(),
            attempts: Default::default(),
            owned_versions: Default::default(),
            source_versions: Default::default(),
            restarts: Default::default(),
            swept: Default::default(),
        }
    }
}

impl Context {
    /// A turn to read the API server before deciding (see `reads`).
    pub(crate) async fn reading(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.reads.clone().acquire_owned().await.ok()
    }
}

/// The wall clock in whole seconds: credentials are treated as issued at the
/// start of the second they were requested in, so their expiry is never
/// computed later than it really is, and timestamps stay readable.
pub fn clock() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// Failures that are not the source's fault: the API server. They are
/// retried by the controller's error policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Summarised (status code and reason): a whole kube error can carry a
    // response body, and some of these responses are Secrets.
    #[error("{step}: {}", crate::source::summarize_kube_error(source))]
    Kube { step: &'static str, source: kube::Error },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("the reconcile did not finish within {0:?}")]
    Deadline(Duration),
}

pub(crate) fn kube_err(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { step, source }
}


/// Run a future, turning a panic inside it into an `Err` with its message,
/// so one credential's bug cannot end the process (kube-runtime re-raises
/// panics from a reconcile).
pub async fn contain_panic<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    std::panic::AssertUnwindSafe(f).catch_unwind().await.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// How long recording why a reconcile stopped may take: the API server it
/// needs may be what held the reconcile up.
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(30);

/// Run the recording of a stopped reconcile under [`RECORD_TIMEOUT`].
pub async fn bounded<T>(f: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::time::timeout(RECORD_TIMEOUT, f).await.unwrap_or(Err(Error::Deadline(RECORD_TIMEOUT)))
}

/// How a guarded reconcile ended.
pub enum Guarded<T> {
    Done(T),
    /// The deadline fired first; the work was dropped.
    Deadline(Duration),
    /// It panicked, with this message (ours, never secret material).
    Panicked(String),
}

/// Run one reconcile's work under its deadline and the panic backstop, in
/// a span with a trace id, counted for `/healthz` and the duration metric.
/// The work comes boxed, so a reconcile holds a pointer to it, not a copy
/// of every state it could be in.
pub async fn guard<T>(ctx: &Context, namespace: &str, name: &str, deadline: Duration, work: std::pin::Pin<Box<impl std::future::Future<Output = T>>>) -> Guarded<T> {
    let _in_flight = ctx.progress.begin();
    let started = Instant::now();
    let span = reconcile_span(namespace, name);
    let timed = tracing::Instrument::instrument(tokio::time::timeout(deadline, work), span);
    let out = match contain_panic(timed).await {
        Ok(Ok(r)) => Guarded::Done(r),
        Ok(Err(_)) => Guarded::Deadline(deadline),
        Err(panic) => Guarded::Panicked(panic),
    };
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    out
}

/// A span per reconcile with the credential and a trace id, so one rotation
/// can be followed through the logs (JSON logs carry the span's fields).
pub fn reconcile_span(namespace: &str, name: &str) -> tracing::Span {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let a = schedule::seed(&format!("{namespace}/{name}/{nanos}/{n}"));
    let b = schedule::seed(&format!("{n}/{nanos}/{name}/{namespace}"));
    tracing::info_span!("reconcile", namespace = %namespace, name = %name, trace_id = %format!("{a:016x}{b:016x}"))
}

/// Publish an Event about any object (notes are capped at 1000 characters).
pub async fn publish_to(
    ctx: &Context,
    about: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: Option<String>,
) {
    let ev = Event { type_, reason, action: "Reconcile", note: note.unwrap_or_default() };
    if let Err(e) = ctx.recorder.publish(ev, about).await {
        warn!(error = %crate::source::summarize_kube_error(&e), "publishing an Event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_contained() {
        let r = contain_panic(async { panic!("boom in one reconcile") }).await;
        assert_eq!(r.unwrap_err(), "boom in one reconcile");
        let r: Result<u32, String> = contain_panic(async { 7 }).await;
        assert_eq!(r.unwrap(), 7);
        // chrono's overflow panic (what a hostile lifetime used to cause)
        let r = contain_panic(async { chrono::DateTime::<Utc>::MAX_UTC + chrono::Duration::seconds(1) }).await;
        assert!(r.is_err());
    }

    #[test]
    fn stall_is_work_in_flight_with_no_progress() {
        let p = Arc::new(Progress::new(Duration::from_secs(90)));
        let t0 = Instant::now();
        assert!(!p.stalled_at(t0 + Duration::from_secs(3600)), "idle is not stalled");
        let g = p.begin();
        assert!(!p.stalled_at(Instant::now() + Duration::from_secs(60)));
        assert!(p.stalled_at(Instant::now() + Duration::from_secs(120)));
        drop(g);
        assert!(!p.stalled_at(Instant::now() + Duration::from_secs(120)));
    }
}
