//! Integration tests against a real kube-apiserver, etcd and
//! kube-controller-manager (see tests/controlplane), each test in its own
//! namespace. One binary, so one control plane serves the whole run.

mod alone;
mod api;
mod attempt;
mod day2;
mod ecr;
mod egress;
mod fleet;
mod hostile;
mod keep;
mod keys;
mod local;
mod newcomer;
mod parity;
mod pods;
mod rotation;
mod sealed;
mod soak;
mod ship;
mod support;
mod tls;
