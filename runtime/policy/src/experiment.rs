//! Experiment enrolment and arm assignment.
//!
//! A request belongs to at most one running experiment, so that every interaction is attributed
//! to one arm and experiments on the same Router don't confound each other: the unit is placed in
//! one of `n` equal, mutually exclusive layers by `hash("experiments", unit)`, one per running
//! experiment (sorted by name, as the RuntimeConfig lists them). Within its experiment, the unit
//! lands in the permanent holdout with probability `holdoutShare`, otherwise in a variant by
//! weight, both from `hash(salt, unit)`. The holdout and the variants use the same draw, so
//! changing variant weights never moves a unit in or out of the holdout, and a changed salt
//! reshuffles everyone (that is what a salt is for).
use switchboard_crds::experiment::Overrides;
use switchboard_crds::runtime_config::ExperimentConfig;

use crate::hash::unit_interval;

/// Arm name reported for units in the permanent holdout.
pub const HOLDOUT_ARM: &str = "holdout";

/// Where a unit landed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assignment<'a> {
    /// The experiment.
    pub experiment: &'a str,
    /// The arm: a variant name, or [`HOLDOUT_ARM`].
    pub arm: &'a str,
    /// The arm's overrides; `None` in the holdout (it never gets updates: no overrides, no
    /// canary versions).
    pub overrides: Option<&'a Overrides>,
}

impl Assignment<'_> {
    /// Whether the unit is in the permanent holdout.
    pub fn is_holdout(&self) -> bool {
        self.overrides.is_none()
    }
}

/// The arm of `unit` in `experiment`.
pub fn assign<'a>(experiment: &'a ExperimentConfig, unit: &str) -> Assignment<'a> {
    let u = unit_interval(&[&experiment.salt, unit]);
    let holdout = experiment.holdout_share.fraction().clamp(0.0, 1.0);
    if u < holdout || experiment.variants.is_empty() {
        return Assignment {
            experiment: &experiment.name,
            arm: HOLDOUT_ARM,
            overrides: None,
        };
    }
    // Rescale the rest of the interval onto the variants' cumulative weights.
    let v = (u - holdout) / (1.0 - holdout);
    let total: f64 = experiment
        .variants
        .iter()
        .map(|v| f64::from(v.weight.max(0)))
        .sum();
    let mut cumulative = 0.0;
    let mut chosen = experiment.variants.last();
    for variant in &experiment.variants {
        cumulative += f64::from(variant.weight.max(0)) / total.max(f64::MIN_POSITIVE);
        if v < cumulative {
            chosen = Some(variant);
            break;
        }
    }
    let variant = chosen.unwrap_or(&experiment.variants[0]);
    Assignment {
        experiment: &experiment.name,
        arm: &variant.name,
        overrides: Some(&variant.overrides),
    }
}

/// The experiment (if any) that `unit` is enrolled in, and its arm. `None` when there is no
/// running experiment or no unit id (anonymous traffic is never enrolled: it could not be
/// assigned consistently).
pub fn enrol<'a>(
    experiments: &'a [ExperimentConfig],
    unit: Option<&str>,
) -> Option<Assignment<'a>> {
    let unit = unit.filter(|u| !u.is_empty())?;
    if experiments.is_empty() {
        return None;
    }
    let layer = unit_interval(&["experiments", unit]);
    let index = ((layer * experiments.len() as f64) as usize).min(experiments.len() - 1);
    Some(assign(&experiments[index], unit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_crds::experiment::AssignmentUnit;
    use switchboard_crds::runtime_config::VariantConfig;
    use switchboard_crds::units::Percent;

    fn experiment(name: &str, holdout: f64, weights: &[(&str, i32)]) -> ExperimentConfig {
        ExperimentConfig {
            name: name.into(),
            unit: AssignmentUnit::User,
            salt: format!("{name}-salt"),
            holdout_share: Percent::from_fraction(holdout),
            control: weights[0].0.into(),
            variants: weights
                .iter()
                .map(|(n, w)| VariantConfig {
                    name: (*n).into(),
                    weight: *w,
                    overrides: Overrides::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn shares_follow_holdout_and_weights() {
        let e = experiment("tone", 0.1, &[("control", 30), ("treatment", 70)]);
        let n = 30_000;
        let (mut h, mut c, mut t) = (0, 0, 0);
        for i in 0..n {
            match assign(&e, &format!("user-{i}")).arm {
                HOLDOUT_ARM => h += 1,
                "control" => c += 1,
                _ => t += 1,
            }
        }
        let share = |k: i32| f64::from(k) / f64::from(n);
        assert!((share(h) - 0.10).abs() < 0.01, "holdout {}", share(h));
        assert!((share(c) - 0.27).abs() < 0.015, "control {}", share(c));
        assert!((share(t) - 0.63).abs() < 0.015, "treatment {}", share(t));
    }

    #[test]
    fn stable_and_weight_changes_keep_the_holdout() {
        let before = experiment("tone", 0.2, &[("control", 50), ("treatment", 50)]);
        let after = experiment("tone", 0.2, &[("control", 10), ("treatment", 90)]);
        for i in 0..2_000 {
            let unit = format!("u{i}");
            assert_eq!(assign(&before, &unit), assign(&before, &unit));
            assert_eq!(
                assign(&before, &unit).is_holdout(),
                assign(&after, &unit).is_holdout()
            );
        }
    }

    #[test]
    fn holdout_has_no_overrides() {
        let e = experiment("x", 1.0, &[("control", 100)]);
        let a = assign(&e, "anyone");
        assert_eq!(a.arm, HOLDOUT_ARM);
        assert!(a.is_holdout());
    }

    #[test]
    fn enrolment_is_exclusive_and_needs_a_unit() {
        let exps = vec![
            experiment("a", 0.0, &[("control", 100)]),
            experiment("b", 0.0, &[("control", 100)]),
        ];
        assert!(enrol(&exps, None).is_none());
        assert!(enrol(&exps, Some("")).is_none());
        assert!(enrol(&[], Some("u")).is_none());
        let in_a = (0..4_000)
            .filter(|i| enrol(&exps, Some(&i.to_string())).map(|a| a.experiment) == Some("a"))
            .count();
        assert!((1_800..2_200).contains(&in_a), "{in_a}");
    }
}
