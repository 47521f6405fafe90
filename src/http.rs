//! The metrics and health endpoints: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive), `/readyz` (connected to the API server).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Readiness and liveness shared with the endpoints.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    progress: std::sync::OnceLock<Arc<crate::context::Progress>>,
}

impl Health {
    /// Let `/healthz` fail while the controller is stalled.
    pub fn watch(&self, progress: Arc<crate::context::Progress>) {
        let _ = self.progress.set(progress);
    }
    pub fn is_stalled(&self) -> bool {
        self.progress.get().is_some_and(|p| p.stalled())
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.encode(),
    )
}

/// Alive unless the controller has work in flight and has finished nothing
/// for longer than any reconcile may take (every reconcile has a deadline,
/// so that means it is stuck and a restart helps).
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_stalled() {
        (StatusCode::SERVICE_UNAVAILABLE, "stalled: reconciles in flight and none finished")
    } else {
        (StatusCode::OK, "ok")
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Bind and serve in the background; returns the bound address (useful with port 0).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(bound)
}
