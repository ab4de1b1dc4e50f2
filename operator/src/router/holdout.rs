//! The Router's permanent holdout, pure: when it starts and ends, and its comparison of the
//! held-out units with everyone else (docs/statistics.md, "Router holdout").

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use switchboard_analysis::{ExperimentUnits, difference_of_ratios};
use switchboard_crds::{
    router::{HoldoutComparison, HoldoutPhase, HoldoutStatus, PinnedVersion, RouterHoldout},
    runtime_config::RuntimeConfig,
};

/// Significance level of the comparison's intervals and p-values.
pub const ALPHA: f64 = 0.05;

/// The group names of the runtime's holdout report.
pub const HELD_OUT: &str = "holdout";
/// Everyone else.
pub const EXPOSED: &str = "exposed";

/// The holdout's status after this reconcile: started with the versions `config` pinned when
/// there was none, ended once `endsAt` has passed (its comparison is then final), and the
/// comparison updated from `data` (the runtime's report) while it runs. `None` without
/// `spec.holdout`.
pub fn status(
    spec: Option<&RouterHoldout>,
    previous: Option<&HoldoutStatus>,
    config: &RuntimeConfig,
    now: Timestamp,
    data: Option<Result<ExperimentUnits, String>>,
) -> Option<HoldoutStatus> {
    let spec = spec?;
    let Some(previous) = previous else {
        let ends = SignedDuration::try_from(spec.duration.duration())
            .ok()
            .and_then(|d| now.checked_add(d).ok())
            .unwrap_or(Timestamp::MAX);
        return Some(HoldoutStatus {
            phase: HoldoutPhase::Running,
            started_at: Time(now),
            ends_at: Time(ends),
            pinned: config
                .holdout
                .iter()
                .flat_map(|h| &h.pinned)
                .map(|(lineage, version)| PinnedVersion {
                    lineage: lineage.clone(),
                    version: version.clone(),
                })
                .collect(),
            units: None,
            exposed_units: None,
            comparisons: Vec::new(),
            last_analysis: None,
            message: None,
        });
    };
    let mut status = previous.clone();
    if previous.phase == HoldoutPhase::Ended {
        return Some(status);
    }
    match data {
        Some(Ok(units)) => {
            let count = |group: &str| {
                units
                    .arms
                    .get(group)
                    .map(|a| i64::try_from(a.units).unwrap_or(i64::MAX))
            };
            status.units = count(HELD_OUT);
            status.exposed_units = count(EXPOSED);
            status.comparisons = comparisons(spec, &units);
            status.last_analysis = Some(Time(now));
            status.message = None;
        }
        Some(Err(e)) => status.message = Some(format!("comparison not updated: {e}")),
        None => {}
    }
    if now >= previous.ends_at.0 {
        status.phase = HoldoutPhase::Ended;
    }
    Some(status)
}

/// Per metric of the spec with per-unit data in both groups: exposed minus held out (delta
/// method over units, 95% interval). A metric without enough units yet is left out.
pub fn comparisons(spec: &RouterHoldout, units: &ExperimentUnits) -> Vec<HoldoutComparison> {
    spec.metrics
        .iter()
        .filter_map(|&metric| {
            let moments = |group: &str| units.arms.get(group)?.metrics.get(metric.as_str());
            let (held_out, exposed) = (moments(HELD_OUT)?, moments(EXPOSED)?);
            let e = difference_of_ratios(held_out, exposed, ALPHA).ok()?;
            Some(HoldoutComparison {
                metric,
                holdout_rate: e.control,
                exposed_rate: e.treatment,
                difference: e.difference,
                ci_low: e.interval.lower,
                ci_high: e.interval.upper,
                p_value: e.p_value,
            })
        })
        .collect()
}

/// Whether to read the store for the comparison now: while it runs, at most once per `every`
/// (a Router reconciles on every change of its KnowledgeBase, AdapterPatches and Experiments,
/// and the read covers every interaction since the start), and once more when it ends.
pub fn due(status: &HoldoutStatus, now: Timestamp, every: Duration) -> bool {
    if status.phase != HoldoutPhase::Running {
        return false;
    }
    let Some(last) = &status.last_analysis else {
        return true;
    };
    now >= status.ends_at.0
        || Duration::try_from(now.duration_since(last.0)).is_ok_and(|since| since >= every)
}

/// When to look again at the latest: at its end, while it runs.
pub fn next_look(status: Option<&HoldoutStatus>, now: Timestamp) -> Option<Duration> {
    let s = status.filter(|s| s.phase == HoldoutPhase::Running)?;
    Some(Duration::try_from(s.ends_at.0.duration_since(now)).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use switchboard_analysis::{ArmUnits, RatioMoments};

    use super::*;

    fn spec() -> RouterHoldout {
        serde_json::from_value(serde_json::json!({"share": "5%", "duration": "2h"})).unwrap()
    }

    fn config(pinned: &[(&str, &str)]) -> RuntimeConfig {
        let mut c: RuntimeConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "RuntimeConfig",
            "router": {"namespace": "ns", "name": "r"},
            "knowledgeBase": {"name": "kb", "indexGeneration": 1, "embeddingModel": "m", "retrieval": {}},
            "smallModel": {"model": "m", "maxActiveAdapters": 4, "maxNewTokens": 64},
            "largeModel": {"maxQueueDepth": 8},
            "routerPolicy": {"difficultyThreshold": 0.6, "adapterSelection": {}, "queryRewrite": {},
                             "explorationShare": "5%", "shadowMaxConcurrent": 2}
        }))
        .unwrap();
        c.holdout = Some(switchboard_crds::runtime_config::HoldoutConfig {
            share: switchboard_crds::Percent::from_fraction(0.05),
            pinned: pinned
                .iter()
                .map(|(l, v)| ((*l).to_owned(), (*v).to_owned()))
                .collect(),
        });
        c
    }

    fn at(minutes: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + minutes * 60).unwrap()
    }

    /// `n` units per group with the given escalation propensity, 4 interactions each.
    fn report(held_out_rate: f64, exposed_rate: f64, n: u32) -> ExperimentUnits {
        let group = |rate: f64, seed: u64| {
            let mut rng = seed;
            let units = (0..n).map(|_| {
                let events = (0..4)
                    .filter(|_| {
                        rng = rng
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        ((rng >> 11) as f64 / (1u64 << 53) as f64) < rate
                    })
                    .count();
                (events as f64, 4.0)
            });
            ArmUnits {
                units: u64::from(n),
                interactions: 4 * u64::from(n),
                metrics: [("escalationRate".to_owned(), RatioMoments::from_units(units))]
                    .into_iter()
                    .collect(),
            }
        };
        ExperimentUnits {
            arms: [
                (HELD_OUT.to_owned(), group(held_out_rate, 1)),
                (EXPOSED.to_owned(), group(exposed_rate, 2)),
            ]
            .into_iter()
            .collect(),
            ..ExperimentUnits::default()
        }
    }

    #[test]
    fn it_starts_with_the_compiled_pins_compares_while_running_and_ends_final() {
        let spec = spec();
        // Started: the pins the compiler chose, two hours to run.
        let started = status(
            Some(&spec),
            None,
            &config(&[("pricing", "1.0.0")]),
            at(0),
            None,
        )
        .unwrap();
        assert_eq!(started.phase, HoldoutPhase::Running);
        assert_eq!(started.ends_at.0, at(120));
        assert_eq!(
            started.pinned,
            [PinnedVersion {
                lineage: "pricing".into(),
                version: "1.0.0".into()
            }]
        );
        assert_eq!(
            next_look(Some(&started), at(30)),
            Some(Duration::from_secs(90 * 60))
        );

        // Running: the shipped changes cut escalations from 20% to 15%.
        let later = status(
            Some(&spec),
            Some(&started),
            &config(&[]),
            at(60),
            Some(Ok(report(0.20, 0.15, 2_000))),
        )
        .unwrap();
        assert_eq!(later.pinned, started.pinned, "pins never move");
        assert_eq!(
            (later.units, later.exposed_units),
            (Some(2_000), Some(2_000))
        );
        let c = &later.comparisons[0];
        assert!((c.difference - (c.exposed_rate - c.holdout_rate)).abs() < 1e-12);
        assert!(c.ci_high < 0.0 && c.p_value < 0.001, "{c:?}");
        assert!((c.difference + 0.05).abs() < 0.02, "{c:?}");

        // The store unreachable: the last comparison stays, with why it is not updated.
        let stale = status(
            Some(&spec),
            Some(&later),
            &config(&[]),
            at(90),
            Some(Err("connection refused".into())),
        )
        .unwrap();
        assert_eq!(stale.comparisons, later.comparisons);
        assert!(stale.message.unwrap().contains("connection refused"));

        // Past its end: Ended, final; nothing changes it afterwards.
        let ended = status(
            Some(&spec),
            Some(&later),
            &config(&[]),
            at(121),
            Some(Ok(report(0.20, 0.15, 2_100))),
        )
        .unwrap();
        assert_eq!(ended.phase, HoldoutPhase::Ended);
        assert_eq!(ended.units, Some(2_100));
        assert_eq!(next_look(Some(&ended), at(121)), None);
        let after = status(
            Some(&spec),
            Some(&ended),
            &config(&[]),
            at(500),
            Some(Ok(report(0.5, 0.5, 10))),
        )
        .unwrap();
        assert_eq!(after, ended);

        // Without spec.holdout there is none.
        assert!(status(None, Some(&ended), &config(&[]), at(500), None).is_none());
    }

    #[test]
    fn the_store_is_read_at_most_once_per_interval_and_at_the_end() {
        let every = Duration::from_secs(300);
        let mut s = status(Some(&spec()), None, &config(&[]), at(0), None).unwrap();
        assert!(due(&s, at(0), every), "never read yet");
        s.last_analysis = Some(Time(at(10)));
        assert!(!due(&s, at(12), every));
        assert!(due(&s, at(15), every));
        s.last_analysis = Some(Time(at(119)));
        assert!(due(&s, at(120), every), "the final read at its end");
        s.phase = HoldoutPhase::Ended;
        assert!(!due(&s, at(500), every));
    }

    #[test]
    fn a_metric_without_units_in_both_groups_is_not_compared_yet() {
        let mut units = report(0.2, 0.2, 50);
        units.arms.remove(HELD_OUT);
        assert!(comparisons(&spec(), &units).is_empty());
    }
}
