//! regcred: a Kubernetes operator that keeps container-registry pull Secrets fresh.
//!
//! The module map and the reasons behind it are in the project's DESIGN notes;
//! in short: `api` (types), `source` (minting), `schedule` (pure time math),
//! `secret` (rendering and applying the pull Secret), `status`, `controller`.

pub mod api;
pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod day2;
pub mod fleet;
pub mod egress;
pub mod http;
pub mod memo;
pub mod metrics;
pub mod remediate;
pub mod schedule;
pub mod secret;
pub mod serviceaccounts;
pub mod source;
pub mod status;
pub mod telemetry;

/// Make ring the process-wide rustls provider. Both ring (kube, our HTTP
/// client) and aws-lc-rs (the AWS SDK) are linked, so rustls cannot pick one
/// by itself. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
