//! Harness of the end-to-end stories (tests/rollout.rs, tests/evaluation.rs; docs/testing.md,
//! tier 3), on the real control plane (`switchboard_testkit::controlplane`):
//! - [`story`]: a namespace per story with the real operator under the chart's RBAC, a real
//!   Prometheus, the sample KnowledgeBase built by its real index-build Job, adapter artifacts;
//! - [`node`]: the stories' node — binds the namespace's Pods and runs their containers as local
//!   processes, reporting them as a kubelet does, so kube-controller-manager's Deployment,
//!   ReplicaSet and Job controllers do the rest;
//! - [`helpdesk`]: simulated customers whose escalations depend on the adapter version that
//!   answered them.
#![forbid(unsafe_code)]

pub mod helpdesk;
pub mod node;
pub mod story;
