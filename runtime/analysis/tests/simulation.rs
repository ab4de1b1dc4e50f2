//! Monte Carlo checks with fixed seeds: the properties a user relies on, measured.
//!
//! - A/A with a look at every analysis interval: the guardrail's wrong decisions stay at or below
//!   alpha (a repeated fixed-horizon z-test does not).
//! - Power at the planned sample size and minimum detectable effect is at least the nominal power.
//! - CUPED removes about ρ² of the variance.
//! - The delta-method interval of a per-user ratio metric covers at the nominal rate where the
//!   per-interaction binomial interval does not.
//!
//! Tolerances are three binomial standard errors of the simulated rate.

use switchboard_analysis::dist;
use switchboard_analysis::planning::{Effect, Metric, PlanInputs, plan};
use switchboard_analysis::{
    Counts, CupedMoments, GuardrailDecision, GuardrailPolicy, GuardrailReason, RatioMoments,
    cuped_difference, difference_of_proportions, difference_of_ratios, evaluate_guardrail,
};

/// xoshiro256** seeded through splitmix64: small, fast and reproducible across platforms.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Binomial(n, p) exactly, by counting geometric waiting times: O(n·p) work.
    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        let log_q = (-p).ln_1p();
        let (mut events, mut position) = (0u64, 0u64);
        loop {
            let gap = (self.uniform().ln() / log_q).floor() as u64;
            position = position.saturating_add(gap).saturating_add(1);
            if position > n {
                return events;
            }
            events += 1;
        }
    }

    fn poisson(&mut self, mean: f64) -> u64 {
        let limit = (-mean).exp();
        let (mut k, mut product) = (0, self.uniform());
        while product > limit {
            k += 1;
            product *= self.uniform();
        }
        k
    }

    fn standard_normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }
}

/// Upper limit for a simulated rate whose true value is at most `p`.
fn upper_tolerance(p: f64, runs: usize) -> f64 {
    p + 3.0 * (p * (1.0 - p) / runs as f64).sqrt()
}

struct Stream {
    rate: f64,
    per_look: u64,
    counts: Counts,
}

impl Stream {
    fn new(rate: f64, per_look: u64) -> Self {
        Self {
            rate,
            per_look,
            counts: Counts {
                events: 0,
                trials: 0,
            },
        }
    }

    fn advance(&mut self, rng: &mut Rng) -> Counts {
        self.counts.events += rng.binomial(self.per_look, self.rate);
        self.counts.trials += self.per_look;
        self.counts
    }
}

/// Shares of `runs` simulated rollouts in which, at some look past the minimum sample, ...
#[derive(Debug)]
struct Peeking {
    /// ... the guardrail decided anything but Hold;
    decided: f64,
    /// ... the guardrail breached;
    breached: f64,
    /// ... a fixed-horizon two-sided test of "ratio = 1 + margin" rejected (naive peeking);
    naive_test: f64,
    /// ... the observed rise exceeded the margin (a fixed threshold, as in Flagger/Argo analyses).
    threshold: f64,
}

/// Runs `runs` rollouts of `looks` analysis intervals each.
fn peeking_rates(
    seed: u64,
    policy: &GuardrailPolicy,
    (baseline_rate, baseline_per_look): (f64, u64),
    (candidate_rate, candidate_per_look): (f64, u64),
    looks: usize,
    runs: usize,
) -> Peeking {
    let mut rng = Rng::new(seed);
    let critical = dist::normal_ppf(1.0 - policy.alpha / 2.0);
    let mut totals = [0usize; 4];
    for _ in 0..runs {
        let mut baseline = Stream::new(baseline_rate, baseline_per_look);
        let mut candidate = Stream::new(candidate_rate, candidate_per_look);
        let mut any = [false; 4];
        for _ in 0..looks {
            let (b, c) = (baseline.advance(&mut rng), candidate.advance(&mut rng));
            let result = evaluate_guardrail(policy, b, c).expect("valid inputs");
            any[0] |= result.decision != GuardrailDecision::Hold;
            any[1] |= result.decision == GuardrailDecision::Breach;
            // The naive procedures get the same minimum sample.
            if result.reason != GuardrailReason::InsufficientSamples {
                let evidence = &result.evidence;
                any[2] |= evidence.z_statistic.expect("z").abs() > critical;
                any[3] |= evidence.relative_change.expect("change") > policy.max_relative_increase;
            }
        }
        for (total, hit) in totals.iter_mut().zip(any) {
            *total += usize::from(hit);
        }
    }
    let share = |k: usize| k as f64 / runs as f64;
    Peeking {
        decided: share(totals[0]),
        breached: share(totals[1]),
        naive_test: share(totals[2]),
        threshold: share(totals[3]),
    }
}

#[test]
fn a_a_with_peeking_every_interval_keeps_false_decisions_below_alpha() {
    // Margin 0: "any rise is a breach". Equal rates, so Breach and Pass are both wrong.
    // 40 looks of 250 interactions per arm: 10,000 per arm at the end.
    let policy = GuardrailPolicy::new(0.0).expect("policy");
    let runs = 2000;
    let peeking = peeking_rates(1, &policy, (0.15, 250), (0.15, 250), 40, runs);
    eprintln!("A/A, even split, margin 0: {peeking:?}");
    assert!(
        peeking.decided <= upper_tolerance(policy.alpha, runs),
        "{peeking:?}"
    );
    // The harness can tell: repeated fixed-horizon tests exceed alpha several times over.
    assert!(peeking.naive_test > 2.0 * policy.alpha, "{peeking:?}");
}

#[test]
fn a_healthy_canary_is_not_rolled_back_where_a_fixed_threshold_would_be() {
    // A 10% canary against the stable 90% under the +5% guardrail, 60 looks of 100 candidate
    // interactions. At equal rates a fixed "observed rise > 5%" rule rolls back most healthy
    // candidates; at exactly +5% (allowed, at the boundary) the guardrail's false breaches stay
    // at or below alpha.
    let policy = GuardrailPolicy::new(0.05).expect("policy");
    let runs = 2000;
    let equal = peeking_rates(2, &policy, (0.15, 900), (0.15, 100), 60, runs);
    eprintln!("A/A canary, equal rates: {equal:?}");
    assert!(
        equal.breached <= upper_tolerance(policy.alpha, runs),
        "{equal:?}"
    );
    assert!(equal.threshold > 0.5, "{equal:?}");
    let boundary = peeking_rates(3, &policy, (0.15, 900), (0.15 * 1.05, 100), 60, runs);
    eprintln!("canary at the margin: {boundary:?}");
    assert!(
        boundary.breached <= upper_tolerance(policy.alpha, runs),
        "{boundary:?}"
    );
}

#[test]
fn a_real_regression_is_rolled_back_within_the_rollout() {
    // +30% escalations on a 10% canary: caught in nearly every run.
    let policy = GuardrailPolicy::new(0.05).expect("policy");
    let runs = 300;
    let regression = peeking_rates(4, &policy, (0.15, 900), (0.195, 100), 60, runs);
    eprintln!("+30% regression: {regression:?}");
    assert!(regression.breached >= 0.95, "{regression:?}");
}

#[test]
fn power_at_the_minimum_detectable_effect_is_at_least_nominal() {
    // The worked example: 15% baseline, one point lower, alpha 0.05 two-sided, power 0.8.
    let inputs = PlanInputs::new(
        Metric::Proportion {
            baseline_rate: 0.15,
        },
        Effect::Absolute(-0.01),
    );
    let planned = plan(&inputs).expect("plan");
    let n = planned.units_per_variant;
    let mut rng = Rng::new(4);
    let runs = 1000;
    let (mut detected, mut false_alarms) = (0, 0);
    for _ in 0..runs {
        let control = Counts::new(rng.binomial(n, 0.15), n).expect("counts");
        let treatment = Counts::new(rng.binomial(n, 0.14), n).expect("counts");
        let result = difference_of_proportions(control, treatment, inputs.alpha).expect("estimate");
        detected += usize::from(result.p_value < inputs.alpha);
        let null_treatment = Counts::new(rng.binomial(n, 0.15), n).expect("counts");
        let null =
            difference_of_proportions(control, null_treatment, inputs.alpha).expect("estimate");
        false_alarms += usize::from(null.p_value < inputs.alpha);
    }
    let power = detected as f64 / runs as f64;
    let size = false_alarms as f64 / runs as f64;
    eprintln!("n = {n} per variant: simulated power {power:.3}, size {size:.3}");
    let se = (0.8 * 0.2 / runs as f64).sqrt();
    assert!(power >= inputs.power - 3.0 * se, "power {power}");
    assert!(size <= upper_tolerance(inputs.alpha, runs), "size {size}");
}

#[test]
fn cuped_reduces_variance_by_about_rho_squared() {
    let mut rng = Rng::new(5);
    for rho in [0.3, 0.6, 0.9] {
        let runs = 1000;
        let units = 400;
        let (mut adjusted, mut raw, mut reported) = (Vec::new(), Vec::new(), 0.0);
        for _ in 0..runs {
            let mut arm = |shift: f64| {
                CupedMoments::from_units((0..units).map(|_| {
                    let x = rng.standard_normal();
                    let y = shift + rho * x + (1.0 - rho * rho).sqrt() * rng.standard_normal();
                    (y, x + 4.0)
                }))
            };
            let (control, treatment) = (arm(0.0), arm(0.05));
            let result = cuped_difference(&control, &treatment, 0.05).expect("cuped");
            adjusted.push(result.adjusted.difference);
            raw.push(result.unadjusted.difference);
            reported += result.variance_reduction / runs as f64;
        }
        let variance = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
        };
        let empirical = 1.0 - variance(&adjusted) / variance(&raw);
        eprintln!(
            "rho {rho}: empirical variance reduction {empirical:.3}, reported {reported:.3}, rho^2 {:.3}",
            rho * rho
        );
        assert!(
            (reported - rho * rho).abs() < 0.01,
            "reported {reported} for rho {rho}"
        );
        // The adjusted estimate is the raw one minus a part uncorrelated with it, so their correlation
        // is sqrt(1 - rho^2) and the variance ratio's standard error is (1 - rho^2) rho sqrt(2/runs).
        let se = (1.0 - rho * rho) * rho * (2.0 / runs as f64).sqrt();
        assert!(
            (empirical - rho * rho).abs() < 3.5 * se,
            "empirical {empirical} for rho {rho}"
        );
    }
}

#[test]
fn delta_method_covers_a_clustered_ratio_metric() {
    // Users with 1 + Poisson(3) interactions each and a per-user escalation propensity of 5% or
    // 40%: interactions of one user are correlated, as in real support traffic.
    let mut rng = Rng::new(6);
    let runs = 1000;
    let users = 1000;
    let (mut delta_covered, mut naive_covered) = (0, 0);
    for _ in 0..runs {
        let mut arm = || {
            RatioMoments::from_units((0..users).map(|_| {
                let interactions = 1 + rng.poisson(3.0);
                let propensity = if rng.uniform() < 0.7 { 0.05 } else { 0.40 };
                (
                    rng.binomial(interactions, propensity) as f64,
                    interactions as f64,
                )
            }))
        };
        let (control, treatment) = (arm(), arm());
        let delta = difference_of_ratios(&control, &treatment, 0.05).expect("ratios");
        delta_covered += usize::from(delta.interval.contains(0.0));
        let as_counts = |m: &RatioMoments| {
            Counts::new(m.numerator as u64, m.denominator as u64).expect("counts")
        };
        let naive = difference_of_proportions(as_counts(&control), as_counts(&treatment), 0.05)
            .expect("naive");
        naive_covered += usize::from(naive.interval.contains(0.0));
    }
    let (delta, naive) = (
        delta_covered as f64 / runs as f64,
        naive_covered as f64 / runs as f64,
    );
    eprintln!(
        "95% interval coverage: delta method {delta:.3}, per-interaction binomial {naive:.3}"
    );
    let se = (0.95 * 0.05 / runs as f64).sqrt();
    assert!(
        (delta - 0.95).abs() <= 3.0 * se,
        "delta-method coverage {delta}"
    );
    assert!(naive < 0.95 - 3.0 * se, "naive coverage {naive}");
}

/// Candidate trials until `target` is first decided, per run (`None`: not within `looks`).
fn decision_times(
    seed: u64,
    policy: &GuardrailPolicy,
    (baseline_rate, baseline_per_look): (f64, u64),
    (candidate_rate, candidate_per_look): (f64, u64),
    looks: usize,
    runs: usize,
    target: GuardrailDecision,
) -> Vec<Option<u64>> {
    let mut rng = Rng::new(seed);
    (0..runs)
        .map(|_| {
            let mut baseline = Stream::new(baseline_rate, baseline_per_look);
            let mut candidate = Stream::new(candidate_rate, candidate_per_look);
            (0..looks).find_map(|_| {
                let (b, c) = (baseline.advance(&mut rng), candidate.advance(&mut rng));
                let result = evaluate_guardrail(policy, b, c).expect("valid inputs");
                (result.decision == target).then_some(c.trials)
            })
        })
        .collect()
}

/// How quickly decisions come: the numbers quoted in docs/statistics.md
/// (`cargo test -p switchboard-analysis --test simulation -- --nocapture time_to_decision`).
#[test]
fn time_to_decision() {
    let runs = 200;
    // (candidate trials at the first quartile, median, third quartile); u64::MAX = never.
    let quartiles = |times: Vec<Option<u64>>| {
        let mut times: Vec<u64> = times.into_iter().map(|t| t.unwrap_or(u64::MAX)).collect();
        times.sort_unstable();
        let at = |q: usize| times[q * (times.len() - 1) / 4];
        (at(1), at(2), at(3))
    };
    for (label, candidate_rate, median_at_most) in [
        ("+20% regression", 0.18, 4_000),
        ("+30% regression", 0.195, 2_000),
        ("+50% regression", 0.225, 1_000),
    ] {
        let policy = GuardrailPolicy::new(0.05).expect("policy");
        let times = decision_times(
            7,
            &policy,
            (0.15, 900),
            (candidate_rate, 100),
            200,
            runs,
            GuardrailDecision::Breach,
        );
        let (q1, median, q3) = quartiles(times);
        eprintln!(
            "Breach on a {label}, 15% baseline, 10% canary: candidate trials {q1} / {median} / {q3}"
        );
        assert!(median <= median_at_most, "{label}: median {median}");
        assert!(
            q3 < u64::MAX,
            "{label}: a quarter of the runs never breached"
        );
    }
    for (margin, median_at_most) in [(0.05, 60_000), (0.10, 20_000)] {
        let policy = GuardrailPolicy::new(margin).expect("policy");
        let times = decision_times(
            8,
            &policy,
            (0.15, 1000),
            (0.15, 1000),
            200,
            runs,
            GuardrailDecision::Pass,
        );
        let (q1, median, q3) = quartiles(times);
        eprintln!(
            "Pass at equal rates, margin {margin}, even split: trials per arm {q1} / {median} / {q3}"
        );
        assert!(median <= median_at_most, "margin {margin}: median {median}");
    }
}
