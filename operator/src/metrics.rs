//! The operator's own Prometheus metrics, named as in docs/metrics.md.

use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use switchboard_crds::adapter_patch::AdapterPhase;

/// Every phase, for the one-hot `switchboard_adapter_rollout_phase` gauge.
pub const PHASES: [AdapterPhase; 8] = [
    AdapterPhase::Pending,
    AdapterPhase::Validating,
    AdapterPhase::Shadow,
    AdapterPhase::Canary,
    AdapterPhase::Promoted,
    AdapterPhase::RolledBack,
    AdapterPhase::Superseded,
    AdapterPhase::Failed,
];

/// The phase as written in status.
pub fn phase_name(phase: AdapterPhase) -> &'static str {
    match phase {
        AdapterPhase::Pending => "Pending",
        AdapterPhase::Validating => "Validating",
        AdapterPhase::Shadow => "Shadow",
        AdapterPhase::Canary => "Canary",
        AdapterPhase::Promoted => "Promoted",
        AdapterPhase::RolledBack => "RolledBack",
        AdapterPhase::Superseded => "Superseded",
        AdapterPhase::Failed => "Failed",
    }
}

/// Operator metrics, registered in their own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    reconcile_seconds: HistogramVec,
    reconcile_errors: IntCounterVec,
    leader: IntGauge,
    rollout_phase: IntGaugeVec,
    canary_weight: IntGaugeVec,
    rollbacks: IntCounterVec,
    experiment_samples: IntGaugeVec,
    experiment_required: IntGaugeVec,
    index_builds: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// Registering fixed, valid descriptors in a fresh registry cannot fail; a failure is a bug in
// this file, caught by the tests.
#[allow(clippy::expect_used)]
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric descriptors are valid and unique");
    c
}

#[allow(clippy::expect_used)]
impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        Self {
            reconciles: counter(
                "switchboard_operator_reconciles_total",
                "Reconciles by controller and result (ok, error).",
                &["controller", "result"],
            ),
            reconcile_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "switchboard_operator_reconcile_seconds",
                        "Reconcile duration by controller.",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["controller"],
                )
                .expect("valid histogram"),
            ),
            reconcile_errors: counter(
                "switchboard_operator_reconcile_errors_total",
                "Failed reconciles by controller and error reason.",
                &["controller", "reason"],
            ),
            leader: register(
                &registry,
                IntGauge::new(
                    "switchboard_operator_leader",
                    "1 while this replica holds the leader Lease.",
                )
                .expect("valid gauge"),
            ),
            rollout_phase: gauge(
                "switchboard_adapter_rollout_phase",
                "1 for the current rollout phase of an AdapterPatch.",
                &["namespace", "name", "lineage", "phase"],
            ),
            canary_weight: gauge(
                "switchboard_adapter_canary_weight",
                "Percent of the lineage's traffic on the candidate.",
                &["namespace", "name", "lineage"],
            ),
            rollbacks: counter(
                "switchboard_adapter_rollbacks_total",
                "Rollbacks by reason (GuardrailBreached, ManualRollback, ManualAbort).",
                &["namespace", "name", "lineage", "reason"],
            ),
            experiment_samples: gauge(
                "switchboard_experiment_samples",
                "Units assigned to each arm of an Experiment.",
                &["namespace", "name", "arm"],
            ),
            experiment_required: gauge(
                "switchboard_experiment_required_samples",
                "Units required per variant for the Experiment's MDE, alpha and power.",
                &["namespace", "name"],
            ),
            index_builds: counter(
                "switchboard_knowledge_base_index_builds_total",
                "Finished index build Jobs by result (succeeded, failed).",
                &["namespace", "name", "result"],
            ),
            registry,
        }
    }

    /// Starts timing a reconcile of `controller`; the returned guard records the duration.
    pub fn reconcile_timer(&self, controller: &str) -> ReconcileTimer {
        ReconcileTimer {
            histogram: self.reconcile_seconds.with_label_values(&[controller]),
            start: Instant::now(),
        }
    }

    /// Counts a finished reconcile.
    pub fn reconciled(&self, controller: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .with_label_values(&[controller, result])
            .inc();
    }

    /// Counts a failed reconcile by reason.
    pub fn reconcile_error(&self, controller: &str, reason: &str) {
        self.reconcile_errors
            .with_label_values(&[controller, reason])
            .inc();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Whether this replica leads (as last recorded).
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Records an AdapterPatch's phase (one-hot) and canary weight.
    pub fn rollout(
        &self,
        namespace: &str,
        name: &str,
        lineage: &str,
        phase: AdapterPhase,
        weight: i32,
    ) {
        for p in PHASES {
            self.rollout_phase
                .with_label_values(&[namespace, name, lineage, phase_name(p)])
                .set(i64::from(p == phase));
        }
        self.canary_weight
            .with_label_values(&[namespace, name, lineage])
            .set(i64::from(weight));
    }

    /// Forgets a deleted AdapterPatch's series.
    pub fn forget_rollout(&self, namespace: &str, name: &str, lineage: &str) {
        for p in PHASES {
            let _ =
                self.rollout_phase
                    .remove_label_values(&[namespace, name, lineage, phase_name(p)]);
        }
        let _ = self
            .canary_weight
            .remove_label_values(&[namespace, name, lineage]);
    }

    /// Counts a rollback.
    pub fn rollback(&self, namespace: &str, name: &str, lineage: &str, reason: &str) {
        self.rollbacks
            .with_label_values(&[namespace, name, lineage, reason])
            .inc();
    }

    /// Records an Experiment's units per arm and its required sample size.
    pub fn experiment(
        &self,
        namespace: &str,
        name: &str,
        samples: &[(String, i64)],
        required: Option<i64>,
    ) {
        for (arm, n) in samples {
            self.experiment_samples
                .with_label_values(&[namespace, name, arm])
                .set(*n);
        }
        if let Some(required) = required {
            self.experiment_required
                .with_label_values(&[namespace, name])
                .set(required);
        }
    }

    /// Counts a finished index build.
    pub fn index_build(&self, namespace: &str, name: &str, succeeded: bool) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.index_builds
            .with_label_values(&[namespace, name, result])
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Records a reconcile's duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    histogram: prometheus::Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_names() {
        let m = Metrics::new();
        m.reconciled("router", true);
        m.reconcile_error("router", "ApiError");
        drop(m.reconcile_timer("router"));
        m.set_leader(true);
        m.rollout("ns", "pricing", "pricing", AdapterPhase::Canary, 25);
        m.rollback("ns", "pricing", "pricing", "GuardrailBreached");
        m.experiment("ns", "exp", &[("control".into(), 10)], Some(100));
        m.index_build("ns", "kb", true);
        let text = m.render();
        for name in [
            "switchboard_operator_reconciles_total{controller=\"router\",result=\"ok\"} 1",
            "switchboard_operator_reconcile_seconds_count{controller=\"router\"} 1",
            "switchboard_operator_reconcile_errors_total{controller=\"router\",reason=\"ApiError\"} 1",
            "switchboard_operator_leader 1",
            "switchboard_adapter_rollout_phase{lineage=\"pricing\",name=\"pricing\",namespace=\"ns\",phase=\"Canary\"} 1",
            "switchboard_adapter_rollout_phase{lineage=\"pricing\",name=\"pricing\",namespace=\"ns\",phase=\"Shadow\"} 0",
            "switchboard_adapter_canary_weight{lineage=\"pricing\",name=\"pricing\",namespace=\"ns\"} 25",
            "switchboard_adapter_rollbacks_total{lineage=\"pricing\",name=\"pricing\",namespace=\"ns\",reason=\"GuardrailBreached\"} 1",
            "switchboard_experiment_samples{arm=\"control\",name=\"exp\",namespace=\"ns\"} 10",
            "switchboard_experiment_required_samples{name=\"exp\",namespace=\"ns\"} 100",
            "switchboard_knowledge_base_index_builds_total{name=\"kb\",namespace=\"ns\",result=\"succeeded\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
