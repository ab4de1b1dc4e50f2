//! The guardrail "the candidate's rate must not rise more than X% relative to the baseline's",
//! decided from cumulative counts every analysis interval.
//!
//! With `θ = ln(p_candidate / p_baseline)` and the margin `θ_m = ln(1 + X)`:
//! - **Breach** when the always-valid interval of `θ` lies entirely above `θ_m`: the candidate is
//!   confidently worse than the margin allows → roll back.
//! - **Pass** when it lies entirely below `θ_m`: the candidate is confidently non-inferior → may be
//!   promoted.
//! - **Hold** otherwise, and always while an arm is below the minimum sample → keep collecting.
//!
//! The interval is the mixture-SPRT confidence sequence of [`crate::sequential`], so looking at every
//! interval, for as long as the rollout runs, wrongly breaches (or wrongly passes) with probability
//! at most `alpha` — unlike a fixed threshold on the observed rate, which rolls back healthy
//! candidates whenever noise crosses it, and unlike a repeated fixed-horizon z-test, whose false
//! positive rate grows with every look.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rates::{ArmRate, LogRatio, check_margin, relative_change, relative_interval};
use crate::sequential::MixtureSprt;
use crate::{Counts, Error, Interval, Result, finite};

/// Default probability of a false breach (or a false pass) over the whole rollout.
pub const DEFAULT_ALPHA: f64 = 0.05;
/// Default minimum trials per arm before any decision other than Hold.
pub const DEFAULT_MIN_TRIALS_PER_ARM: u64 = 200;
/// Default minimum expected events per arm (trials × pooled rate) before any decision other than
/// Hold: the usual condition for the normal approximation of a proportion.
pub const DEFAULT_MIN_EXPECTED_EVENTS_PER_ARM: f64 = 10.0;
/// Default mixing standard deviation on the log rate ratio: the mixture weighs relative changes of
/// about ±10%, the size of regression a guardrail exists to catch. At α = 0.05 the interval is
/// narrowest where the log ratio's standard error is 0.1/√8.2 ≈ 0.035 — about 9,300 trials per arm
/// at a 15% baseline with an even split. From a tenth to ten times that sample it is at most 26%
/// wider than the best `τ` for that sample would give, and at best 1.55 times the fixed-horizon
/// interval (the price of looking at every interval).
pub const DEFAULT_MIXING_SD: f64 = 0.1;

/// What a guardrail is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailPolicy {
    /// Largest tolerated relative rise of the candidate's rate (0.05 = 5%); above -1.
    pub max_relative_increase: f64,
    /// Probability that the always-valid interval ever misses the true ratio, over all looks.
    pub alpha: f64,
    /// Both arms need at least this many trials before anything but Hold.
    pub min_trials_per_arm: u64,
    /// Both arms need at least this many expected events (trials × pooled rate).
    pub min_expected_events_per_arm: f64,
    /// Mixing standard deviation `τ` on the log rate ratio; fix it before the rollout starts.
    pub mixing_sd: f64,
}

impl GuardrailPolicy {
    /// A policy with the given margin and the defaults above.
    pub fn new(max_relative_increase: f64) -> Result<Self> {
        let policy = Self {
            max_relative_increase,
            alpha: DEFAULT_ALPHA,
            min_trials_per_arm: DEFAULT_MIN_TRIALS_PER_ARM,
            min_expected_events_per_arm: DEFAULT_MIN_EXPECTED_EVENTS_PER_ARM,
            mixing_sd: DEFAULT_MIXING_SD,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Tunes the mixing standard deviation so the always-valid interval is narrowest when the arms
    /// hold `baseline_trials` and `candidate_trials` at an expected rate of `expected_rate` (e.g.
    /// the planned end of the canary). Decide this when the rollout starts, from the plan, never
    /// from the counts being tested.
    pub fn with_mixing_tuned_for(
        self,
        expected_rate: f64,
        baseline_trials: u64,
        candidate_trials: u64,
    ) -> Result<Self> {
        crate::check_probability("expectedRate", expected_rate)?;
        if baseline_trials == 0 || candidate_trials == 0 {
            return Err(Error::InvalidParameter {
                name: "trials",
                value: 0.0,
                expected: "positive for both arms",
            });
        }
        // Delta-method variance of the log risk ratio at equal rates.
        let per_trial = (1.0 - expected_rate) / expected_rate;
        let variance = per_trial / baseline_trials as f64 + per_trial / candidate_trials as f64;
        let mixing_sd = crate::sequential::tuned_mixing_sd(variance, self.alpha)?;
        let tuned = Self { mixing_sd, ..self };
        tuned.validate()?;
        Ok(tuned)
    }

    /// Checks every field's domain.
    pub fn validate(&self) -> Result<()> {
        check_margin(self.max_relative_increase).map_err(|_| Error::InvalidParameter {
            name: "maxRelativeIncrease",
            value: self.max_relative_increase,
            expected: "a finite relative change above -1",
        })?;
        MixtureSprt::new(self.alpha, self.mixing_sd)?;
        let expected = self.min_expected_events_per_arm;
        if !(expected.is_finite() && expected >= 0.0) {
            return Err(Error::InvalidParameter {
                name: "minExpectedEventsPerArm",
                value: expected,
                expected: "finite and non-negative",
            });
        }
        Ok(())
    }
}

/// What to do with the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum GuardrailDecision {
    /// The candidate's rate is confidently above the margin: roll back.
    Breach,
    /// Not enough evidence either way: keep collecting.
    Hold,
    /// The candidate's rate is confidently within the margin: non-inferior.
    Pass,
}

/// Why, as a constant suitable for a condition reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum GuardrailReason {
    /// An arm is below the minimum trials or expected events.
    InsufficientSamples,
    /// The always-valid interval lies above the margin.
    RiseAboveMargin,
    /// The always-valid interval lies below the margin.
    WithinMargin,
    /// The always-valid interval contains the margin.
    Inconclusive,
    /// Both arms have their minimum trials, the event is too rare for a relative test, and the
    /// candidate has none: it cannot have risen (zero refusals on both sides, say).
    NoCandidateEvents,
}

/// The numbers behind a decision, ready for a status field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailEvidence {
    /// The baseline arm.
    pub baseline: ArmRate,
    /// The candidate arm.
    pub candidate: ArmRate,
    /// Both arms pooled; the expected-events rule uses it.
    pub pooled_rate: Option<f64>,
    /// Observed relative change (candidate / baseline - 1).
    pub relative_change: Option<f64>,
    /// Always-valid 1 - alpha interval of the relative change: decisions use this one.
    pub always_valid_interval: Option<Interval>,
    /// Fixed-horizon 1 - alpha interval of the relative change, for reference only: it is not
    /// valid under repeated looks.
    pub fixed_horizon_interval: Option<Interval>,
    /// The margin (max relative increase).
    pub margin: f64,
    /// z statistic of the log ratio against ln(1 + margin).
    pub z_statistic: Option<f64>,
    /// ln of the mixture-SPRT e-value against "ratio = 1 + margin".
    pub log_e_value: Option<f64>,
    /// ln(1/alpha): the e-value rejects at or above this.
    pub log_e_value_threshold: f64,
    /// 0.5 was added to each count because an arm had no events.
    pub adjusted: bool,
    /// The policy's alpha.
    pub alpha: f64,
    /// The policy's mixing standard deviation.
    pub mixing_sd: f64,
}

/// A guardrail decision with its reason, a message for an Event or condition, and the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailEvaluation {
    /// Breach, Hold or Pass.
    pub decision: GuardrailDecision,
    /// Why.
    pub reason: GuardrailReason,
    /// One sentence with the numbers.
    pub message: String,
    /// The numbers.
    pub evidence: GuardrailEvidence,
}

/// Decides the guardrail from cumulative counts since the rollout (or canary step) started. Call
/// it every analysis interval with the updated counts; the policy — in particular its mixing
/// standard deviation — must stay the same for the whole sequence.
pub fn evaluate_guardrail(
    policy: &GuardrailPolicy,
    baseline: Counts,
    candidate: Counts,
) -> Result<GuardrailEvaluation> {
    policy.validate()?;
    baseline.validate("baseline")?;
    candidate.validate("candidate")?;
    let test = MixtureSprt::new(policy.alpha, policy.mixing_sd)?;
    let log_margin = policy.max_relative_increase.ln_1p();

    let total_trials = baseline.trials + candidate.trials;
    let pooled_rate = (total_trials > 0)
        .then(|| (baseline.events + candidate.events) as f64 / total_trials as f64);
    let log_ratio = LogRatio::from_counts(baseline, candidate);
    let always_valid = log_ratio.map(|lr| test.interval(lr.estimate, lr.variance));

    let evidence = GuardrailEvidence {
        baseline: baseline.into(),
        candidate: candidate.into(),
        pooled_rate,
        relative_change: relative_change(baseline, candidate),
        always_valid_interval: always_valid.and_then(relative_interval),
        fixed_horizon_interval: log_ratio
            .and_then(|lr| relative_interval(lr.interval(policy.alpha))),
        margin: policy.max_relative_increase,
        z_statistic: log_ratio
            .and_then(|lr| finite((lr.estimate - log_margin) / lr.variance.sqrt())),
        log_e_value: log_ratio
            .and_then(|lr| finite(test.log_e_value(lr.estimate, lr.variance, log_margin))),
        log_e_value_threshold: test.log_threshold(),
        adjusted: log_ratio.is_some_and(|lr| lr.adjusted),
        alpha: policy.alpha,
        mixing_sd: policy.mixing_sd,
    };

    let rate = pooled_rate.unwrap_or(0.0);
    let short_arm = [("baseline", baseline), ("candidate", candidate)]
        .into_iter()
        .find(|(_, arm)| {
            arm.trials < policy.min_trials_per_arm
                || (arm.trials as f64) * rate < policy.min_expected_events_per_arm
        });
    let enough_trials = baseline.trials >= policy.min_trials_per_arm
        && candidate.trials >= policy.min_trials_per_arm;
    let (decision, reason) = match (short_arm, always_valid) {
        // Rare events: the expected-events minimum can never be met when the metric's pooled
        // rate is ~0, which would hold a rollout forever. A candidate with no events at all in
        // its minimum trials shows no rise, whatever the baseline's handful.
        (Some(_), _) if enough_trials && candidate.events == 0 => {
            (GuardrailDecision::Pass, GuardrailReason::NoCandidateEvents)
        }
        (Some(_), _) | (_, None) => (
            GuardrailDecision::Hold,
            GuardrailReason::InsufficientSamples,
        ),
        (None, Some(interval)) if interval.lower > log_margin => {
            (GuardrailDecision::Breach, GuardrailReason::RiseAboveMargin)
        }
        (None, Some(interval)) if interval.upper < log_margin => {
            (GuardrailDecision::Pass, GuardrailReason::WithinMargin)
        }
        (None, Some(_)) => (GuardrailDecision::Hold, GuardrailReason::Inconclusive),
    };
    let message = describe(reason, short_arm.map(|(name, _)| name), policy, &evidence);
    Ok(GuardrailEvaluation {
        decision,
        reason,
        message,
        evidence,
    })
}

fn describe(
    reason: GuardrailReason,
    short_arm: Option<&str>,
    policy: &GuardrailPolicy,
    evidence: &GuardrailEvidence,
) -> String {
    let percent = |v: f64| format!("{:+.1}%", v * 100.0);
    let rate = |arm: &ArmRate| match arm.rate {
        Some(r) => format!("{:.2}% ({}/{})", r * 100.0, arm.events, arm.trials),
        None => "n/a (no trials)".to_owned(),
    };
    let rates = format!(
        "candidate rate {} vs baseline {}",
        rate(&evidence.candidate),
        rate(&evidence.baseline)
    );
    let change = match (evidence.relative_change, evidence.always_valid_interval) {
        (Some(change), Some(ci)) => format!(
            ", relative change {} (always-valid {:.0}% CI {} to {})",
            percent(change),
            (1.0 - policy.alpha) * 100.0,
            percent(ci.lower),
            percent(ci.upper)
        ),
        (None, Some(ci)) => format!(
            ", always-valid {:.0}% CI of the relative change {} to {}",
            (1.0 - policy.alpha) * 100.0,
            percent(ci.lower),
            percent(ci.upper)
        ),
        _ => String::new(),
    };
    let margin = percent(policy.max_relative_increase);
    match reason {
        GuardrailReason::InsufficientSamples => format!(
            "{}: {rates}; waiting for at least {} trials and {} expected events per arm",
            short_arm.unwrap_or("an arm"),
            policy.min_trials_per_arm,
            policy.min_expected_events_per_arm
        ),
        GuardrailReason::RiseAboveMargin => {
            format!("{rates}{change}: rise exceeds the {margin} margin")
        }
        GuardrailReason::WithinMargin => format!("{rates}{change}: within the {margin} margin"),
        GuardrailReason::NoCandidateEvents => format!(
            "{rates}: no candidate events in at least {} trials; too rare for a relative test, no rise",
            policy.min_trials_per_arm
        ),
        GuardrailReason::Inconclusive => {
            format!("{rates}{change}: not yet distinguishable from the {margin} margin")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(events: u64, trials: u64) -> Counts {
        Counts::new(events, trials).unwrap()
    }

    #[test]
    fn a_large_regression_breaches() {
        let policy = GuardrailPolicy::new(0.05).unwrap();
        let result = evaluate_guardrail(&policy, counts(1500, 10_000), counts(250, 1000)).unwrap();
        assert_eq!(
            result.decision,
            GuardrailDecision::Breach,
            "{}",
            result.message
        );
        assert_eq!(result.reason, GuardrailReason::RiseAboveMargin);
        let evidence = &result.evidence;
        assert!(evidence.log_e_value.unwrap() >= evidence.log_e_value_threshold);
        assert!(evidence.always_valid_interval.unwrap().lower > 0.05);
        assert!(result.message.contains("+66.7%"), "{}", result.message);
    }

    #[test]
    fn an_equal_rate_with_plenty_of_data_passes() {
        let policy = GuardrailPolicy::new(0.05).unwrap();
        let result =
            evaluate_guardrail(&policy, counts(30_000, 200_000), counts(29_800, 200_000)).unwrap();
        assert_eq!(
            result.decision,
            GuardrailDecision::Pass,
            "{}",
            result.message
        );
        assert!(result.evidence.always_valid_interval.unwrap().upper < 0.05);
    }

    #[test]
    fn a_noisy_crossing_of_the_threshold_holds_where_a_fixed_threshold_would_roll_back() {
        // +10% observed on 1,000 trials: a fixed "rise > 5%" rule rolls back; the evidence is weak.
        let policy = GuardrailPolicy::new(0.05).unwrap();
        let result = evaluate_guardrail(&policy, counts(1500, 10_000), counts(165, 1000)).unwrap();
        assert!(result.evidence.relative_change.unwrap() > 0.05);
        assert_eq!(result.decision, GuardrailDecision::Hold);
        assert_eq!(result.reason, GuardrailReason::Inconclusive);
    }

    #[test]
    fn below_the_minimum_sample_always_holds() {
        let policy = GuardrailPolicy::new(0.05).unwrap();
        // 60% vs 15% would be a breach, but the candidate has only 150 trials.
        let result = evaluate_guardrail(&policy, counts(1500, 10_000), counts(90, 150)).unwrap();
        assert_eq!(result.decision, GuardrailDecision::Hold);
        assert_eq!(result.reason, GuardrailReason::InsufficientSamples);
        assert!(
            result.message.starts_with("candidate"),
            "{}",
            result.message
        );
        // Rare events: 300 trials each but 1% pooled rate gives 3 expected events per arm.
        let rare = evaluate_guardrail(&policy, counts(3, 300), counts(3, 300)).unwrap();
        assert_eq!(rare.reason, GuardrailReason::InsufficientSamples);
        let empty = evaluate_guardrail(&policy, counts(0, 0), counts(0, 0)).unwrap();
        assert_eq!(empty.decision, GuardrailDecision::Hold);
    }

    #[test]
    fn a_metric_with_no_events_on_either_side_passes_once_both_arms_have_their_trials() {
        let policy = GuardrailPolicy::new(0.05).unwrap();
        let none = evaluate_guardrail(&policy, counts(0, 5_000), counts(0, 400)).unwrap();
        assert_eq!(none.decision, GuardrailDecision::Pass, "{}", none.message);
        assert_eq!(none.reason, GuardrailReason::NoCandidateEvents);
        assert!(
            none.message.contains("no candidate events"),
            "{}",
            none.message
        );
        // Too few candidate trials: still waiting.
        let early = evaluate_guardrail(&policy, counts(0, 5_000), counts(0, 50)).unwrap();
        assert_eq!(early.reason, GuardrailReason::InsufficientSamples);
        // A rare event the candidate does show is not waved through.
        let some = evaluate_guardrail(&policy, counts(1, 5_000), counts(2, 400)).unwrap();
        assert_ne!(some.decision, GuardrailDecision::Pass);
    }

    #[test]
    fn zero_candidate_events_are_handled_without_a_breach() {
        // No escalation in 2,000 interactions against a 15% baseline is more likely broken outcome
        // reporting than a miracle; the adjusted log ratio is too uncertain to pass on.
        let policy = GuardrailPolicy::new(0.05).unwrap();
        let result = evaluate_guardrail(&policy, counts(3000, 20_000), counts(0, 2000)).unwrap();
        assert!(result.evidence.adjusted);
        assert_ne!(
            result.decision,
            GuardrailDecision::Breach,
            "{}",
            result.message
        );
        assert!(result.evidence.log_e_value.unwrap().is_finite());
        assert!(result.evidence.always_valid_interval.is_some());
    }

    #[test]
    fn tuning_the_mixture_narrows_the_interval_at_the_planned_sample() {
        let default = GuardrailPolicy::new(0.05).unwrap();
        // A long canary: 100k baseline and 10k candidate interactions at about 15%.
        let tuned = default
            .with_mixing_tuned_for(0.15, 100_000, 10_000)
            .unwrap();
        assert!(tuned.mixing_sd < default.mixing_sd);
        let width = |policy: &GuardrailPolicy| {
            let evidence =
                evaluate_guardrail(policy, counts(15_000, 100_000), counts(1_500, 10_000))
                    .unwrap()
                    .evidence;
            let interval = evidence.always_valid_interval.unwrap();
            interval.upper - interval.lower
        };
        assert!(width(&tuned) < width(&default));
        assert!(default.with_mixing_tuned_for(0.0, 1, 1).is_err());
        assert!(default.with_mixing_tuned_for(0.1, 0, 1).is_err());
    }

    #[test]
    fn rates_of_one_hold_without_nan() {
        // Every interaction escalated in both arms: no variance; a telemetry defect, not a decision.
        let policy = GuardrailPolicy::new(0.05).unwrap();
        let result = evaluate_guardrail(&policy, counts(300, 300), counts(300, 300)).unwrap();
        assert_eq!(result.decision, GuardrailDecision::Hold);
        assert_eq!(result.evidence.relative_change, Some(0.0));
        assert_eq!(result.evidence.always_valid_interval, None);
        assert_eq!(result.evidence.log_e_value, None);
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert!(GuardrailPolicy::new(-1.5).is_err());
        assert!(GuardrailPolicy::new(f64::NAN).is_err());
        let mut policy = GuardrailPolicy::new(0.05).unwrap();
        policy.mixing_sd = 0.0;
        assert!(evaluate_guardrail(&policy, counts(1, 2), counts(1, 2)).is_err());
    }
}
