//! Monte Carlo checks of the Experiment analysis as the controller runs it: simulated units go
//! through [`evaluate`] (allocation, unit-level delta-method comparison, Holm, CUPED, the
//! sample-ratio check, the sequential guardrail, the settle window), and the decisions are
//! counted. docs/statistics.md reports the table `report` prints:
//! `cargo test -p switchboard-operator --lib experiment::simulation -- --nocapture`.
//!
//! Units have their own escalation propensity (uniform on `[base/2, 3·base/2]`) and 1 to 4
//! interactions, so a unit's interactions are correlated, the case a per-interaction analysis gets
//! wrong. Every design runs [`runs`] experiments; a rate is within tolerance when it is at most
//! the nominal one plus three binomial standard errors.

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use switchboard_analysis::{Counts, CupedArm, CupedMoments, RatioMoments};
use switchboard_crds::{
    Metric,
    experiment::{
        ExperimentDecision, ExperimentPhase, ExperimentSpec, ExperimentStatus, LayerRange,
    },
};

use super::analysis::{ArmData, ExperimentInput, HOLDOUT, evaluate};

/// Simulated experiments per design (`SIMULATION_RUNS` overrides, for tighter numbers).
fn runs() -> u32 {
    std::env::var("SIMULATION_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000)
}

/// SplitMix64: a deterministic stream for the simulations (here and in the analysis' tests).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(super) fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    pub(super) fn binomial(&mut self, n: u32, p: f64) -> u32 {
        (0..n).filter(|_| self.bernoulli(p)).count() as u32
    }
}

/// How units behave.
#[derive(Clone, Copy)]
struct Population {
    /// Mean escalation rate.
    base: f64,
    /// Added to a unit's propensity in the treatment arms.
    effect: f64,
    /// Interactions per unit: 1..=this, uniformly.
    max_interactions: u32,
    /// Escalations arrive up to this long after the answer (uniformly); 0: at once.
    max_delay_hours: f64,
    /// Interactions arrive uniformly over this many hours before the analysis.
    enrolment_hours: f64,
}

/// One simulated unit as the outcome store sees it at the analysis.
#[derive(Clone, Copy)]
struct Unit {
    interactions: u64,
    /// Settled escalations and interactions (what the comparison reads).
    events: f64,
    trials: f64,
    /// Pre-period escalation rate (CUPED's covariate).
    pre: f64,
    /// CSAT ratings, and low ones (the guardrail, per interaction).
    rated: u64,
    csat_low: u64,
}

fn simulate_unit(rng: &mut Rng, pop: Population, treated: bool, settle_hours: f64) -> Unit {
    let propensity = pop.base * (0.5 + rng.uniform());
    let p = (propensity + if treated { pop.effect } else { 0.0 }).clamp(0.0, 1.0);
    let k = 1 + (rng.uniform() * f64::from(pop.max_interactions)) as u32;
    let age = rng.uniform() * pop.enrolment_hours;
    let mut unit = Unit {
        interactions: u64::from(k),
        events: 0.0,
        trials: 0.0,
        pre: 0.0,
        rated: 0,
        csat_low: 0,
    };
    for _ in 0..k {
        let escalated = rng.bernoulli(p);
        let arrived = rng.uniform() * pop.max_delay_hours <= age;
        if age >= settle_hours {
            unit.trials += 1.0;
            unit.events += f64::from(u8::from(escalated && arrived));
        }
        // A CSAT rating on half the interactions, low with the same propensity.
        if rng.bernoulli(0.5) {
            unit.rated += 1;
            unit.csat_low += u64::from(rng.bernoulli(p));
        }
    }
    // Pre-period: 10 interactions at the unit's own propensity.
    unit.pre = (0..10).filter(|_| rng.bernoulli(propensity)).count() as f64 / 10.0;
    unit
}

/// An arm's data as the outcome store and Prometheus report it.
fn arm_data(units: &[Unit]) -> (ArmData, CupedArm) {
    let settled: Vec<&Unit> = units.iter().filter(|u| u.trials > 0.0).collect();
    let data = ArmData {
        units: units.len() as u64,
        interactions: units.iter().map(|u| u.interactions).sum(),
        primary: RatioMoments::from_units(settled.iter().map(|u| (u.events, u.trials))),
        guardrails: [(
            Metric::CsatLow,
            Ok(Counts {
                events: units.iter().map(|u| u.csat_low).sum(),
                trials: units.iter().map(|u| u.rated).sum(),
            }),
        )]
        .into(),
    };
    let cuped = CupedArm {
        moments: CupedMoments::from_units(settled.iter().map(|u| (u.events / u.trials, u.pre))),
        units_with_covariate: settled.len() as u64,
    };
    (data, cuped)
}

fn spec(variants: usize, extra: serde_json::Value) -> ExperimentSpec {
    let weights: Vec<i32> = match variants {
        2 => vec![50, 50],
        _ => vec![34, 33, 33],
    };
    let mut v = serde_json::json!({
        "routerRef": {"name": "frontline"},
        "salt": "simulation",
        "holdout": {"share": "0%"},
        "variants": weights.iter().enumerate().map(|(i, w)| serde_json::json!({
            "name": if i == 0 { "control".to_owned() } else { format!("t{i}") }, "weight": w
        })).collect::<Vec<_>>(),
        "primaryMetric": {"name": "escalationRate", "direction": "Decrease"},
        "minimumDetectableEffect": {"absolute": "5%"},
        "expectedBaselineRate": "20%",
    });
    for (k, value) in extra.as_object().into_iter().flatten() {
        v[k] = value.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn running() -> ExperimentStatus {
    ExperimentStatus {
        phase: ExperimentPhase::Running,
        started_at: Some(Time(Timestamp::from_second(0).unwrap())),
        allocation: Some(LayerRange {
            start: 0,
            end: 10_000,
        }),
        ..ExperimentStatus::default()
    }
}

/// One evaluation of `spec` on `data` at hour `at`.
fn analyse(
    spec: &ExperimentSpec,
    status: &ExperimentStatus,
    data: BTreeMap<String, ArmData>,
    cuped: Option<BTreeMap<String, CupedArm>>,
    at_hours: f64,
) -> ExperimentStatus {
    evaluate(ExperimentInput {
        generation: Some(1),
        spec,
        annotations: &BTreeMap::new(),
        status,
        router_exists: true,
        allocation: None,
        data: Ok(data),
        unsettled: None,
        segments: super::analysis::Segments::new(),
        cuped: cuped.map(Ok),
        now: Timestamp::from_second((at_hours * 3600.0) as i64).unwrap(),
    })
    .status
}

/// The planned units per variant of `spec`.
fn planned(spec: &ExperimentSpec) -> u64 {
    let s = analyse(spec, &running(), BTreeMap::new(), None, 1.0);
    u64::try_from(s.required_samples_per_variant.unwrap()).unwrap()
}

/// Arms' unit counts: a multinomial split of `total` by the spec's weights.
fn split(rng: &mut Rng, spec: &ExperimentSpec, total: u64) -> Vec<u64> {
    let mut counts = vec![0; spec.variants.len()];
    for _ in 0..total {
        let mut u = rng.uniform() * 100.0;
        for (i, v) in spec.variants.iter().enumerate() {
            u -= f64::from(v.weight);
            if u < 0.0 || i + 1 == spec.variants.len() {
                counts[i] += 1;
                break;
            }
        }
    }
    counts
}

/// What a design's runs concluded.
#[derive(Debug, Default)]
struct Tally {
    runs: u32,
    ship: u32,
    keep: u32,
    srm: u32,
    breach: u32,
    concluded: u32,
    estimate_sum: f64,
}

impl Tally {
    fn count(&mut self, s: &ExperimentStatus) {
        self.runs += 1;
        match s.decision {
            ExperimentDecision::ShipVariant => self.ship += 1,
            ExperimentDecision::KeepControl => self.keep += 1,
            ExperimentDecision::InvalidSampleRatio => self.srm += 1,
            ExperimentDecision::GuardrailBreached => self.breach += 1,
            _ => {}
        }
        if s.phase == ExperimentPhase::Concluded {
            self.concluded += 1;
        }
        if let Some(e) = s.per_variant.get(1).and_then(|v| v.estimate) {
            self.estimate_sum += e;
        }
    }

    fn rate(&self, n: u32) -> f64 {
        f64::from(n) / f64::from(self.runs)
    }

    /// Any decision other than "no difference" in an A/A test.
    fn false_positive(&self) -> f64 {
        self.rate(self.ship + self.keep)
    }
}

/// Nominal rate plus three binomial standard errors over [`runs`].
fn tolerance(nominal: f64) -> f64 {
    nominal + 3.0 * (nominal * (1.0 - nominal) / f64::from(runs())).sqrt()
}

/// A design run as the controller runs it: every analysis interval a batch of new units (a
/// twentieth of the planned total, split by weight), one evaluation, until the experiment
/// concludes or stops. The plan may move with the observed variance; significance is only
/// tested once every arm has its planned units with settled outcomes (a fixed horizon).
fn run_design(
    seed: u64,
    spec: &ExperimentSpec,
    pop: Population,
    settle_hours: f64,
    with_cuped: bool,
) -> Tally {
    let mut rng = Rng(seed);
    let n = planned(spec);
    let batch = n * spec.variants.len() as u64 / 20;
    let mut tally = Tally::default();
    for _ in 0..runs() {
        let mut status = running();
        let mut arms: Vec<Vec<Unit>> = vec![Vec::new(); spec.variants.len()];
        for look in 1..=80 {
            let counts = split(&mut rng, spec, batch);
            for ((v, &new), units) in spec.variants.iter().zip(&counts).zip(&mut arms) {
                let treated = v.name != "control";
                units.extend((0..new).map(|_| simulate_unit(&mut rng, pop, treated, settle_hours)));
            }
            let mut data = BTreeMap::new();
            let mut cuped = BTreeMap::new();
            for (v, units) in spec.variants.iter().zip(&arms) {
                let (d, c) = arm_data(units);
                data.insert(v.name.clone(), d);
                cuped.insert(v.name.clone(), c);
            }
            data.insert(HOLDOUT.to_owned(), ArmData::default());
            status = analyse(
                spec,
                &status,
                data,
                with_cuped.then_some(cuped),
                f64::from(look),
            );
            if status.phase != ExperimentPhase::Running {
                break;
            }
        }
        tally.count(&status);
    }
    tally
}

const CLUSTERED: Population = Population {
    base: 0.2,
    effect: 0.0,
    max_interactions: 4,
    max_delay_hours: 0.0,
    enrolment_hours: 24.0 * 14.0,
};

#[test]
fn a_a_fixed_horizon_false_positives_stay_within_alpha() {
    let t = run_design(1, &spec(2, serde_json::json!({})), CLUSTERED, 0.0, false);
    println!(
        "A/A fixed horizon, 2 arms, clustered units: false positive {:.3}, SRM {:.3}",
        t.false_positive(),
        t.rate(t.srm)
    );
    assert!(t.false_positive() <= tolerance(0.05), "{t:?}");
    assert!(t.rate(t.srm) <= tolerance(0.001), "{t:?}");
    assert!(
        t.rate(t.concluded) > 0.95,
        "runs must reach their size: {t:?}"
    );
}

#[test]
fn a_a_three_variants_holm_keeps_the_family_wise_rate() {
    let t = run_design(2, &spec(3, serde_json::json!({})), CLUSTERED, 0.0, false);
    println!(
        "A/A/A fixed horizon, Holm: family-wise false positive {:.3}",
        t.false_positive()
    );
    assert!(t.false_positive() <= tolerance(0.05), "{t:?}");
}

#[test]
fn a_a_with_cuped_stays_within_alpha() {
    let spec = spec(2, serde_json::json!({"cuped": {"preperiod": "336h"}}));
    let t = run_design(3, &spec, CLUSTERED, 0.0, true);
    println!("A/A with CUPED: false positive {:.3}", t.false_positive());
    assert!(t.false_positive() <= tolerance(0.05), "{t:?}");
}

#[test]
fn a_a_sequential_guardrail_rarely_stops() {
    let spec = spec(
        2,
        serde_json::json!({"guardrails": [{"metric": "csatLow", "maxRelativeIncrease": "10%", "minSamples": 100}]}),
    );
    let t = run_design(4, &spec, CLUSTERED, 0.0, false);
    println!(
        "A/A sequential guardrail, checked at every look: false breach {:.3}",
        t.rate(t.breach)
    );
    assert!(t.rate(t.breach) <= tolerance(0.05), "{t:?}");
}

#[test]
fn power_at_the_planned_effect_is_the_planned_power() {
    // One interaction per unit: the plan's model (a proportion per unit) holds exactly.
    let pop = Population {
        effect: -0.05,
        max_interactions: 1,
        ..CLUSTERED
    };
    let t = run_design(5, &spec(2, serde_json::json!({})), pop, 0.0, false);
    println!(
        "power at the MDE (-5 pts), one interaction per unit: {:.3}",
        t.rate(t.ship)
    );
    assert!((t.rate(t.ship) - 0.80).abs() <= 0.05, "{t:?}");
    // Units with 1 to 4 interactions: the plan counts each unit as one trial, so it is
    // conservative (a unit's several interactions carry more information).
    let clustered = run_design(
        8,
        &spec(2, serde_json::json!({})),
        Population {
            effect: -0.05,
            ..CLUSTERED
        },
        0.0,
        false,
    );
    println!(
        "power at the MDE (-5 pts), 1 to 4 interactions per unit: {:.3}",
        clustered.rate(clustered.ship)
    );
    assert!(clustered.rate(clustered.ship) >= 0.75, "{clustered:?}");
}

#[test]
fn delayed_outcomes_bias_the_estimate_unless_settled() {
    // Escalations arrive up to 48h after the answer; an analysis at 7 days.
    let pop = Population {
        effect: -0.05,
        max_delay_hours: 48.0,
        enrolment_hours: 24.0 * 7.0,
        ..CLUSTERED
    };
    let spec = spec(2, serde_json::json!({}));
    let settled = run_design(6, &spec, pop, 72.0, false);
    let unsettled = run_design(6, &spec, pop, 0.0, false);
    let mean = |t: &Tally| t.estimate_sum / f64::from(t.runs);
    println!(
        "delayed outcomes (true effect -5.0 pts): mean estimate settled 72h {:+.2} pts, not settled {:+.2} pts",
        mean(&settled) * 100.0,
        mean(&unsettled) * 100.0
    );
    assert!((mean(&settled) + 0.05).abs() < 0.003, "{settled:?}");
    assert!(mean(&unsettled) > -0.047, "{unsettled:?}");
    let aa = run_design(7, &spec, Population { effect: 0.0, ..pop }, 72.0, false);
    println!(
        "A/A with delayed outcomes, settled: false positive {:.3}",
        aa.false_positive()
    );
    assert!(aa.false_positive() <= tolerance(0.05), "{aa:?}");
}
