//! Test support: the real control plane, namespaces, waiting.
#![allow(dead_code)]

pub mod cluster;

pub use cluster::*;
