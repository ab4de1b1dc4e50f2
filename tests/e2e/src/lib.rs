//! Harness of the end-to-end stories (tests/rollout.rs, tests/cluster.rs; docs/testing.md):
//! - [`story`]: a cluster per story — stand-in API server, the real operator, runtime processes
//!   run by the test's [`kubelet`], a real Prometheus;
//! - [`helpdesk`]: simulated customers whose escalations depend on the adapter version that
//!   answered them.
#![forbid(unsafe_code)]

pub mod helpdesk;
pub mod kubelet;
pub mod story;
