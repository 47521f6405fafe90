//! regcred: a Kubernetes operator that keeps container-registry pull Secrets fresh.
//!
//! The module map and the reasons behind it are in the project's DESIGN notes;
//! in short: `api` (types), `source` (minting), `schedule` (pure time math),
//! `secret` (rendering and applying the pull Secret), `status`, `controller`.

pub mod api;
pub mod crdgen;
pub mod schedule;
pub mod source;
