//! Test harness for Switchboard's controller and end-to-end tiers (docs/testing.md):
//! - [`controlplane`]: the real Kubernetes control plane (etcd, kube-apiserver,
//!   kube-controller-manager built from the upstream Go modules by `hack/setup.sh
//!   controlplane`), the operator's ServiceAccount under the chart's RBAC;
//! - [`prometheus`]: the real Prometheus binary scraping test processes;
//! - [`process`]: workspace binaries as child processes, logs shown on failure;
//! - [`postgres`]: a real PostgreSQL server (the outcome store's cluster database);
//! - [`registry`]: a real OCI registry (`oci://` adapter artifacts).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod controlplane;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod registry;
pub mod rng;
