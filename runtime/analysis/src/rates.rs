//! A candidate's rate against a baseline's, from counts: relative change with a confidence interval
//! on the log risk ratio (Katz et al. 1978), and the fixed-horizon non-inferiority test used for
//! promotion at a planned horizon.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Counts, Interval, Result, check_probability, dist, finite};

/// The log risk ratio ln(p_candidate / p_baseline) and its delta-method variance
/// `1/x_c - 1/n_c + 1/x_b - 1/n_b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LogRatio {
    pub estimate: f64,
    pub variance: f64,
    /// 0.5 was added to every count because an arm had no events (the log-adjusted estimator of
    /// statsmodels' `confint_proportions_2indep(method="log-adjusted")`).
    pub adjusted: bool,
}

impl LogRatio {
    /// `None` when an arm has no trials.
    pub(crate) fn from_counts(baseline: Counts, candidate: Counts) -> Option<Self> {
        if baseline.trials == 0 || candidate.trials == 0 {
            return None;
        }
        let adjusted = baseline.events == 0 || candidate.events == 0;
        let shift = if adjusted { 0.5 } else { 0.0 };
        let (xb, nb) = (
            baseline.events as f64 + shift,
            baseline.trials as f64 + shift,
        );
        let (xc, nc) = (
            candidate.events as f64 + shift,
            candidate.trials as f64 + shift,
        );
        Some(Self {
            estimate: (xc / nc).ln() - (xb / nb).ln(),
            variance: (1.0 / xc - 1.0 / nc + 1.0 / xb - 1.0 / nb).max(0.0),
            adjusted,
        })
    }

    /// Two-sided interval for the log ratio at level 1 - alpha.
    pub(crate) fn interval(&self, alpha: f64) -> Interval {
        let half = dist::normal_ppf(1.0 - alpha / 2.0) * self.variance.sqrt();
        Interval {
            lower: self.estimate - half,
            upper: self.estimate + half,
        }
    }
}

/// Relative change from log-ratio bounds; `None` unless both are finite.
pub(crate) fn relative_interval(log_interval: Interval) -> Option<Interval> {
    let relative = log_interval.map(f64::exp_m1);
    (relative.lower.is_finite() && relative.upper.is_finite()).then_some(relative)
}

/// Counts and rate of one arm, as reported in evidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArmRate {
    /// Trials with the event.
    pub events: u64,
    /// All trials.
    pub trials: u64,
    /// events / trials; `None` without trials.
    pub rate: Option<f64>,
}

impl From<Counts> for ArmRate {
    fn from(counts: Counts) -> Self {
        Self {
            events: counts.events,
            trials: counts.trials,
            rate: counts.rate(),
        }
    }
}

/// Candidate vs baseline at a fixed horizon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateComparison {
    /// The baseline arm.
    pub baseline: ArmRate,
    /// The candidate arm.
    pub candidate: ArmRate,
    /// candidate rate - baseline rate.
    pub absolute_change: Option<f64>,
    /// candidate rate / baseline rate - 1 (0.05 = 5% higher); `None` when the baseline rate is 0.
    pub relative_change: Option<f64>,
    /// Two-sided 1 - alpha interval of the relative change, from the log risk ratio.
    pub interval: Option<Interval>,
    /// Standard error of the log risk ratio.
    pub log_ratio_standard_error: Option<f64>,
    /// 0.5 was added to each count because an arm had no events.
    pub adjusted: bool,
    /// Significance level of the interval.
    pub alpha: f64,
}

/// Compares a candidate's rate with a baseline's: relative change with a two-sided 1 - alpha
/// interval from the log risk ratio (Katz), adjusted by 0.5 per count when an arm has no events.
pub fn compare_rates(baseline: Counts, candidate: Counts, alpha: f64) -> Result<RateComparison> {
    check_probability("alpha", alpha)?;
    baseline.validate("baseline")?;
    candidate.validate("candidate")?;
    let log_ratio = LogRatio::from_counts(baseline, candidate);
    Ok(RateComparison {
        baseline: baseline.into(),
        candidate: candidate.into(),
        absolute_change: baseline.rate().zip(candidate.rate()).map(|(b, c)| c - b),
        relative_change: relative_change(baseline, candidate),
        interval: log_ratio.and_then(|lr| relative_interval(lr.interval(alpha))),
        log_ratio_standard_error: log_ratio.and_then(|lr| finite(lr.variance.sqrt())),
        adjusted: log_ratio.is_some_and(|lr| lr.adjusted),
        alpha,
    })
}

pub(crate) fn relative_change(baseline: Counts, candidate: Counts) -> Option<f64> {
    match (baseline.rate(), candidate.rate()) {
        (Some(b), Some(c)) if b > 0.0 => Some(c / b - 1.0),
        _ => None,
    }
}

/// Fixed-horizon non-inferiority of a candidate's rate (lower is better, e.g. escalations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NonInferiority {
    /// The tolerated relative rise (0.05 = the candidate may be up to 5% worse).
    pub margin: f64,
    /// Observed relative change.
    pub relative_change: Option<f64>,
    /// One-sided 1 - alpha upper confidence bound of the relative change.
    pub upper_bound: Option<f64>,
    /// z statistic of ln(ratio) against ln(1 + margin); negative supports non-inferiority.
    pub statistic: Option<f64>,
    /// One-sided p-value of H0: ratio >= 1 + margin.
    pub p_value: Option<f64>,
    /// The upper bound lies below the margin.
    pub non_inferior: bool,
    /// One-sided significance level.
    pub alpha: f64,
}

/// Non-inferiority for promotion: the candidate is non-inferior when the one-sided 1 - alpha upper
/// bound of its relative change (log risk ratio) lies below `margin`. Use at a pre-planned horizon;
/// a guardrail that is looked at repeatedly uses [`crate::evaluate_guardrail`], whose `Pass` is the
/// always-valid version of the same statement.
pub fn non_inferiority(
    baseline: Counts,
    candidate: Counts,
    margin: f64,
    alpha: f64,
) -> Result<NonInferiority> {
    check_probability("alpha", alpha)?;
    check_margin(margin)?;
    baseline.validate("baseline")?;
    candidate.validate("candidate")?;
    let log_ratio = LogRatio::from_counts(baseline, candidate);
    let log_margin = margin.ln_1p();
    let upper =
        log_ratio.map(|lr| lr.estimate + dist::normal_ppf(1.0 - alpha) * lr.variance.sqrt());
    let statistic =
        log_ratio.and_then(|lr| finite((lr.estimate - log_margin) / lr.variance.sqrt()));
    let upper_bound = upper.map(f64::exp_m1).and_then(finite);
    Ok(NonInferiority {
        margin,
        relative_change: relative_change(baseline, candidate),
        upper_bound,
        statistic,
        p_value: statistic.map(dist::normal_cdf),
        non_inferior: upper.is_some_and(|u| u < log_margin),
        alpha,
    })
}

pub(crate) fn check_margin(margin: f64) -> Result<()> {
    if margin.is_finite() && margin > -1.0 {
        Ok(())
    } else {
        Err(crate::Error::InvalidParameter {
            name: "margin",
            value: margin,
            expected: "a finite relative change above -1",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_events_use_the_adjusted_estimator_and_never_produce_nan() {
        let result = compare_rates(
            Counts::new(0, 1000).unwrap(),
            Counts::new(3, 900).unwrap(),
            0.05,
        )
        .unwrap();
        assert!(result.adjusted);
        assert_eq!(result.relative_change, None);
        let interval = result.interval.unwrap();
        assert!(interval.lower.is_finite() && interval.upper > 0.0);
        assert!(result.log_ratio_standard_error.unwrap().is_finite());
    }

    #[test]
    fn no_trials_gives_no_interval() {
        let result =
            compare_rates(Counts::new(0, 0).unwrap(), Counts::new(0, 0).unwrap(), 0.05).unwrap();
        assert_eq!(result.interval, None);
        assert_eq!(result.relative_change, None);
    }

    #[test]
    fn rejects_impossible_counts() {
        assert!(Counts::new(5, 4).is_err());
        let bad = Counts {
            events: 5,
            trials: 4,
        };
        assert!(compare_rates(bad, bad, 0.05).is_err());
        assert!(
            non_inferiority(
                Counts::new(1, 4).unwrap(),
                Counts::new(1, 4).unwrap(),
                -1.0,
                0.05
            )
            .is_err()
        );
    }
}
