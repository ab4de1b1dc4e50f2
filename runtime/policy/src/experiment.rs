//! Experiment allocation, enrolment and arm assignment.
//!
//! A Router has one experiment layer of [`LAYER_BUCKETS`] buckets, and a unit's bucket is
//! `hash("experiments", unit id)`. Every running Experiment owns a disjoint range of the layer,
//! as wide as its `spec.traffic`, given by [`allocate`] when it starts and kept until it ends
//! (Google's overlapping-experiment layers, GrowthBook's namespaces): starting, stopping or
//! re-weighting other experiments never moves a unit in or out of a running one, and a unit is in
//! at most one experiment, so every interaction is attributed to one arm.
//!
//! Each Experiment is randomised by its own unit (`spec.unit`: the request's user, account or
//! conversation id); a request without that id is not enrolled in it (and counted as such by the
//! caller). Experiments are tried in the order they started, so an older experiment's units are
//! never taken by a newer one even when their units differ in kind.
//!
//! Within its experiment, the unit lands in the experiment's holdout with probability
//! `holdoutShare`, otherwise in a variant by weight, both from `hash(salt, unit)`, a hash
//! independent of the layer's. The holdout and the variants use the same draw, so changing
//! variant weights never moves a unit in or out of the holdout, and a changed salt reshuffles
//! everyone (that is what a salt is for).
use switchboard_crds::experiment::{AssignmentUnit, LAYER_BUCKETS, LayerRange, Overrides};
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
    /// The unit id the experiment randomised (its `spec.unit` of the request).
    pub unit: &'a str,
}

impl Assignment<'_> {
    /// Whether the unit is in the permanent holdout.
    pub fn is_holdout(&self) -> bool {
        self.overrides.is_none()
    }
}

/// The ids a request carries, one per kind of unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnitIds<'a> {
    /// The end user.
    pub user: Option<&'a str>,
    /// The customer account.
    pub account: Option<&'a str>,
    /// The conversation.
    pub conversation: Option<&'a str>,
}

impl<'a> UnitIds<'a> {
    /// The id of `kind`, when the request has a non-empty one.
    pub fn get(&self, kind: AssignmentUnit) -> Option<&'a str> {
        match kind {
            AssignmentUnit::User => self.user,
            AssignmentUnit::Account => self.account,
            AssignmentUnit::Conversation => self.conversation,
        }
        .filter(|id| !id.is_empty())
    }
}

/// The request field that carries a kind of unit (what the caller must send to be enrolled).
pub fn unit_field(kind: AssignmentUnit) -> &'static str {
    match kind {
        AssignmentUnit::User => "userId",
        AssignmentUnit::Account => "accountId",
        AssignmentUnit::Conversation => "conversationId",
    }
}

/// Whether the unit `id` (the request's most durable id) is in the Router's permanent holdout
/// of `share` (0..=1): `hash("router-holdout", id) < share`, independent of the experiment layer
/// and of every experiment's salt, and stable for as long as the share is.
pub fn in_router_holdout(share: f64, id: &str) -> bool {
    unit_interval(&["router-holdout", id]) < share
}

/// The layer bucket of a unit id, in `0..LAYER_BUCKETS`.
pub fn layer_bucket(unit: &str) -> u32 {
    let u = unit_interval(&["experiments", unit]);
    ((u * f64::from(LAYER_BUCKETS)) as u32).min(LAYER_BUCKETS - 1)
}

/// The arm of `unit` in `experiment` (whether or not the unit is in its range).
pub fn assign<'a>(experiment: &'a ExperimentConfig, unit: &'a str) -> Assignment<'a> {
    let u = unit_interval(&[&experiment.salt, unit]);
    let holdout = experiment.holdout_share.fraction().clamp(0.0, 1.0);
    if u < holdout || experiment.variants.is_empty() {
        return Assignment {
            experiment: &experiment.name,
            arm: HOLDOUT_ARM,
            overrides: None,
            unit,
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
        unit,
    }
}

/// What enrolment found for one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Enrolment<'a> {
    /// The experiment and arm, when the request is enrolled.
    pub assignment: Option<Assignment<'a>>,
    /// Experiments tried before (or instead of) that one whose unit id the request lacks: not
    /// enrolled in them for want of the id.
    pub missing_unit: Vec<&'a ExperimentConfig>,
}

/// The experiment (if any) the request with `ids` is enrolled in, and its arm: the first of
/// `experiments` (in the order they started) whose range holds the bucket of the request's id of
/// the experiment's unit kind.
pub fn enrol<'a>(experiments: &'a [ExperimentConfig], ids: UnitIds<'a>) -> Enrolment<'a> {
    let mut out = Enrolment::default();
    // One layer hash per kind of unit, whatever the number of experiments.
    let mut buckets: [Option<u32>; 3] = [None; 3];
    for experiment in experiments {
        let Some(unit) = ids.get(experiment.unit) else {
            out.missing_unit.push(experiment);
            continue;
        };
        let slot = experiment.unit as usize;
        let bucket = *buckets[slot].get_or_insert_with(|| layer_bucket(unit));
        if experiment.range.contains(bucket) {
            out.assignment = Some(assign(experiment, unit));
            break;
        }
    }
    out
}

/// No free range of the layer is as large as an Experiment's traffic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Router's experiment layer has no free range of {wanted} buckets ({wanted_percent}); the largest free range is {largest_free} buckets ({largest_percent}) and {free} are free in all; lower spec.traffic or stop another Experiment of this Router"
)]
pub struct LayerFull {
    /// Buckets wanted.
    pub wanted: u32,
    /// The largest free range.
    pub largest_free: u32,
    /// Free buckets in all (possibly fragmented).
    pub free: u32,
    /// `wanted` as a percent of the layer.
    pub wanted_percent: String,
    /// `largest_free` as a percent of the layer.
    pub largest_percent: String,
}

fn percent(buckets: u32) -> String {
    format!("{}%", f64::from(buckets) * 100.0 / f64::from(LAYER_BUCKETS))
}

/// Buckets a traffic share (a fraction of the layer) takes: rounded, at least one.
pub fn buckets_for(fraction: f64) -> u32 {
    let n = (fraction.clamp(0.0, 1.0) * f64::from(LAYER_BUCKETS)).round() as u32;
    n.clamp(1, LAYER_BUCKETS)
}

/// A range of `fraction` of the layer that overlaps none of `occupied`: the smallest free gap
/// that fits (lowest first among equals), so that large gaps stay for large experiments.
pub fn allocate(fraction: f64, occupied: &[LayerRange]) -> Result<LayerRange, LayerFull> {
    let wanted = buckets_for(fraction);
    let mut taken: Vec<LayerRange> = occupied.iter().copied().filter(|r| !r.is_empty()).collect();
    taken.sort();
    let mut gaps = Vec::new();
    let mut at = 0;
    for r in &taken {
        if r.start > at {
            gaps.push(LayerRange {
                start: at,
                end: r.start,
            });
        }
        at = at.max(r.end);
    }
    if at < LAYER_BUCKETS {
        gaps.push(LayerRange {
            start: at,
            end: LAYER_BUCKETS,
        });
    }
    gaps.iter()
        .filter(|g| g.len() >= wanted)
        .min_by_key(|g| (g.len(), g.start))
        .map(|g| LayerRange {
            start: g.start,
            end: g.start + wanted,
        })
        .ok_or_else(|| {
            let largest_free = gaps.iter().map(LayerRange::len).max().unwrap_or(0);
            LayerFull {
                wanted,
                largest_free,
                free: gaps.iter().map(LayerRange::len).sum(),
                wanted_percent: percent(wanted),
                largest_percent: percent(largest_free),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_crds::runtime_config::VariantConfig;
    use switchboard_crds::units::Percent;

    fn experiment(name: &str, holdout: f64, weights: &[(&str, i32)]) -> ExperimentConfig {
        ExperimentConfig {
            name: name.into(),
            unit: AssignmentUnit::User,
            salt: format!("{name}-salt"),
            range: LayerRange {
                start: 0,
                end: LAYER_BUCKETS,
            },
            segments: Vec::new(),
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

    fn user(id: &str) -> UnitIds<'_> {
        UnitIds {
            user: Some(id),
            ..UnitIds::default()
        }
    }

    #[test]
    fn shares_follow_holdout_and_weights() {
        let e = experiment("tone", 0.1, &[("control", 30), ("treatment", 70)]);
        let n = 30_000;
        let (mut h, mut c, mut t) = (0, 0, 0);
        for i in 0..n {
            let unit = format!("user-{i}");
            match assign(&e, &unit).arm {
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
    fn enrolment_follows_the_ranges_and_needs_the_experiments_unit() {
        let mut a = experiment("a", 0.0, &[("control", 100)]);
        a.range = LayerRange {
            start: 0,
            end: 2_000,
        };
        let mut b = experiment("b", 0.0, &[("control", 100)]);
        b.range = LayerRange {
            start: 2_000,
            end: 3_000,
        };
        b.unit = AssignmentUnit::Account;
        let exps = vec![a, b];
        assert!(enrol(&exps, UnitIds::default()).assignment.is_none());
        assert_eq!(enrol(&exps, UnitIds::default()).missing_unit.len(), 2);
        assert!(enrol(&exps, user("")).assignment.is_none());
        assert!(enrol(&[], user("u")).assignment.is_none());
        let n = 20_000;
        let (mut in_a, mut in_b, mut b_missing) = (0, 0, 0);
        for i in 0..n {
            let id = i.to_string();
            let account = format!("acct-{}", i % 5_000);
            let e = enrol(
                &exps,
                UnitIds {
                    user: Some(&id),
                    account: (i % 2 == 0).then_some(account.as_str()),
                    conversation: None,
                },
            );
            match e.assignment.map(|a| (a.experiment, a.unit)) {
                Some(("a", unit)) => {
                    assert_eq!(unit, id);
                    in_a += 1;
                }
                Some(("b", unit)) => {
                    assert_eq!(unit, account);
                    in_b += 1;
                }
                _ => {}
            }
            b_missing += e.missing_unit.iter().filter(|x| x.name == "b").count();
        }
        // a: 20% of users; b: 10% of the accounts of the other 80%, on half the requests.
        let share = |k: usize| k as f64 / f64::from(n);
        assert!((share(in_a) - 0.20).abs() < 0.015, "a {}", share(in_a));
        assert!((share(in_b) - 0.04).abs() < 0.015, "b {}", share(in_b));
        assert!(
            (share(b_missing) - 0.40).abs() < 0.02,
            "{}",
            share(b_missing)
        );
    }

    #[test]
    fn allocation_takes_the_smallest_gap_that_fits_and_says_when_the_layer_is_full() {
        let r = |start, end| LayerRange { start, end };
        assert_eq!(allocate(0.25, &[]).unwrap(), r(0, 2_500));
        assert_eq!(allocate(1.0, &[]).unwrap(), r(0, 10_000));
        // Gaps: [1000, 2000) and [5000, 10000): 10% fits the small one.
        let taken = [r(0, 1_000), r(2_000, 5_000)];
        assert_eq!(allocate(0.1, &taken).unwrap(), r(1_000, 2_000));
        assert_eq!(allocate(0.3, &taken).unwrap(), r(5_000, 8_000));
        let full = allocate(0.6, &taken).unwrap_err();
        assert_eq!(
            (full.wanted, full.largest_free, full.free),
            (6_000, 5_000, 6_000)
        );
        assert!(
            full.to_string()
                .contains("largest free range is 5000 buckets (50%)")
        );
        assert!(allocate(0.01, &[r(0, 10_000)]).is_err());
        assert_eq!(buckets_for(0.00001), 1);
    }

    /// The operator's life of a Router's experiments, replayed: experiments start (allocated
    /// against the running ones), stop and are re-weighted in a pseudo-random order; after every
    /// step every unit of a still-running experiment is still in it, in the same arm (only a
    /// re-weighting of its own experiment moves it, and never across the holdout), and in no
    /// other experiment.
    #[test]
    fn no_unit_of_a_running_experiment_ever_moves() {
        let units: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
        let mut running: Vec<ExperimentConfig> = Vec::new();
        let mut before: Vec<Option<(String, String)>> = vec![None; units.len()];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut started, mut refused, mut kept) = (0, 0, 0_u64);
        for step in 0..40 {
            let roll = next() % 10;
            let mut reweighted = None;
            if running.len() > 1 && roll < 4 {
                let i = (next() as usize) % running.len();
                running.remove(i);
            } else if !running.is_empty() && roll < 6 {
                let i = (next() as usize) % running.len();
                let w = 10 + (next() % 80) as i32;
                running[i].variants[0].weight = w;
                running[i].variants[1].weight = 100 - w;
                reweighted = Some(running[i].name.clone());
            } else {
                let fraction = [0.05, 0.1, 0.2, 0.25, 0.5][(next() % 5) as usize];
                let occupied: Vec<LayerRange> = running.iter().map(|x| x.range).collect();
                match allocate(fraction, &occupied) {
                    Ok(range) => {
                        assert!(occupied.iter().all(|o| !o.overlaps(&range)));
                        let mut x = experiment(
                            &format!("x{step}"),
                            0.05,
                            &[("control", 50), ("treatment", 50)],
                        );
                        x.range = range;
                        running.push(x);
                        started += 1;
                    }
                    Err(_) => refused += 1,
                }
            }
            for (unit, previous) in units.iter().zip(before.iter_mut()) {
                let now = enrol(&running, user(unit))
                    .assignment
                    .map(|a| (a.experiment.to_owned(), a.arm.to_owned()));
                if let Some((experiment, arm)) = previous.as_ref()
                    && running.iter().any(|x| &x.name == experiment)
                {
                    let (e, a) = now.as_ref().expect("a running experiment lost a unit");
                    assert_eq!(e, experiment, "step {step}: {unit} changed experiment");
                    if reweighted.as_ref() == Some(experiment) {
                        assert_eq!(a == HOLDOUT_ARM, arm == HOLDOUT_ARM, "{unit}");
                    } else {
                        assert_eq!(a, arm, "step {step}: {unit} changed arm");
                    }
                    kept += 1;
                }
                *previous = now;
            }
        }
        assert!(
            started >= 8 && refused >= 1,
            "{started} started, {refused} refused"
        );
        assert!(kept > 500_000, "only {kept} unit-steps checked");
    }

    #[test]
    fn arms_never_change_while_weights_stay() {
        let mut a = experiment("a", 0.1, &[("control", 34), ("t1", 33), ("t2", 33)]);
        a.range = LayerRange {
            start: 0,
            end: 5_000,
        };
        let mut b = experiment("b", 0.0, &[("control", 50), ("t", 50)]);
        b.range = LayerRange {
            start: 5_000,
            end: 7_500,
        };
        let before: Vec<_> = (0..20_000)
            .map(|i| {
                let u = format!("u{i}");
                enrol(std::slice::from_ref(&a), user(&u))
                    .assignment
                    .map(|x| x.arm.to_owned())
            })
            .collect();
        // b starts after a: none of a's units changes arm or leaves.
        let both = vec![a.clone(), b];
        for (i, arm) in before.iter().enumerate() {
            let u = format!("u{i}");
            let now = enrol(&both, user(&u)).assignment;
            if let Some(arm) = arm {
                assert_eq!(
                    now.map(|x| (x.experiment, x.arm.to_owned())),
                    Some(("a", arm.clone()))
                );
            }
        }
    }
}
