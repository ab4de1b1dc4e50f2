//! Statistics for guardrails and experiments: pure, no I/O.
//!
//! The operator's analysis loop reads per-variant counts and sums (from Prometheus), calls into this
//! crate, and writes what comes back into CRD status. Every result type is `Serialize` +
//! `JsonSchema` with camelCase fields, and never holds NaN or infinity (a quantity that cannot be
//! computed is `None`), so it can be embedded in a status subresource as is.
//!
//! - [`rates`]: candidate vs baseline rate from counts: relative change with a log-risk-ratio
//!   interval, fixed-horizon non-inferiority.
//! - [`sequential`]: the mixture SPRT (normal mixture over the log rate ratio) behind always-valid
//!   intervals and e-values, safe to re-evaluate at every analysis interval.
//! - [`guardrail`]: "the candidate's rate must not rise more than X% relative" → Breach / Hold /
//!   Pass, with a minimum-sample rule and the evidence.
//! - [`planning`]: sample size per variant and ETA.
//! - [`experiment`]: differences of means and proportions, ratio metrics by the delta method,
//!   CUPED from sufficient statistics, sample-ratio-mismatch test.
//! - [`logistic`]: weighted logistic regression, Brier score, log loss, reliability curve
//!   (the evidence model, the router's learned difficulty model).
//! - [`dist`]: the distribution functions underneath (normal, Student's t, chi-square).
//!
//! `docs/statistics.md` explains the choices; `tests/fixtures` holds scipy/statsmodels reference
//! values produced by `hack/reference/analysis_fixtures.py`.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod dist;
pub mod experiment;
pub mod guardrail;
pub mod logistic;
pub mod planning;
pub mod rates;
pub mod sequential;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use experiment::{
    ArmUnits, CupedArm, CupedEstimate, CupedMoments, Estimate, ExperimentUnits, Moments,
    RatioMoments, SampleRatioMismatch, cuped_difference, difference_of_means,
    difference_of_proportions, difference_of_ratios, holm, sample_ratio_mismatch,
    sequential_sample_ratio_mismatch,
};
pub use guardrail::{
    GuardrailDecision, GuardrailEvaluation, GuardrailEvidence, GuardrailPolicy, GuardrailReason,
    evaluate_guardrail,
};
pub use planning::{
    Alternative, Correction, Effect, Eta, Metric, Plan, PlanInputs, estimate_eta, plan,
};
pub use rates::{NonInferiority, RateComparison, compare_rates, non_inferiority};
pub use sequential::MixtureSprt;

/// Invalid input to one of the statistics. Never raised for data that merely is too small to
/// decide on: that is a `Hold` or a `None`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A parameter is outside its domain.
    #[error("{name} must be {expected}, got {value}")]
    InvalidParameter {
        /// The parameter's name as the caller knows it.
        name: &'static str,
        /// The value given.
        value: f64,
        /// The domain, in words.
        expected: &'static str,
    },
    /// More events than trials in one arm.
    #[error("{arm}: events ({events}) exceed trials ({trials})")]
    EventsExceedTrials {
        /// Which arm (baseline, candidate, control, treatment, or an index).
        arm: String,
        /// Events counted.
        events: u64,
        /// Trials counted.
        trials: u64,
    },
    /// Not enough data for the quantity asked for (e.g. a variance from one unit).
    #[error("{what}: {detail}")]
    InsufficientData {
        /// The quantity.
        what: &'static str,
        /// What is missing.
        detail: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Events out of trials for one arm (e.g. escalations out of interactions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Trials with the event (e.g. escalated interactions).
    pub events: u64,
    /// All trials (e.g. interactions with a known outcome).
    pub trials: u64,
}

impl Counts {
    /// Counts, checked: events cannot exceed trials.
    pub fn new(events: u64, trials: u64) -> Result<Self> {
        let counts = Self { events, trials };
        counts.validate("counts")?;
        Ok(counts)
    }

    /// The observed rate, `None` without trials.
    pub fn rate(&self) -> Option<f64> {
        (self.trials > 0).then(|| self.events as f64 / self.trials as f64)
    }

    pub(crate) fn validate(&self, arm: &str) -> Result<()> {
        if self.events > self.trials {
            return Err(Error::EventsExceedTrials {
                arm: arm.to_owned(),
                events: self.events,
                trials: self.trials,
            });
        }
        Ok(())
    }
}

/// A two-sided interval. Bounds may be infinite only transiently inside computations; types that
/// are serialized hold finite bounds (see each field's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interval {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
}

impl Interval {
    /// Whether `value` lies inside the closed interval.
    pub fn contains(&self, value: f64) -> bool {
        self.lower <= value && value <= self.upper
    }

    fn map(self, f: impl Fn(f64) -> f64) -> Self {
        Self {
            lower: f(self.lower),
            upper: f(self.upper),
        }
    }
}

/// Checks a significance level (or a tail probability such as 1 - power): 0 < value < 1.
pub(crate) fn check_probability(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            value,
            expected: "strictly between 0 and 1",
        })
    }
}

/// Keeps a value for serialization only if it is finite.
pub(crate) fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}
