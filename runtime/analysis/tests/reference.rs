//! Checks against scipy/statsmodels reference values in `tests/fixtures`, produced by
//! `hack/reference/analysis_fixtures.py`. Closed-form quantities must agree to 1e-6 (relative to
//! the value's magnitude, floored at 1); most agree to 1e-10 or better.

use serde_json::Value;
use switchboard_analysis::dist;
use switchboard_analysis::planning::{Alternative, Effect, Metric, PlanInputs, plan};
use switchboard_analysis::{
    Counts, CupedMoments, Moments, RatioMoments, compare_rates, cuped_difference,
    difference_of_means, difference_of_proportions, difference_of_ratios, non_inferiority,
    sample_ratio_mismatch,
};

fn cases(text: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(text).expect("fixture parses");
    doc["cases"].as_array().expect("cases array").clone()
}

fn f(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("number expected, got {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("integer expected, got {v}"))
}

#[track_caller]
fn close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    let scale = expected.abs().max(1.0);
    assert!(
        (actual - expected).abs() <= tolerance * scale,
        "{what}: got {actual:e}, scipy/statsmodels {expected:e} (diff {:e})",
        (actual - expected).abs()
    );
}

/// Tail probabilities are compared relatively, so tiny ones count.
#[track_caller]
fn close_probability(actual: f64, expected: f64, what: &str) {
    if expected < 1e-300 {
        assert!(
            actual < 1e-290,
            "{what}: got {actual:e}, expected {expected:e}"
        );
    } else {
        assert!(
            ((actual - expected) / expected).abs() < 1e-9,
            "{what}: got {actual:e}, scipy {expected:e}"
        );
    }
}

fn counts(v: &Value) -> Counts {
    Counts::new(u(&v[0]), u(&v[1])).expect("valid counts")
}

#[test]
fn distributions_match_scipy() {
    let all = cases(include_str!("fixtures/distributions.json"));
    assert!(all.len() > 200);
    for case in all {
        let kind = case["kind"].as_str().expect("kind");
        let value = f(&case["value"]);
        let what = format!("{case}");
        match kind {
            "normal_cdf" => close_probability(dist::normal_cdf(f(&case["x"])), value, &what),
            "normal_sf" => close_probability(dist::normal_sf(f(&case["x"])), value, &what),
            "normal_ppf" => close(dist::normal_ppf(f(&case["p"])), value, 1e-12, &what),
            "chi_square_sf" => close_probability(
                dist::chi_square_sf(f(&case["x"]), f(&case["df"])),
                value,
                &what,
            ),
            "student_t_cdf" => {
                let actual = dist::student_t_cdf(f(&case["x"]), f(&case["df"]));
                // Relative in the tail; ln Γ cancellation at df/2 = 6e4 limits it to ~1e-10.
                assert!(
                    (actual - value).abs() <= 1e-9 * value.max(1e-3),
                    "{what}: got {actual:e}"
                );
            }
            "student_t_ppf" => close(
                dist::student_t_ppf(f(&case["p"]), f(&case["df"])),
                value,
                1e-9,
                &what,
            ),
            other => panic!("unknown kind {other}"),
        }
    }
}

#[test]
fn rate_comparisons_match_statsmodels() {
    for case in cases(include_str!("fixtures/rates.json")) {
        let what = format!("{case}");
        let (baseline, candidate) = (counts(&case["baseline"]), counts(&case["candidate"]));
        let alpha = f(&case["alpha"]);
        let result = compare_rates(baseline, candidate, alpha).expect("comparison");
        assert_eq!(result.adjusted, case["method"] == "log-adjusted", "{what}");
        match case["relative_change"].as_f64() {
            Some(expected) => close(
                result.relative_change.expect("change"),
                expected,
                1e-12,
                &what,
            ),
            None => assert_eq!(result.relative_change, None, "{what}"),
        }
        let interval = result.interval.expect("interval");
        close(interval.lower, f(&case["interval"][0]), 1e-9, &what);
        close(interval.upper, f(&case["interval"][1]), 1e-9, &what);
        for ni in case["non_inferiority"].as_array().expect("ni") {
            let margin = f(&ni["margin"]);
            let result = non_inferiority(baseline, candidate, margin, alpha).expect("ni");
            let upper = result.upper_bound.expect("upper bound");
            close(upper, f(&ni["upper_bound"]), 1e-9, &what);
            close(
                result.statistic.expect("z"),
                f(&ni["statistic"]),
                1e-9,
                &what,
            );
            close_probability(result.p_value.expect("p"), f(&ni["p_value"]), &what);
            assert_eq!(result.non_inferior, upper < margin, "{what}");
        }
    }
}

#[test]
fn sample_sizes_match_statsmodels() {
    for case in cases(include_str!("fixtures/planning.json")) {
        let what = format!("{case}");
        let effect = Effect::Absolute(f(&case["effect"]));
        let metric = match case["kind"].as_str() {
            Some("proportion") => Metric::Proportion {
                baseline_rate: f(&case["baseline"]),
            },
            _ => Metric::Mean {
                baseline_mean: 10.0,
                standard_deviation: f(&case["sd"]),
            },
        };
        let inputs = PlanInputs {
            alpha: f(&case["alpha"]),
            power: f(&case["power"]),
            alternative: if case["two_sided"] == true {
                Alternative::TwoSided
            } else {
                Alternative::OneSided
            },
            ..PlanInputs::new(metric, effect)
        };
        let result = plan(&inputs).expect("plan");
        let expected = f(&case["n"]);
        // The plan rounds up; compare the ceiling of the reference.
        let ceiling = expected.ceil() as u64;
        assert!(
            result.units_per_variant == ceiling
                || (expected - expected.floor() < 1e-6
                    && result.units_per_variant == expected.floor() as u64),
            "{what}: got {}, reference {expected}",
            result.units_per_variant
        );
        if let Some(solved) = case["statsmodels_n"].as_f64() {
            close(expected, solved, 1e-5, &what);
        }
    }
}

#[test]
fn experiment_analysis_matches_statsmodels_and_scipy() {
    let all = cases(include_str!("fixtures/experiment.json"));
    let mut seen = std::collections::BTreeSet::new();
    for case in all {
        let what = format!("{case}");
        let kind = case["kind"].as_str().expect("kind");
        seen.insert(kind.to_owned());
        let alpha = case["alpha"].as_f64().unwrap_or(0.05);
        match kind {
            "proportions" => {
                let r = difference_of_proportions(
                    counts(&case["control"]),
                    counts(&case["treatment"]),
                    alpha,
                )
                .expect("proportions");
                close(r.difference, f(&case["difference"]), 1e-12, &what);
                close(r.statistic, f(&case["statistic"]), 1e-9, &what);
                close_probability(r.p_value, f(&case["p_value"]), &what);
                close(r.interval.lower, f(&case["interval"][0]), 1e-10, &what);
                close(r.interval.upper, f(&case["interval"][1]), 1e-10, &what);
            }
            "means" => {
                let parse =
                    |v: &Value| -> Moments { serde_json::from_value(v.clone()).expect("moments") };
                let r = difference_of_means(
                    &parse(&case["control"]),
                    &parse(&case["treatment"]),
                    alpha,
                )
                .expect("means");
                close(r.difference, f(&case["difference"]), 1e-9, &what);
                close(r.statistic, f(&case["statistic"]), 1e-8, &what);
                close(
                    r.degrees_of_freedom.expect("df"),
                    f(&case["df"]),
                    1e-8,
                    &what,
                );
                close_probability(r.p_value, f(&case["p_value"]), &what);
                close(r.interval.lower, f(&case["interval"][0]), 1e-8, &what);
                close(r.interval.upper, f(&case["interval"][1]), 1e-8, &what);
            }
            "ratios" => {
                let parse = |v: &Value| -> RatioMoments {
                    serde_json::from_value(v.clone()).expect("ratio")
                };
                let r = difference_of_ratios(
                    &parse(&case["control"]),
                    &parse(&case["treatment"]),
                    alpha,
                )
                .expect("ratios");
                close(r.control, f(&case["control_ratio"]), 1e-12, &what);
                close(r.treatment, f(&case["treatment_ratio"]), 1e-12, &what);
                close(r.standard_error, f(&case["standard_error"]), 1e-9, &what);
                close(r.interval.lower, f(&case["interval"][0]), 1e-9, &what);
                close(r.interval.upper, f(&case["interval"][1]), 1e-9, &what);
                close_probability(r.p_value, f(&case["p_value"]), &what);
            }
            "cuped" => {
                let parse = |v: &Value| -> CupedMoments {
                    serde_json::from_value(v.clone()).expect("cuped")
                };
                let r =
                    cuped_difference(&parse(&case["control"]), &parse(&case["treatment"]), alpha)
                        .expect("cuped");
                close(r.theta, f(&case["theta"]), 1e-9, &what);
                close(r.correlation, f(&case["correlation"]), 1e-9, &what);
                close(r.adjusted.difference, f(&case["difference"]), 1e-9, &what);
                close(r.adjusted.statistic, f(&case["statistic"]), 1e-7, &what);
                close(
                    r.adjusted.degrees_of_freedom.expect("df"),
                    f(&case["df"]),
                    1e-7,
                    &what,
                );
                close(r.adjusted.p_value, f(&case["p_value"]), 1e-7, &what);
                close(
                    r.adjusted.interval.lower,
                    f(&case["interval"][0]),
                    1e-8,
                    &what,
                );
                close(
                    r.adjusted.interval.upper,
                    f(&case["interval"][1]),
                    1e-8,
                    &what,
                );
                close(
                    r.unadjusted.statistic,
                    f(&case["unadjusted_statistic"]),
                    1e-7,
                    &what,
                );
                close(
                    r.variance_reduction,
                    f(&case["variance_reduction"]),
                    1e-7,
                    &what,
                );
            }
            "srm" => {
                let observed: Vec<u64> = case["observed"]
                    .as_array()
                    .expect("obs")
                    .iter()
                    .map(u)
                    .collect();
                let weights: Vec<f64> = case["weights"]
                    .as_array()
                    .expect("w")
                    .iter()
                    .map(f)
                    .collect();
                let r = sample_ratio_mismatch(&observed, &weights, 0.001).expect("srm");
                close(r.chi_square, f(&case["chi_square"]), 1e-10, &what);
                close_probability(r.p_value, f(&case["p_value"]), &what);
                assert_eq!(r.mismatch, f(&case["p_value"]) < 0.001, "{what}");
            }
            other => panic!("unknown kind {other}"),
        }
    }
    assert_eq!(
        seen.len(),
        5,
        "every analysis has reference cases: {seen:?}"
    );
}
