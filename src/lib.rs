//! regcred: a Kubernetes operator that keeps container-registry pull Secrets fresh.
//!
//! The module map, in layers; a module uses only modules of the layers
//! below it (and none of its own layer's above it in this list):
//!
//! 1. Foundations: `api` (the CRD types), `schedule` (pure time math and the
//!    decision), `egress`, `proxy` (the proxy variables, for the API server
//!    and, with the egress policy, for tenant-named endpoints), `crdgen`,
//!    `validate` (a manifest checked against the CRD's schema and CEL
//!    rules), `source` (minting from each kind of source), `secret`
//!    (rendering and writing the pull Secret), `status` (status values),
//!    `memo` (what regcred remembers of its own writes and attempts),
//!    `metrics`, `slots` (the fair queue every attempt waits in: limits per
//!    namespace and origin, renewals first), `events` (publishing Events, a
//!    new one when the note changes), `telemetry`.
//! 2. `context`: settings, the shared state of every reconcile, deadlines,
//!    the panic backstop, Events.
//! 3. The parts of a reconcile: `index` (which credentials read which
//!    Secret), `finalizer`, `revoke` (RFC 7009), `serviceaccounts`,
//!    `report` (status, Events and metrics of an outcome), `attempt` (decide
//!    → mint under one deadline → verify → write), `keys` (the life of the
//!    keys a `rotate` source creates at a registry: pending, swap, grace,
//!    sweep), `remediate` (restarting Pods stuck pulling).
//! 4. Each kind's reconcile and wiring: `credential` (RegistryCredential),
//!    `fleet` (ClusterRegistryCredential).
//! 5. `controller` (both kinds wired together), then `http` (health and
//!    metrics endpoints), `day2` and `cli` (the commands).
//!
//! The reasons behind it are in the project's DESIGN notes.

pub mod api;
pub mod attempt;
pub mod cli;
pub mod context;
pub mod controller;
pub mod crdgen;
pub mod credential;
pub mod day2;
pub mod egress;
pub mod events;
pub mod finalizer;
pub mod fleet;
pub mod http;
pub mod index;
pub mod keys;
pub mod memo;
pub mod metrics;
pub mod proxy;
pub mod remediate;
pub mod report;
pub mod revoke;
pub mod schedule;
pub mod secret;
pub mod serviceaccounts;
pub mod slots;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod validate;

/// Make ring the process-wide rustls provider. Both ring (kube, our HTTP
/// client) and aws-lc-rs (the AWS SDK) are linked, so rustls cannot pick one
/// by itself. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
