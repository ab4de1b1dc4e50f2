//! Experiment planning: units each variant needs to detect a minimum effect, and how long the
//! traffic takes to provide them.
//!
//! Proportions use the normal approximation with the pooled variance under the null and the
//! unpooled one under the alternative (Fleiss, Levin & Paik, *Statistical Methods for Rates and
//! Proportions*, 3rd ed., eq. 4.14 without continuity correction; statsmodels'
//! `samplesize_proportions_2indep_onetail`):
//!
//! ```text
//! n = ( z_{1-α'} · sqrt(2 p̄ (1 - p̄)) + z_{power} · sqrt(p₁(1 - p₁) + p₂(1 - p₂)) )² / (p₂ - p₁)²
//! ```
//!
//! with `p̄ = (p₁ + p₂)/2`, and means use `n = 2σ² (z_{1-α'} + z_{power})² / δ²`. `α'` is `α/2` for a
//! two-sided test and is further divided among the comparisons when several treatment variants are
//! each compared with the control (Bonferroni by default, Šidák on request): the family-wise error
//! rate stays at or below `α`. A CUPED covariate with correlation `ρ` scales the variance, hence `n`,
//! by `1 - ρ²`; an outcome observed for only a share of units (CSAT answered by 20%) divides the
//! units needed by that share.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, check_probability, dist};

/// The primary metric's baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Metric {
    /// A rate per unit (escalations per interaction).
    Proportion {
        /// The control's expected rate, strictly between 0 and 1.
        baseline_rate: f64,
    },
    /// A mean per unit (CSAT score).
    Mean {
        /// The control's expected mean (needed for a relative effect).
        baseline_mean: f64,
        /// Standard deviation of the metric per unit.
        standard_deviation: f64,
    },
}

/// The minimum detectable effect: the change the experiment must be able to detect. The sign is
/// the direction (−0.01 = one point lower); two-sided tests detect either direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", content = "value", rename_all = "camelCase")]
pub enum Effect {
    /// In the metric's units (0.01 = one percentage point for a rate).
    Absolute(f64),
    /// Relative to the baseline (0.05 = 5%).
    Relative(f64),
}

/// Sidedness of the planned test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Alternative {
    /// Detects a change in either direction.
    #[default]
    TwoSided,
    /// Detects a change in the effect's direction only.
    OneSided,
}

/// How alpha is shared among several treatment-vs-control comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Correction {
    /// α / k per comparison.
    #[default]
    Bonferroni,
    /// 1 - (1 - α)^(1/k) per comparison: exact for independent comparisons, slightly less
    /// conservative than Bonferroni.
    Sidak,
    /// α per comparison: the family-wise error rate grows with k.
    None,
}

/// Inputs of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanInputs {
    /// The primary metric and its baseline.
    pub metric: Metric,
    /// The minimum detectable effect.
    pub effect: Effect,
    /// Family-wise significance level.
    pub alpha: f64,
    /// Probability of detecting the effect when it is there.
    pub power: f64,
    /// Treatment variants, each compared with one control (≥ 1).
    pub treatment_variants: u32,
    /// Sidedness.
    pub alternative: Alternative,
    /// Multiple-comparison correction.
    pub correction: Correction,
    /// Share of variance removed by CUPED (ρ² of the pre-period covariate), in [0, 1).
    pub variance_reduction: f64,
    /// Share of units whose outcome is observed, in (0, 1].
    pub outcome_coverage: f64,
}

impl PlanInputs {
    /// Two-sided, alpha 0.05, power 0.8, one treatment, no CUPED, every outcome observed.
    pub fn new(metric: Metric, effect: Effect) -> Self {
        Self {
            metric,
            effect,
            alpha: 0.05,
            power: 0.8,
            treatment_variants: 1,
            alternative: Alternative::TwoSided,
            correction: Correction::Bonferroni,
            variance_reduction: 0.0,
            outcome_coverage: 1.0,
        }
    }
}

/// A plan: how many units each arm needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Units (interactions, users) each arm needs, control included.
    pub units_per_variant: u64,
    /// Observed outcomes each arm needs (units × outcome coverage).
    pub outcomes_per_variant: u64,
    /// Arms: the control plus the treatment variants.
    pub arms: u32,
    /// Units over all arms.
    pub total_units: u64,
    /// Treatment-vs-control comparisons alpha is shared among.
    pub comparisons: u32,
    /// Significance level of each comparison after correction.
    pub alpha_per_comparison: f64,
    /// Baseline of the metric.
    pub baseline: f64,
    /// The value the effect moves it to.
    pub target: f64,
    /// target - baseline.
    pub absolute_effect: f64,
    /// target / baseline - 1; `None` for a zero baseline.
    pub relative_effect: Option<f64>,
    /// The inputs.
    pub inputs: PlanInputs,
}

/// Units each variant needs (see the module documentation for the formulas).
pub fn plan(inputs: &PlanInputs) -> Result<Plan> {
    check_probability("alpha", inputs.alpha)?;
    check_probability("power", inputs.power)?;
    if inputs.treatment_variants == 0 {
        return Err(invalid("treatmentVariants", 0.0, "at least 1"));
    }
    let reduction = inputs.variance_reduction;
    if !(reduction.is_finite() && (0.0..1.0).contains(&reduction)) {
        return Err(invalid("varianceReduction", reduction, "in [0, 1)"));
    }
    let coverage = inputs.outcome_coverage;
    if !(coverage.is_finite() && coverage > 0.0 && coverage <= 1.0) {
        return Err(invalid("outcomeCoverage", coverage, "in (0, 1]"));
    }

    let comparisons = inputs.treatment_variants;
    let alpha_per_comparison = match inputs.correction {
        Correction::Bonferroni => inputs.alpha / f64::from(comparisons),
        Correction::Sidak => -((-inputs.alpha).ln_1p() / f64::from(comparisons)).exp_m1(),
        Correction::None => inputs.alpha,
    };
    let tails = match inputs.alternative {
        Alternative::TwoSided => 2.0,
        Alternative::OneSided => 1.0,
    };
    let z_alpha = dist::normal_ppf(1.0 - alpha_per_comparison / tails);
    let z_power = dist::normal_ppf(inputs.power);

    let (baseline, target, outcomes) = match inputs.metric {
        Metric::Proportion { baseline_rate: p1 } => {
            check_probability("baselineRate", p1)?;
            let p2 = target_value(p1, inputs.effect)?;
            check_probability("target rate (baseline + effect)", p2)?;
            let pooled = (p1 + p2) / 2.0;
            let null_sd = (2.0 * pooled * (1.0 - pooled)).sqrt();
            let alternative_sd = (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt();
            let root = z_alpha * null_sd + z_power * alternative_sd;
            (p1, p2, root * root / ((p2 - p1) * (p2 - p1)))
        }
        Metric::Mean {
            baseline_mean,
            standard_deviation: sd,
        } => {
            if !baseline_mean.is_finite() {
                return Err(invalid("baselineMean", baseline_mean, "finite"));
            }
            if !(sd.is_finite() && sd > 0.0) {
                return Err(invalid("standardDeviation", sd, "finite and positive"));
            }
            let target = target_value(baseline_mean, inputs.effect)?;
            let delta = target - baseline_mean;
            let z = z_alpha + z_power;
            (
                baseline_mean,
                target,
                2.0 * sd * sd * z * z / (delta * delta),
            )
        }
    };
    let outcomes = outcomes * (1.0 - reduction);
    let outcomes_per_variant = ceil_count(outcomes, "outcomes per variant")?;
    let units_per_variant = ceil_count(outcomes / coverage, "units per variant")?;
    let arms = comparisons + 1;
    Ok(Plan {
        units_per_variant,
        outcomes_per_variant,
        arms,
        total_units: units_per_variant.saturating_mul(u64::from(arms)),
        comparisons,
        alpha_per_comparison,
        baseline,
        target,
        // From the input itself where possible, so 0.15 - 0.01 does not print as 0.13999….
        absolute_effect: match inputs.effect {
            Effect::Absolute(delta) => delta,
            Effect::Relative(_) => target - baseline,
        },
        relative_effect: match inputs.effect {
            Effect::Relative(relative) => Some(relative),
            Effect::Absolute(_) => (baseline != 0.0).then(|| target / baseline - 1.0),
        },
        inputs: *inputs,
    })
}

fn target_value(baseline: f64, effect: Effect) -> Result<f64> {
    let target = match effect {
        Effect::Absolute(delta) => baseline + delta,
        Effect::Relative(relative) => baseline * (1.0 + relative),
    };
    let value = match effect {
        Effect::Absolute(v) | Effect::Relative(v) => v,
    };
    if !value.is_finite() || target == baseline {
        return Err(invalid(
            "effect",
            value,
            "finite, non-zero, and non-zero relative to the baseline",
        ));
    }
    Ok(target)
}

/// Rounds a sample size up to a whole count; leaves a margin for floating-point noise so an exact
/// integer such as 19,465.000000000004 is not bumped to the next one.
fn ceil_count(value: f64, what: &'static str) -> Result<u64> {
    if !value.is_finite() || value > 1e18 {
        return Err(Error::InsufficientData {
            what,
            detail: format!(
                "the required sample ({value}) is not representable; is the effect tiny?"
            ),
        });
    }
    Ok((value - 1e-9 * value.max(1.0)).ceil().max(1.0) as u64)
}

fn invalid(name: &'static str, value: f64, expected: &'static str) -> Error {
    Error::InvalidParameter {
        name,
        value,
        expected,
    }
}

/// When the arms will have collected the plan's sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Eta {
    /// Days until every arm has `unitsPerVariant` units.
    pub days: f64,
    /// Index (in `weights`) of the arm that takes longest: the one with the smallest weight.
    pub limiting_arm: usize,
    /// Units per day entering the experiment (all arms).
    pub units_per_day: f64,
    /// Share of the traffic each arm receives.
    pub shares: Vec<f64>,
}

/// Days until every arm reaches `units_per_variant`, with `units_per_day` entering the experiment
/// split by `weights` (one per arm; they need not sum to 1). With unequal weights the smallest arm
/// decides; the per-variant requirement itself assumes equal arms, so this is conservative.
pub fn estimate_eta(units_per_variant: u64, units_per_day: f64, weights: &[f64]) -> Result<Eta> {
    if !(units_per_day.is_finite() && units_per_day > 0.0) {
        return Err(invalid("unitsPerDay", units_per_day, "finite and positive"));
    }
    if weights.len() < 2 {
        return Err(invalid(
            "weights",
            weights.len() as f64,
            "one per arm, at least two arms",
        ));
    }
    if let Some(&bad) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
        return Err(invalid("weights", bad, "finite and positive"));
    }
    let total: f64 = weights.iter().sum();
    let shares: Vec<f64> = weights.iter().map(|w| w / total).collect();
    let (limiting_arm, smallest) =
        shares
            .iter()
            .copied()
            .enumerate()
            .fold((0, f64::INFINITY), |best, (i, share)| {
                if share < best.1 { (i, share) } else { best }
            });
    Ok(Eta {
        days: units_per_variant as f64 / (units_per_day * smallest),
        limiting_arm,
        units_per_day,
        shares,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worked_example_needs_15_to_20k_per_variant_and_3_to_4_days() {
        // Seed essay: 15% escalation, detect a one-point drop, alpha 0.05 two-sided, power 80%.
        let inputs = PlanInputs::new(
            Metric::Proportion {
                baseline_rate: 0.15,
            },
            Effect::Absolute(-0.01),
        );
        let plan = plan(&inputs).unwrap();
        assert!(
            (15_000..=20_000).contains(&plan.units_per_variant),
            "{plan:?}"
        );
        assert_eq!(plan.total_units, 2 * plan.units_per_variant);
        let eta = estimate_eta(plan.units_per_variant, 10_000.0, &[1.0, 1.0]).unwrap();
        assert!((3.0..=4.0).contains(&eta.days), "{eta:?}");
    }

    #[test]
    fn more_variants_share_alpha_and_need_more_units() {
        let mut inputs = PlanInputs::new(
            Metric::Proportion {
                baseline_rate: 0.15,
            },
            Effect::Relative(-0.1),
        );
        let one = plan(&inputs).unwrap();
        inputs.treatment_variants = 3;
        let three = plan(&inputs).unwrap();
        assert!((three.alpha_per_comparison - 0.05 / 3.0).abs() < 1e-15);
        assert!(three.units_per_variant > one.units_per_variant);
        assert_eq!(three.arms, 4);
        inputs.correction = Correction::Sidak;
        let sidak = plan(&inputs).unwrap();
        assert!((sidak.alpha_per_comparison - (1.0 - 0.95f64.powf(1.0 / 3.0))).abs() < 1e-15);
        assert!(sidak.units_per_variant <= three.units_per_variant);
    }

    #[test]
    fn cuped_and_partial_coverage_scale_the_sample() {
        let base = PlanInputs::new(
            Metric::Mean {
                baseline_mean: 4.1,
                standard_deviation: 1.2,
            },
            Effect::Absolute(0.05),
        );
        let plain = plan(&base).unwrap();
        let cuped = plan(&PlanInputs {
            variance_reduction: 0.36,
            ..base
        })
        .unwrap();
        let ratio = cuped.outcomes_per_variant as f64 / plain.outcomes_per_variant as f64;
        assert!((ratio - 0.64).abs() < 1e-3);
        let csat = plan(&PlanInputs {
            outcome_coverage: 0.2,
            ..base
        })
        .unwrap();
        assert_eq!(csat.outcomes_per_variant, plain.outcomes_per_variant);
        assert!(csat.units_per_variant.abs_diff(5 * plain.units_per_variant) <= 5);
    }

    #[test]
    fn eta_waits_for_the_smallest_arm() {
        let eta = estimate_eta(1000, 1000.0, &[0.9, 0.1]).unwrap();
        assert_eq!(eta.limiting_arm, 1);
        assert!((eta.days - 10.0).abs() < 1e-12);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let base = PlanInputs::new(
            Metric::Proportion {
                baseline_rate: 0.15,
            },
            Effect::Absolute(-0.01),
        );
        assert!(plan(&PlanInputs { alpha: 1.0, ..base }).is_err());
        assert!(
            plan(&PlanInputs {
                treatment_variants: 0,
                ..base
            })
            .is_err()
        );
        assert!(
            plan(&PlanInputs {
                effect: Effect::Absolute(0.0),
                ..base
            })
            .is_err()
        );
        assert!(
            plan(&PlanInputs {
                effect: Effect::Absolute(0.9),
                ..base
            })
            .is_err()
        );
        assert!(
            plan(&PlanInputs {
                effect: Effect::Absolute(1e-12),
                ..base
            })
            .is_err()
        );
        assert!(estimate_eta(10, 0.0, &[1.0, 1.0]).is_err());
        assert!(estimate_eta(10, 5.0, &[1.0]).is_err());
        assert!(estimate_eta(10, 5.0, &[1.0, -1.0]).is_err());
    }
}
