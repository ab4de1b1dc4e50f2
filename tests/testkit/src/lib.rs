//! Test harness for Switchboard's controller and end-to-end tiers (docs/testing.md):
//! - [`apiserver`]: a stand-in Kubernetes API server in the test process;
//! - [`prometheus`]: the real Prometheus binary scraping test processes;
//! - [`process`]: workspace binaries as child processes, logs shown on failure.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod process;
pub mod prometheus;
