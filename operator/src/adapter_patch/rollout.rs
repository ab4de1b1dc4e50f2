//! The AdapterPatch rollout state machine, pure: (spec, status, observations, now) -> (status,
//! events). Pending -> Validating -> Shadow -> Canary steps -> Promoted (post-promotion watch);
//! RolledBack on a breach or by hand; Superseded when a newer version replaces a version.
//!
//! The whole state lives in `status`, so an operator restarted mid-rollout resumes exactly: a step
//! advances only once its `stepStartedAt + duration` has passed, and advancing sets
//! `stepStartedAt = now`, so replaying the same status never repeats or skips a step.

use std::{collections::BTreeMap, time::Duration};

use crate::context::ANALYSIS_INTERVAL;
pub use crate::observe::{ArmObservation, Observations, observable_in_shadow};
use crate::ports::ArtifactCheck;
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use switchboard_analysis::{
    Counts, GuardrailDecision, GuardrailPolicy, GuardrailReason, evaluate_guardrail,
};
use switchboard_crds::{
    AdapterPatchSpec,
    adapter_patch::{
        AdapterPatchStatus, AdapterPhase, Analysis, AnalysisDecision, ArmCounts, GuardrailAnalysis,
        HistoryEntry, STACKING_WARNING_THRESHOLD,
    },
    annotations,
    conditions::{self, reasons},
    set_condition,
};

/// The event rate the guardrail test's mixing parameter τ is planned for (with `minSamples` trials
/// per arm): a typical escalation rate. Fixed, never taken from the counts being tested.
pub const GUARDRAIL_PLANNING_RATE: f64 = 0.15;

/// Everything one step of the state machine reads.
#[derive(Clone, Copy, Debug)]
pub struct RolloutInput<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The spec.
    pub spec: &'a AdapterPatchSpec,
    /// `metadata.annotations` (manual actions).
    pub annotations: &'a BTreeMap<String, String>,
    /// The current status (empty for a new object).
    pub status: &'a AdapterPatchStatus,
    /// The artifact check of `spec.version`.
    pub artifact: &'a ArtifactCheck,
    /// The offline evaluation of `spec.version` (`spec.evaluation`), consulted once the artifact
    /// is verified.
    pub evaluation: &'a super::evaluation::EvaluationCheck,
    /// Guardrail counts.
    pub observations: &'a Observations,
    /// AdapterPatches on this object's base model (including this one).
    pub adapters_on_base_model: usize,
    /// The time of this reconcile.
    pub now: Timestamp,
}

/// Event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Expected transitions.
    Normal,
    /// Rollbacks, failures, warnings.
    Warning,
}

/// A Kubernetes Event to emit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutEvent {
    /// Normal or Warning.
    pub type_: EventType,
    /// CamelCase reason.
    pub reason: String,
    /// Sentence with the numbers.
    pub message: String,
}

/// The new status, the Events, and what the controller should do next.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutOutput {
    /// Status to apply.
    pub status: AdapterPatchStatus,
    /// Events, in order.
    pub events: Vec<RolloutEvent>,
    /// Annotations acted upon; the controller removes them so they act once.
    pub consumed_annotations: Vec<String>,
    /// Versions whose artifacts must stay loadable (stable, candidate, and superseded versions
    /// inside `rollbackWindow`); anything else may be released.
    pub retained_versions: Vec<String>,
    /// When to reconcile again at the latest.
    pub requeue_after: Option<Duration>,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn after(start: &Time, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| start.0.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

fn until(now: Timestamp, deadline: Timestamp) -> Duration {
    Duration::try_from(deadline.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// Outcome of the guardrail analysis of one reconcile.
#[derive(Clone, Debug, PartialEq)]
enum Verdict {
    /// A guardrail is breached: roll back.
    Breach(String),
    /// Data missing or too thin: hold.
    Hold {
        reason: &'static str,
        message: String,
    },
    /// Every guardrail has enough data and none is breached.
    Healthy,
}

struct Machine<'a> {
    input: RolloutInput<'a>,
    status: AdapterPatchStatus,
    events: Vec<RolloutEvent>,
    consumed: Vec<String>,
    requeue: Option<Duration>,
}

/// One step of the state machine.
pub fn step(input: RolloutInput<'_>) -> RolloutOutput {
    let mut m = Machine {
        input,
        status: input.status.clone(),
        events: Vec::new(),
        consumed: Vec::new(),
        requeue: None,
    };
    m.run();
    let retained = m.retained_versions();
    m.status.observed_generation = input.generation;
    RolloutOutput {
        status: m.status,
        events: m.events,
        consumed_annotations: m.consumed,
        retained_versions: retained,
        requeue_after: m.requeue,
    }
}

impl Machine<'_> {
    fn now(&self) -> Timestamp {
        self.input.now
    }

    fn event(&mut self, type_: EventType, reason: &str, message: String) {
        self.events.push(RolloutEvent {
            type_,
            reason: reason.to_owned(),
            message,
        });
    }

    fn requeue_in(&mut self, d: Duration) {
        let d = d.max(Duration::from_secs(1));
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn condition(&mut self, type_: &str, status: &str, reason: &str, message: impl Into<String>) {
        let now = time(self.now());
        set_condition(
            &mut self.status.conditions,
            Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message: message.into(),
                observed_generation: self.input.generation,
                last_transition_time: now,
            },
        );
    }

    fn history_mut(&mut self, version: &str) -> Option<&mut HistoryEntry> {
        self.status
            .history
            .iter_mut()
            .rev()
            .find(|h| h.version == version)
    }

    fn finish_history(&mut self, version: &str, phase: AdapterPhase, reason: &str) {
        let now = time(self.now());
        if let Some(h) = self.history_mut(version) {
            h.phase = phase;
            h.finished_at = Some(now);
            h.reason = Some(reason.to_owned());
        }
    }

    fn set_phase(&mut self, phase: AdapterPhase) {
        self.status.phase = phase;
        self.status.step_started_at = Some(time(self.now()));
        if phase != AdapterPhase::Canary {
            self.status.current_step = None;
            self.status.canary_weight = None;
        }
        if let Some(candidate) = self.status.candidate_version.clone()
            && let Some(h) = self.history_mut(&candidate)
        {
            h.phase = phase;
        }
    }

    fn run(&mut self) {
        self.stacking();
        if self.manual_rollback_to() {
            return;
        }
        self.detect_new_version();
        self.manual_action();
        match self.status.phase {
            AdapterPhase::Pending | AdapterPhase::Validating => self.validating(),
            AdapterPhase::Shadow => self.shadow(),
            AdapterPhase::Canary => self.canary(),
            AdapterPhase::Promoted => self.promoted(),
            AdapterPhase::RolledBack | AdapterPhase::Failed | AdapterPhase::Superseded => {}
        }
        self.summary_conditions();
    }

    fn stacking(&mut self) {
        let n = self.input.adapters_on_base_model;
        let base = self.input.spec.base_model.clone();
        if n > STACKING_WARNING_THRESHOLD {
            let message = format!(
                "{n} adapters share base model {base} (warning above {STACKING_WARNING_THRESHOLD}): patches from different epochs interact; fold them into a fine-tune"
            );
            let was = switchboard_crds::is_condition_true(
                &self.status.conditions,
                conditions::ADAPTER_STACKING,
            );
            self.condition(
                conditions::ADAPTER_STACKING,
                "True",
                reasons::TOO_MANY_ADAPTERS,
                message.clone(),
            );
            if !was {
                self.event(EventType::Warning, reasons::TOO_MANY_ADAPTERS, message);
            }
        } else {
            self.condition(
                conditions::ADAPTER_STACKING,
                "False",
                "WithinLimit",
                format!("{n} adapters share base model {base}"),
            );
        }
    }

    /// A new `spec.version` (not the stable one, not the current candidate, not one rolled back
    /// with the same digest) starts a rollout; an in-flight candidate is superseded.
    fn detect_new_version(&mut self) {
        let spec = self.input.spec;
        let version = spec.version.as_str();
        let digest = spec.artifact.sha256.as_str();
        if self.status.stable_version.as_deref() == Some(version)
            || self.status.candidate_version.as_deref() == Some(version)
        {
            return;
        }
        let rejected = self.status.history.iter().rev().any(|h| {
            h.version == version
                && h.sha256 == digest
                && matches!(h.phase, AdapterPhase::RolledBack | AdapterPhase::Failed)
        });
        if rejected {
            // Rolled back earlier: stays out until the user publishes a new version.
            return;
        }
        if let Some(old) = self.status.candidate_version.clone()
            && self.status.stable_version.as_deref() != Some(old.as_str())
            && matches!(
                self.status.phase,
                AdapterPhase::Pending
                    | AdapterPhase::Validating
                    | AdapterPhase::Shadow
                    | AdapterPhase::Canary
            )
        {
            self.finish_history(&old, AdapterPhase::Superseded, "NewerVersion");
            self.event(
                EventType::Normal,
                "Superseded",
                format!("rollout of {old} superseded by {version}"),
            );
        }
        self.status.candidate_version = Some(version.to_owned());
        self.status.last_analysis = None;
        self.status.history.push(HistoryEntry {
            version: version.to_owned(),
            sha256: digest.to_owned(),
            uri: Some(spec.artifact.uri.clone()),
            phase: AdapterPhase::Validating,
            started_at: Some(time(self.now())),
            finished_at: None,
            reason: None,
        });
        self.set_phase(AdapterPhase::Validating);
        self.event(
            EventType::Normal,
            "RolloutStarted",
            format!(
                "rolling out {version} (stable: {})",
                self.status.stable_version.as_deref().unwrap_or("none")
            ),
        );
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.input.annotations.get(key).map(String::as_str)
    }

    fn in_rollout(&self) -> bool {
        matches!(
            self.status.phase,
            AdapterPhase::Validating | AdapterPhase::Shadow | AdapterPhase::Canary
        ) && self.status.candidate_version.is_some()
    }

    fn manual_action(&mut self) {
        let Some(action) = self.annotation(annotations::ACTION).map(str::to_owned) else {
            return;
        };
        match action.as_str() {
            annotations::actions::PROMOTE
                if matches!(
                    self.status.phase,
                    AdapterPhase::Shadow | AdapterPhase::Canary
                ) =>
            {
                self.consumed.push(annotations::ACTION.to_owned());
                self.promote("promoted by hand (switchboard.dev/action=promote)".to_owned());
            }
            annotations::actions::ABORT | annotations::actions::ROLLBACK if self.in_rollout() => {
                self.consumed.push(annotations::ACTION.to_owned());
                let reason = if action == annotations::actions::ABORT {
                    reasons::MANUAL_ABORT
                } else {
                    reasons::MANUAL_ROLLBACK
                };
                self.roll_back(reason, format!("{action} requested by annotation"));
            }
            annotations::actions::ROLLBACK if self.status.phase == AdapterPhase::Promoted => {
                self.consumed.push(annotations::ACTION.to_owned());
                if let Some(previous) = self.previous_stable() {
                    self.restore(
                        &previous,
                        reasons::MANUAL_ROLLBACK,
                        "rollback requested by annotation".to_owned(),
                    );
                }
            }
            // Not applicable in this phase: leave the annotation for the user to see.
            _ => {}
        }
    }

    /// `switchboard.dev/rollback-to: <version>`: make a version from history stable again.
    fn manual_rollback_to(&mut self) -> bool {
        let Some(target) = self.annotation(annotations::ROLLBACK_TO).map(str::to_owned) else {
            return false;
        };
        self.consumed.push(annotations::ROLLBACK_TO.to_owned());
        if self.status.stable_version.as_deref() == Some(target.as_str()) && !self.in_rollout() {
            return false;
        }
        if !self.loadable(&target) {
            self.event(
                EventType::Warning,
                "RollbackRefused",
                format!(
                    "cannot roll back to {target}: not in history or released after the rollback window ({})",
                    self.input.spec.rollback_window
                ),
            );
            return false;
        }
        self.restore(
            &target,
            reasons::MANUAL_ROLLBACK,
            format!("rollback to {target} requested by annotation"),
        );
        self.summary_conditions();
        true
    }

    /// Whether a version's artifact is still kept (stable, candidate, or ended inside the
    /// rollback window).
    fn loadable(&self, version: &str) -> bool {
        let window = self.input.spec.rollback_window.duration();
        self.status.history.iter().rev().any(|h| {
            h.version == version
                && h.phase != AdapterPhase::Failed
                && h.finished_at
                    .as_ref()
                    .is_none_or(|f| after(f, window) > self.now())
        })
    }

    fn previous_stable(&self) -> Option<String> {
        let stable = self.status.stable_version.as_deref();
        self.status
            .history
            .iter()
            .rev()
            .filter(|h| Some(h.version.as_str()) != stable)
            .find(|h| {
                h.phase == AdapterPhase::Superseded
                    && h.reason.as_deref() == Some(reasons::PROMOTED)
            })
            .map(|h| h.version.clone())
            .filter(|v| self.loadable(v))
    }

    /// Makes `target` stable; the current stable and any candidate end as RolledBack.
    fn restore(&mut self, target: &str, reason: &str, message: String) {
        let from = self.status.stable_version.clone();
        for version in [self.status.candidate_version.clone(), from.clone()]
            .into_iter()
            .flatten()
        {
            if version != target {
                self.finish_history(&version, AdapterPhase::RolledBack, reason);
            }
        }
        let now = time(self.now());
        if let Some(h) = self.history_mut(target) {
            h.phase = AdapterPhase::Promoted;
            h.finished_at = None;
            h.reason = None;
            h.started_at = Some(now);
        }
        self.status.stable_version = Some(target.to_owned());
        self.status.candidate_version = None;
        self.status.phase = AdapterPhase::RolledBack;
        self.status.step_started_at = Some(time(self.now()));
        self.status.current_step = None;
        self.status.canary_weight = None;
        self.event(
            EventType::Warning,
            reason,
            format!(
                "rolled back from {} to {target}: {message}",
                from.as_deref().unwrap_or("none")
            ),
        );
    }

    fn validating(&mut self) {
        if self.status.candidate_version.is_none() {
            return;
        }
        match self.input.artifact.clone() {
            ArtifactCheck::Pending => {
                if self.status.phase == AdapterPhase::Pending {
                    self.set_phase(AdapterPhase::Validating);
                }
                self.condition(
                    conditions::ARTIFACT_VERIFIED,
                    "Unknown",
                    "Verifying",
                    "downloading the artifact and checking its digest",
                );
                self.requeue_in(Duration::from_secs(10));
            }
            ArtifactCheck::Failed { reason, message }
                if reason == reasons::ARTIFACT_UNAVAILABLE =>
            {
                // Possibly transient (registry down): keep validating with a backoff.
                self.condition(conditions::ARTIFACT_VERIFIED, "False", &reason, message);
                self.requeue_in(ANALYSIS_INTERVAL);
            }
            ArtifactCheck::Failed { reason, message } => {
                self.condition(
                    conditions::ARTIFACT_VERIFIED,
                    "False",
                    &reason,
                    message.clone(),
                );
                let version = self.status.candidate_version.take().unwrap_or_default();
                self.finish_history(&version, AdapterPhase::Failed, &reason);
                self.status.phase = AdapterPhase::Failed;
                self.status.step_started_at = Some(time(self.now()));
                self.event(
                    EventType::Warning,
                    &reason,
                    format!("{version} not rolled out: {message}"),
                );
            }
            ArtifactCheck::Verified => {
                self.condition(
                    conditions::ARTIFACT_VERIFIED,
                    "True",
                    "DigestMatches",
                    format!(
                        "artifact digest {} verified",
                        self.input.spec.artifact.sha256
                    ),
                );
                if !self.evaluated() {
                    return;
                }
                if self.status.stable_version.is_none() {
                    self.promote(
                        "first version: no stable version to compare with, promoted without canary"
                            .to_owned(),
                    );
                } else if !self.input.spec.rollout.shadow.duration.duration().is_zero() {
                    self.set_phase(AdapterPhase::Shadow);
                    self.event(
                        EventType::Normal,
                        reasons::SHADOW_ANALYSIS,
                        format!(
                            "shadowing {} on {} of requests for {}",
                            self.candidate(),
                            self.input.spec.rollout.shadow.sample_share,
                            self.input.spec.rollout.shadow.duration
                        ),
                    );
                    self.requeue_in(ANALYSIS_INTERVAL);
                } else {
                    self.enter_step(0);
                }
            }
        }
    }

    /// The offline evaluation gate: `true` when the candidate may go on (no evaluation asked
    /// for, or it passed); otherwise the status says why it waits or failed.
    fn evaluated(&mut self) -> bool {
        use super::evaluation::EvaluationCheck;
        if self.input.spec.evaluation.is_none() {
            return true;
        }
        match self.input.evaluation.clone() {
            EvaluationCheck::NotRequired => true,
            EvaluationCheck::Pending(result) => {
                self.set_phase(AdapterPhase::Validating);
                self.condition(
                    conditions::EVALUATED,
                    "Unknown",
                    reasons::EVALUATING,
                    format!(
                        "evaluation Job {} answers the golden set with {} and {}",
                        result.job.as_deref().unwrap_or("(starting)"),
                        result.version,
                        result
                            .baseline_version
                            .as_deref()
                            .unwrap_or("the Router without this lineage")
                    ),
                );
                self.status.evaluation = Some(result);
                self.requeue_in(Duration::from_secs(10));
                false
            }
            EvaluationCheck::Error(message) => {
                self.set_phase(AdapterPhase::Validating);
                self.condition(
                    conditions::EVALUATED,
                    "False",
                    reasons::EVALUATION_ERROR,
                    message,
                );
                self.requeue_in(ANALYSIS_INTERVAL);
                false
            }
            EvaluationCheck::Failed {
                reason,
                message,
                result,
            } => {
                self.condition(conditions::EVALUATED, "False", &reason, message.clone());
                self.status.evaluation = Some(result);
                let version = self.status.candidate_version.take().unwrap_or_default();
                self.finish_history(&version, AdapterPhase::Failed, &reason);
                self.status.phase = AdapterPhase::Failed;
                self.status.step_started_at = Some(time(self.now()));
                self.event(
                    EventType::Warning,
                    &reason,
                    format!("{version} not rolled out: {message}"),
                );
                false
            }
            EvaluationCheck::Passed(result) => {
                self.condition(
                    conditions::EVALUATED,
                    "True",
                    reasons::EVALUATION_PASSED,
                    format!(
                        "{} on {} golden questions: {}",
                        result.version, result.questions, result.message
                    ),
                );
                self.event(
                    EventType::Normal,
                    reasons::EVALUATION_PASSED,
                    format!(
                        "{} passed its offline evaluation: {}",
                        result.version, result.message
                    ),
                );
                self.status.evaluation = Some(result);
                true
            }
        }
    }

    fn candidate(&self) -> String {
        self.status.candidate_version.clone().unwrap_or_default()
    }

    fn enter_step(&mut self, index: usize) {
        let steps = &self.input.spec.rollout.canary.steps;
        let Some(step) = steps.get(index).cloned() else {
            self.promote(format!("all {} canary steps healthy", steps.len()));
            return;
        };
        self.set_phase(AdapterPhase::Canary);
        self.status.current_step = i32::try_from(index).ok();
        self.status.canary_weight = Some(step.weight);
        self.event(
            EventType::Normal,
            reasons::CANARY_STEP,
            format!(
                "{} at {}% of traffic (step {}/{}) for {}",
                self.candidate(),
                step.weight,
                index + 1,
                steps.len(),
                step.duration
            ),
        );
        self.requeue_in(ANALYSIS_INTERVAL.min(step.duration.duration()));
    }

    fn promote(&mut self, why: String) {
        let candidate = self.candidate();
        if let Some(old) = self.status.stable_version.clone()
            && old != candidate
        {
            // PROMOTED marks "was stable until superseded": the post-promotion watch and a
            // manual rollback go back to it.
            self.finish_history(&old, AdapterPhase::Superseded, reasons::PROMOTED);
        }
        self.status.stable_version = Some(candidate.clone());
        self.set_phase(AdapterPhase::Promoted);
        self.status.candidate_version = Some(candidate.clone());
        self.event(
            EventType::Normal,
            reasons::PROMOTED,
            format!("{candidate} promoted: {why}"),
        );
    }

    fn roll_back(&mut self, reason: &str, message: String) {
        let candidate = self.candidate();
        self.finish_history(&candidate, AdapterPhase::RolledBack, reason);
        self.status.phase = AdapterPhase::RolledBack;
        self.status.step_started_at = Some(time(self.now()));
        self.status.current_step = None;
        self.status.canary_weight = None;
        self.status.candidate_version = Some(candidate.clone());
        self.event(
            EventType::Warning,
            reason,
            format!(
                "{candidate} rolled back to {}: {message}",
                self.status.stable_version.as_deref().unwrap_or("none")
            ),
        );
    }

    /// Runs the guardrails over the observations and records the analysis in status.
    fn analyse(&mut self, shadow: bool) -> Verdict {
        let mut results = Vec::new();
        let mut breach = None;
        let mut hold = None;
        for g in &self.input.spec.guardrails {
            if shadow && !observable_in_shadow(g.metric) {
                continue;
            }
            let metric = g.metric.as_str();
            let obs = match self.input.observations.get(&g.metric) {
                Some(Ok(obs)) => *obs,
                Some(Err(e)) => {
                    hold.get_or_insert((reasons::METRICS_UNAVAILABLE, format!("{metric}: {e}")));
                    continue;
                }
                None => {
                    hold.get_or_insert((
                        reasons::METRICS_UNAVAILABLE,
                        format!("{metric}: no data in the window"),
                    ));
                    continue;
                }
            };
            let (baseline, candidate) = if g.metric.lower_is_better() {
                (obs.baseline, obs.candidate)
            } else {
                // "Higher is better" metrics guard against a fall: compare the complements.
                let flip = |c: Counts| Counts {
                    events: c.trials.saturating_sub(c.events),
                    trials: c.trials,
                };
                (flip(obs.baseline), flip(obs.candidate))
            };
            // The mixture's τ is tuned for the sample at which a decision is first allowed
            // (`minSamples` per arm): with the library default (tuned for ~9,000 trials per arm)
            // the always-valid interval at a few dozen trials is so wide that even a tenfold rise
            // reads as inconclusive and the canary walks on. τ must be fixed before the data (a
            // τ chosen from the counts under test breaks the mixture's martingale, hence its
            // error guarantee), so the planning rate is a constant, not the stable version's
            // observed rate; the interval's width is flat near the optimal τ, so a planning rate
            // off by a factor of a few costs little power (docs/statistics.md).
            let planning_rate = GUARDRAIL_PLANNING_RATE;
            let policy = GuardrailPolicy::new(g.max_relative_increase.fraction()).and_then(|p| {
                let p = GuardrailPolicy {
                    alpha: 1.0 - g.confidence.fraction(),
                    min_trials_per_arm: u64::try_from(g.min_samples).unwrap_or(0),
                    ..p
                };
                let n = p.min_trials_per_arm.max(1);
                p.with_mixing_tuned_for(planning_rate, n, n)
            });
            let evaluation = policy.and_then(|p| evaluate_guardrail(&p, baseline, candidate));
            let evaluation = match evaluation {
                Ok(e) => e,
                Err(e) => {
                    hold.get_or_insert((reasons::METRICS_UNAVAILABLE, format!("{metric}: {e}")));
                    continue;
                }
            };
            let arm = |c: Counts, unsettled: Option<u64>| ArmCounts {
                events: i64::try_from(c.events).unwrap_or(i64::MAX),
                trials: i64::try_from(c.trials).unwrap_or(i64::MAX),
                rate: c.rate().unwrap_or(0.0),
                unsettled: unsettled.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            };
            let ev = &evaluation.evidence;
            let interval = ev.always_valid_interval;
            results.push(GuardrailAnalysis {
                metric: metric.to_owned(),
                window: g.window.to_string(),
                settle_after: (!shadow && g.metric.is_outcome()).then(|| {
                    switchboard_crds::GoDuration::from_millis(
                        u64::try_from(g.settle().as_millis()).unwrap_or(u64::MAX),
                    )
                    .to_string()
                }),
                baseline: arm(baseline, obs.unsettled.map(|u| u.0)),
                candidate: arm(candidate, obs.unsettled.map(|u| u.1)),
                relative_change: ev.relative_change.unwrap_or(0.0),
                ci_low: interval.map_or(0.0, |i| i.lower),
                ci_high: interval.map_or(0.0, |i| i.upper),
                breached: evaluation.decision == GuardrailDecision::Breach,
            });
            match evaluation.decision {
                GuardrailDecision::Breach => {
                    breach.get_or_insert(format!("{metric}: {}", evaluation.message));
                }
                GuardrailDecision::Hold
                    if evaluation.reason == GuardrailReason::InsufficientSamples =>
                {
                    hold.get_or_insert((
                        reasons::INSUFFICIENT_SAMPLES,
                        format!("{metric}: {}", evaluation.message),
                    ));
                }
                // Inconclusive with the estimate above the margin: not proven worse (no
                // rollback: that needs the always-valid interval above the margin), but not
                // allowed to advance either — a canary escalating 39/51 against 1/28 must not
                // walk its steps just because a one-event baseline leaves the interval wide.
                // More data either breaches or brings the estimate back within the margin.
                GuardrailDecision::Hold
                    if evaluation.reason == GuardrailReason::Inconclusive
                        && ev.relative_change.is_some_and(|change| change > ev.margin) =>
                {
                    hold.get_or_insert((
                        reasons::RISE_NOT_RULED_OUT,
                        format!(
                            "{metric}: {}; holding the step until the evidence breaches or clears the margin",
                            evaluation.message
                        ),
                    ));
                }
                GuardrailDecision::Hold | GuardrailDecision::Pass => {}
            }
        }
        let verdict = match (breach, hold) {
            (Some(message), _) => Verdict::Breach(message),
            (None, Some((reason, message))) => Verdict::Hold { reason, message },
            (None, None) => Verdict::Healthy,
        };
        let (decision, message) = match &verdict {
            Verdict::Breach(m) => (AnalysisDecision::Rollback, m.clone()),
            Verdict::Hold { message, .. } => (AnalysisDecision::Wait, message.clone()),
            Verdict::Healthy => (
                AnalysisDecision::Continue,
                "guardrails within their limits".to_owned(),
            ),
        };
        match &verdict {
            Verdict::Breach(m) => self.condition(
                conditions::GUARDRAILS_HEALTHY,
                "False",
                reasons::GUARDRAIL_BREACHED,
                m.clone(),
            ),
            Verdict::Hold { reason, message } => self.condition(
                conditions::GUARDRAILS_HEALTHY,
                "Unknown",
                reason,
                message.clone(),
            ),
            Verdict::Healthy => self.condition(
                conditions::GUARDRAILS_HEALTHY,
                "True",
                "WithinLimits",
                message.clone(),
            ),
        }
        self.status.last_analysis = Some(Analysis {
            time: Some(time(self.now())),
            decision,
            message,
            guardrails: results,
        });
        verdict
    }

    /// Deadline of the current stage, and whether it has passed.
    fn stage_over(&mut self, duration: Duration) -> bool {
        let start = self
            .status
            .step_started_at
            .clone()
            .unwrap_or_else(|| time(self.now()));
        let end = after(&start, duration);
        if end <= self.now() {
            true
        } else {
            self.requeue_in(until(self.now(), end).min(ANALYSIS_INTERVAL));
            false
        }
    }

    fn gate(&mut self, shadow: bool, duration: Duration) -> bool {
        match self.analyse(shadow) {
            Verdict::Breach(message) => {
                self.roll_back(reasons::GUARDRAIL_BREACHED, message);
                false
            }
            Verdict::Hold { .. } => {
                self.requeue_in(ANALYSIS_INTERVAL);
                false
            }
            Verdict::Healthy => !self.input.spec.paused && self.stage_over(duration),
        }
    }

    fn shadow(&mut self) {
        let duration = self.input.spec.rollout.shadow.duration.duration();
        if self.gate(true, duration) {
            self.enter_step(0);
        }
    }

    fn canary(&mut self) {
        let index = usize::try_from(self.status.current_step.unwrap_or(0)).unwrap_or(0);
        let Some(step) = self.input.spec.rollout.canary.steps.get(index).cloned() else {
            // Steps were edited under a running canary: continue from the end.
            self.enter_step(index);
            return;
        };
        // The spec's weights may have been edited; the status follows the spec.
        self.status.canary_weight = Some(step.weight);
        if self.gate(false, step.duration.duration()) {
            self.enter_step(index + 1);
        }
    }

    fn promoted(&mut self) {
        let watch = self.input.spec.rollout.post_promotion_watch.duration();
        let Some(started) = self.status.step_started_at.clone() else {
            return;
        };
        let end = after(&started, watch);
        if end <= self.now() || self.previous_stable().is_none() {
            return;
        }
        if let Verdict::Breach(message) = self.analyse(false)
            && let Some(previous) = self.previous_stable()
        {
            self.restore(&previous, reasons::GUARDRAIL_BREACHED, message);
            return;
        }
        self.requeue_in(until(self.now(), end).min(ANALYSIS_INTERVAL));
    }

    fn summary_conditions(&mut self) {
        let phase = self.status.phase;
        let stable = self.status.stable_version.clone();
        let candidate = self.candidate();
        let serving = stable.is_some();
        let (progressing, p_reason, p_message) = match phase {
            AdapterPhase::Pending | AdapterPhase::Validating => (
                "True",
                "Validating",
                format!("verifying the artifact of {candidate}"),
            ),
            AdapterPhase::Shadow => (
                "True",
                reasons::SHADOW_ANALYSIS,
                format!("{candidate} in shadow"),
            ),
            AdapterPhase::Canary if self.input.spec.paused => (
                "True",
                reasons::PAUSED,
                format!(
                    "{candidate} canary paused at {}%",
                    self.status.canary_weight.unwrap_or(0)
                ),
            ),
            AdapterPhase::Canary => (
                "True",
                reasons::CANARY_STEP,
                format!(
                    "{candidate} at {}% (step {})",
                    self.status.canary_weight.unwrap_or(0),
                    self.status.current_step.unwrap_or(0) + 1
                ),
            ),
            _ => (
                "False",
                reasons::RECONCILED,
                "no rollout in progress".to_owned(),
            ),
        };
        self.condition(conditions::PROGRESSING, progressing, p_reason, p_message);
        let degraded_reason = self
            .status
            .history
            .iter()
            .rev()
            .find(|h| h.version == candidate || stable.is_none())
            .and_then(|h| h.reason.clone());
        match phase {
            AdapterPhase::RolledBack | AdapterPhase::Failed => {
                let reason = degraded_reason.unwrap_or_else(|| reasons::MANUAL_ROLLBACK.to_owned());
                self.condition(
                    conditions::DEGRADED,
                    "True",
                    &reason,
                    format!(
                        "serving {}; {candidate} is not served",
                        stable.as_deref().unwrap_or("no version")
                    ),
                );
            }
            _ => self.condition(conditions::DEGRADED, "False", reasons::RECONCILED, ""),
        }
        let (ready, reason) = if serving {
            ("True", reasons::RECONCILED)
        } else {
            ("False", "NoStableVersion")
        };
        self.condition(
            conditions::READY,
            ready,
            reason,
            format!("stable version: {}", stable.as_deref().unwrap_or("none")),
        );
    }

    fn retained_versions(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .status
            .history
            .iter()
            .filter(|h| {
                Some(&h.version) == self.status.stable_version.as_ref()
                    || Some(&h.version) == self.status.candidate_version.as_ref()
                    || self.loadable(&h.version)
            })
            .map(|h| h.version.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
