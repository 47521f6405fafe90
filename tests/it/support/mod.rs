//! Test support: the real control plane, peers, the operator process, waiting.
#![allow(dead_code)]

pub mod cluster;
pub mod image;
pub mod node;
pub mod oauth2;
pub mod objects;
pub mod operator;
pub mod peers;
pub mod proxy;
pub mod seal;

pub use cluster::*;
pub use image::*;
pub use node::*;
pub use oauth2::*;
pub use objects::*;
pub use operator::Operator;
pub use peers::*;
pub use proxy::Tinyproxy;
pub use seal::*;
