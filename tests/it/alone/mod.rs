//! Tests that load the whole machine (a burst of thousands of credentials),
//! time a few seconds of the operator's work, or install the chart with the
//! CRDs as a user would (install.rs): tests/run.sh runs them
//! after the others, one at a time, so neither disturbs another test.

mod install;
mod readme;
mod slots;
