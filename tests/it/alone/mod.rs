//! Tests that load the whole machine (a burst of thousands of credentials)
//! or time a few seconds of the operator's work: tests/run.sh runs them
//! after the others, one at a time, so neither disturbs another test.

mod readme;
mod slots;
