//! The pure part of the Experiment controller: (spec, status, per-arm counts, now) -> status.

use std::collections::BTreeMap;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use switchboard_analysis::{
    ArmUnits, Counts, CupedArm, Effect, GuardrailDecision, GuardrailPolicy, PlanInputs,
    RatioMoments, cuped_difference, difference_of_ratios, estimate_eta, evaluate_guardrail, holm,
    plan, planning, sequential_sample_ratio_mismatch,
};
use switchboard_crds::{
    Metric, annotations,
    conditions::{self as cond, reasons},
    experiment::{
        Direction, ExperimentDecision, ExperimentPhase, ExperimentSpec, ExperimentStatus,
        LayerRange, SampleRatioCheck, SegmentResult, SegmentVariant, VariantResult,
    },
    set_condition,
};

use switchboard_policy::experiment::LayerFull;

use crate::context::condition;

/// Name of the holdout arm in metric labels.
pub const HOLDOUT: &str = "holdout";
/// p-value below which the assignment split is declared broken.
pub const SRM_THRESHOLD: f64 = 0.001;

/// What one arm has seen since the start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArmData {
    /// Distinct units enrolled (the outcome store): what samples, the sample-ratio check and
    /// the plan count.
    pub units: u64,
    /// Their interactions.
    pub interactions: u64,
    /// Primary metric per unit over settled interactions: Σevents / Σtrials with its
    /// delta-method moments.
    pub primary: RatioMoments,
    /// Guardrail metrics (Prometheus, per interaction): events out of trials, or why
    /// unavailable.
    pub guardrails: BTreeMap<Metric, Result<Counts, String>>,
}

/// Everything one evaluation reads.
#[derive(Clone, Debug)]
pub struct ExperimentInput<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Spec.
    pub spec: &'a ExperimentSpec,
    /// Annotations (the `stop` action).
    pub annotations: &'a BTreeMap<String, String>,
    /// Current status.
    pub status: &'a ExperimentStatus,
    /// Whether the Router exists.
    pub router_exists: bool,
    /// For a Pending Experiment whose Router exists: the range of the Router's experiment layer
    /// it was given, or why none was free. `None` otherwise.
    pub allocation: Option<Result<LayerRange, LayerFull>>,
    /// Per arm (variants and `holdout`); `Err` when the outcome store could not be read.
    pub data: Result<BTreeMap<String, ArmData>, String>,
    /// Enrolled interactions not settled yet for the primary metric.
    pub unsettled: Option<u64>,
    /// Per `spec.segments` attribute, value and arm: the primary metric per unit.
    pub segments: Segments,
    /// With `spec.cuped`: per-arm CUPED statistics from the outcome store, or why they could not
    /// be read; `None` without `spec.cuped` (or before the start).
    pub cuped: Option<Result<BTreeMap<String, CupedArm>, String>>,
    /// Now.
    pub now: Timestamp,
}

/// The new status, Events to emit and annotations acted upon.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentOutput {
    /// Status to apply.
    pub status: ExperimentStatus,
    /// `(warning, reason, message)` Events.
    pub events: Vec<(bool, String, String)>,
    /// Annotations to remove.
    pub consumed_annotations: Vec<String>,
}

/// Per segment attribute, value and arm: units and per-unit moments (the outcome store's report).
pub type Segments = BTreeMap<String, BTreeMap<String, BTreeMap<String, ArmUnits>>>;

/// Settled control units needed before the plan trusts their observed variance.
pub const MIN_UNITS_FOR_VARIANCE: u64 = 200;

/// The standard deviation per unit of a ratio metric, `sqrt(n · Var(Σy/Σx))` by the delta
/// method, once there are [`MIN_UNITS_FOR_VARIANCE`] units.
fn observed_unit_sd(m: &RatioMoments) -> Option<f64> {
    if m.units < MIN_UNITS_FOR_VARIANCE {
        return None;
    }
    let (_, variance) = m.ratio_and_variance().ok()?;
    let sd = (variance * m.units as f64).sqrt();
    (sd.is_finite() && sd > 0.0).then_some(sd)
}

/// The rate of a ratio metric, when it has trials.
fn ratio(m: &RatioMoments) -> Option<f64> {
    (m.denominator > 0.0).then(|| m.numerator / m.denominator)
}

fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn ended(phase: ExperimentPhase) -> bool {
    matches!(phase, ExperimentPhase::Stopped | ExperimentPhase::Concluded)
}

/// Evaluates an Experiment.
#[allow(clippy::too_many_lines)]
pub fn evaluate(input: ExperimentInput<'_>) -> ExperimentOutput {
    let spec = input.spec;
    let now = input.now;
    let generation = input.generation;
    let mut status = input.status.clone();
    let mut events = Vec::new();
    let mut consumed = Vec::new();
    status.observed_generation = generation;
    let set =
        |status: &mut ExperimentStatus, type_: &str, ok: bool, reason: &str, message: String| {
            set_condition(
                &mut status.conditions,
                condition(type_, ok, reason, message, generation, now),
            );
        };
    let stop = |status: &mut ExperimentStatus,
                events: &mut Vec<(bool, String, String)>,
                decision: ExperimentDecision,
                reason: &str,
                message: String| {
        status.phase = ExperimentPhase::Stopped;
        status.decision = decision;
        status.message = Some(message.clone());
        events.push((
            decision != ExperimentDecision::Inconclusive,
            reason.to_owned(),
            message,
        ));
    };

    if !ended(status.phase) {
        if input
            .annotations
            .get(annotations::ACTION)
            .map(String::as_str)
            == Some(annotations::actions::STOP)
        {
            consumed.push(annotations::ACTION.to_owned());
            stop(
                &mut status,
                &mut events,
                ExperimentDecision::Inconclusive,
                "Stopped",
                "stopped by annotation (switchboard.dev/action=stop)".to_owned(),
            );
        } else if status.phase == ExperimentPhase::Pending {
            if input.router_exists {
                match &input.allocation {
                    Some(Ok(range)) => {
                        status.phase = ExperimentPhase::Running;
                        status.started_at = Some(Time(now));
                        status.allocation = Some(*range);
                        set(
                            &mut status,
                            cond::ALLOCATED,
                            true,
                            reasons::ALLOCATED,
                            format!("{} of the Router's units: buckets {range}", spec.traffic),
                        );
                        events.push((
                            false,
                            "Started".to_owned(),
                            format!(
                                "assigning {} of {}'s units (buckets {range}) to {} (holdout {})",
                                spec.traffic,
                                spec.router_ref.name,
                                spec.variants
                                    .iter()
                                    .map(|v| format!("{} {}%", v.name, v.weight))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                spec.holdout.share
                            ),
                        ));
                    }
                    Some(Err(full)) => {
                        let already = status
                            .conditions
                            .iter()
                            .any(|c| c.type_ == cond::ALLOCATED && c.reason == reasons::LAYER_FULL);
                        if !already {
                            events.push((true, reasons::LAYER_FULL.to_owned(), full.to_string()));
                        }
                        set(
                            &mut status,
                            cond::ALLOCATED,
                            false,
                            reasons::LAYER_FULL,
                            full.to_string(),
                        );
                    }
                    None => {}
                }
            } else {
                set(
                    &mut status,
                    cond::READY,
                    false,
                    reasons::REFERENCE_NOT_FOUND,
                    format!("Router {} does not exist", spec.router_ref.name),
                );
            }
        }
    }

    // A running Experiment from before ranges existed gets one now (its units are reassigned
    // once: the old assignment gave every running experiment 1/n of the units).
    if status.phase == ExperimentPhase::Running && status.allocation.is_none() {
        match &input.allocation {
            Some(Ok(range)) => {
                status.allocation = Some(*range);
                let message = format!(
                    "{} of the Router's units: buckets {range} (given while running: units assigned before were reassigned once)",
                    spec.traffic
                );
                set(
                    &mut status,
                    cond::ALLOCATED,
                    true,
                    reasons::ALLOCATED,
                    message.clone(),
                );
                events.push((true, reasons::ALLOCATED.to_owned(), message));
            }
            Some(Err(full)) => set(
                &mut status,
                cond::ALLOCATED,
                false,
                reasons::LAYER_FULL,
                format!("{full}; not served until a range is free"),
            ),
            None => {}
        }
    }

    if status.phase == ExperimentPhase::Running {
        let started = status.started_at.as_ref().map_or(now, |t| t.0);
        let deadline = SignedDuration::try_from(spec.max_duration.duration())
            .ok()
            .and_then(|d| started.checked_add(d).ok())
            .unwrap_or(Timestamp::MAX);
        match &input.data {
            Err(e) => set(
                &mut status,
                cond::METRICS_AVAILABLE,
                false,
                reasons::METRICS_UNAVAILABLE,
                e.clone(),
            ),
            Ok(data) => {
                set(
                    &mut status,
                    cond::METRICS_AVAILABLE,
                    true,
                    reasons::RECONCILED,
                    "unit-level outcomes read for every arm".to_owned(),
                );
                analyse(
                    &mut status,
                    &mut events,
                    spec,
                    data,
                    input.cuped.as_ref(),
                    input.unsettled,
                    &input.segments,
                    started,
                    now,
                    generation,
                );
            }
        }
        if status.phase == ExperimentPhase::Running && deadline <= now {
            stop(
                &mut status,
                &mut events,
                ExperimentDecision::Inconclusive,
                reasons::MAX_DURATION_REACHED,
                format!(
                    "maxDuration {} reached before the required sample size",
                    spec.max_duration
                ),
            );
        }
    }

    // Summary conditions.
    let phase = status.phase;
    let layer_full = matches!(input.allocation, Some(Err(_)));
    let (ready, r_reason, r_message) = match phase {
        ExperimentPhase::Pending if layer_full => (
            false,
            reasons::LAYER_FULL,
            "waiting for a free range of the Router's experiment layer (see the Allocated condition)"
                .to_owned(),
        ),
        ExperimentPhase::Pending => (
            false,
            reasons::WAITING_FOR_CHILDREN,
            "waiting to start".to_owned(),
        ),
        ExperimentPhase::Running => (true, reasons::RECONCILED, "running".to_owned()),
        ExperimentPhase::Concluded => (
            true,
            reasons::CONCLUDED,
            status.message.clone().unwrap_or_default(),
        ),
        ExperimentPhase::Stopped => (true, "Stopped", status.message.clone().unwrap_or_default()),
    };
    if phase != ExperimentPhase::Pending || input.router_exists {
        set(&mut status, cond::READY, ready, r_reason, r_message);
    }
    let progress = match (status.samples, status.required_samples_per_variant) {
        (Some(s), Some(r)) => format!("{s} samples; {r} required per variant"),
        _ => String::new(),
    };
    set(
        &mut status,
        cond::PROGRESSING,
        phase == ExperimentPhase::Running || phase == ExperimentPhase::Pending,
        if phase == ExperimentPhase::Running {
            "Measuring"
        } else {
            reasons::RECONCILED
        },
        progress,
    );
    let bad = matches!(
        status.decision,
        ExperimentDecision::GuardrailBreached | ExperimentDecision::InvalidSampleRatio
    );
    let degraded_reason = if !bad {
        reasons::RECONCILED
    } else if status.decision == ExperimentDecision::GuardrailBreached {
        reasons::GUARDRAIL_BREACHED
    } else {
        reasons::SAMPLE_RATIO_MISMATCH_DETECTED
    };
    let degraded_message = if bad {
        status.message.clone().unwrap_or_default()
    } else {
        String::new()
    };
    set(
        &mut status,
        cond::DEGRADED,
        bad,
        degraded_reason,
        degraded_message,
    );
    ExperimentOutput {
        status,
        events,
        consumed_annotations: consumed,
    }
}

#[allow(clippy::cast_precision_loss, clippy::too_many_arguments)]
fn analyse(
    status: &mut ExperimentStatus,
    events: &mut Vec<(bool, String, String)>,
    spec: &ExperimentSpec,
    data: &BTreeMap<String, ArmData>,
    cuped: Option<&Result<BTreeMap<String, CupedArm>, String>>,
    unsettled: Option<u64>,
    segments: &Segments,
    started: Timestamp,
    now: Timestamp,
    generation: Option<i64>,
) {
    let control_name = spec.control().unwrap_or_default().to_owned();
    let arm = |name: &str| data.get(name).cloned().unwrap_or_default();
    let control = arm(&control_name);
    let alpha = spec.alpha.fraction();
    let lower_is_better = spec.primary_metric.direction == Direction::Decrease;

    // Samples: units, the thing randomised (a user with ten conversations is one sample).
    let variant_units: Vec<u64> = spec.variants.iter().map(|v| arm(&v.name).units).collect();
    status.samples = Some(to_i64(variant_units.iter().sum::<u64>()));
    status.holdout_samples = Some(to_i64(arm(HOLDOUT).units));
    status.unsettled_interactions = unsettled.map(to_i64);

    // Sample ratio mismatch over the arms that receive units (holdout included when kept).
    let holdout = spec.holdout.share.fraction();
    let mut observed = Vec::new();
    let mut weights = Vec::new();
    for v in spec.variants.iter().filter(|v| v.weight > 0) {
        observed.push(arm(&v.name).units);
        weights.push(f64::from(v.weight) / 100.0 * (1.0 - holdout));
    }
    if holdout > 0.0 {
        observed.push(arm(HOLDOUT).units);
        weights.push(holdout);
    }
    let srm = sequential_sample_ratio_mismatch(&observed, &weights, SRM_THRESHOLD).ok();
    status.srm = srm.as_ref().map(|s| SampleRatioCheck {
        p_value: s.p_value,
        detected: s.mismatch,
    });
    let srm_detected = srm.as_ref().is_some_and(|s| s.mismatch);
    set_condition(
        &mut status.conditions,
        condition(
            cond::SAMPLE_RATIO_MISMATCH,
            srm_detected,
            if srm_detected {
                reasons::SAMPLE_RATIO_MISMATCH_DETECTED
            } else {
                reasons::RECONCILED
            },
            srm.as_ref().map_or_else(
                || "no units yet".to_owned(),
                |s| {
                    format!(
                        "anytime-valid p = {:.4} (sequential test, valid at every analysis) over observed units {:?}",
                        s.p_value, s.observed
                    )
                },
            ),
            generation,
            now,
        ),
    );

    // Per-variant estimates against the control, per unit (delta method: a unit's interactions
    // are not independent trials), with intervals that hold together across the k treatment
    // variants (Bonferroni) and decisions on Holm-adjusted p-values.
    let comparisons = spec
        .variants
        .iter()
        .filter(|v| v.name != control_name)
        .count()
        .max(1);
    let interval_alpha = alpha / comparisons as f64;
    status.per_variant = spec
        .variants
        .iter()
        .map(|v| {
            let d = arm(&v.name);
            let estimate = (v.name != control_name)
                .then(|| difference_of_ratios(&control.primary, &d.primary, interval_alpha).ok())
                .flatten();
            VariantResult {
                name: v.name.clone(),
                units: to_i64(d.units),
                trials: d.primary.denominator.round() as i64,
                events: d.primary.numerator.round() as i64,
                rate: ratio(&d.primary).unwrap_or(0.0),
                p_value: estimate.map(|e| e.p_value),
                adjusted_p_value: None,
                estimate: estimate.map(|e| e.difference),
                ci_low: estimate.map(|e| e.interval.lower),
                ci_high: estimate.map(|e| e.interval.upper),
                unadjusted_estimate: None,
                variance_reduction: None,
                units_with_covariate: None,
            }
        })
        .collect();
    let variance_reduction = spec.cuped.as_ref().and_then(|_| {
        apply_cuped(
            status,
            spec,
            &control_name,
            cuped,
            interval_alpha,
            generation,
            now,
        )
    });
    let tested: Vec<usize> = (0..status.per_variant.len())
        .filter(|&i| status.per_variant[i].p_value.is_some())
        .collect();
    let adjusted = holm(
        &tested
            .iter()
            .filter_map(|&i| status.per_variant[i].p_value)
            .collect::<Vec<_>>(),
    );
    for (&i, p) in tested.iter().zip(adjusted) {
        status.per_variant[i].adjusted_p_value = Some(p);
    }

    status.per_segment = segment_results(spec, &control_name, segments, alpha);

    // Required sample size: the holdout's observed rate once available, else the expected one.
    let observed_baseline = ratio(&arm(HOLDOUT).primary).filter(|r| *r > 0.0 && *r < 1.0);
    let baseline = observed_baseline
        .or_else(|| {
            spec.expected_baseline_rate
                .as_ref()
                .map(switchboard_crds::Percent::fraction)
        })
        .or_else(|| ratio(&control.primary).filter(|r| *r > 0.0 && *r < 1.0));
    let required = baseline.and_then(|baseline| {
        let mde = &spec.minimum_detectable_effect;
        let sign = if lower_is_better { -1.0 } else { 1.0 };
        let effect = match (&mde.absolute, &mde.relative) {
            (Some(a), _) => Effect::Absolute(sign * a.fraction()),
            (None, Some(r)) => Effect::Relative(sign * r.fraction()),
            (None, None) => return None,
        };
        let mut inputs = PlanInputs::new(
            planning::Metric::Proportion {
                baseline_rate: baseline,
            },
            effect,
        );
        inputs.alpha = alpha;
        inputs.power = spec.power.fraction();
        inputs.treatment_variants =
            u32::try_from(spec.variants.len().saturating_sub(1).max(1)).unwrap_or(1);
        // CUPED shrinks the variance, hence the sample needed, by the observed ρ² (capped: an
        // estimate from few units should not promise a tiny plan).
        inputs.variance_reduction = variance_reduction.unwrap_or(0.0).clamp(0.0, 0.9);
        // A unit's several interactions are not one Bernoulli trial: once the control has
        // enough settled units, the plan is scaled by the design effect, the observed per-unit
        // variance of the ratio (delta method) over the binomial variance it assumed.
        let deff = observed_unit_sd(&control.primary).map_or(1.0, |sd| {
            (sd * sd / (baseline * (1.0 - baseline))).clamp(0.1, 10.0)
        });
        plan(&inputs).ok().map(|p| {
            let scale = |n: u64| (n as f64 * deff).ceil() as u64;
            switchboard_analysis::Plan {
                units_per_variant: scale(p.units_per_variant),
                outcomes_per_variant: scale(p.outcomes_per_variant),
                total_units: scale(p.units_per_variant) * u64::from(p.arms),
                ..p
            }
        })
    });
    status.required_samples_per_variant =
        required.map(|p| i64::try_from(p.units_per_variant).unwrap_or(i64::MAX));

    // ETA at the rate seen so far.
    let elapsed_days = now.duration_since(started).as_secs_f64() / 86_400.0;
    let total: u64 = variant_units.iter().sum();
    status.eta = required.and_then(|p| {
        let per_day = total as f64 / elapsed_days.max(1e-9);
        let variant_weights: Vec<f64> = spec
            .variants
            .iter()
            .map(|v| f64::from(v.weight.max(1)))
            .collect();
        let eta = estimate_eta(p.units_per_variant, per_day, &variant_weights).ok()?;
        let remaining = (eta.days - elapsed_days).max(0.0);
        let d = SignedDuration::try_from_secs_f64(remaining * 86_400.0).ok()?;
        now.checked_add(d).ok().map(Time)
    });

    if srm_detected {
        let message = format!(
            "sample ratio mismatch (p = {:.2e}): assignment does not follow the weights; results are not trustworthy",
            srm.as_ref().map_or(0.0, |s| s.p_value)
        );
        status.phase = ExperimentPhase::Stopped;
        status.decision = ExperimentDecision::InvalidSampleRatio;
        status.message = Some(message.clone());
        events.push((
            true,
            reasons::SAMPLE_RATIO_MISMATCH_DETECTED.to_owned(),
            message,
        ));
        return;
    }

    // Guardrails: every variant against the control.
    for g in &spec.guardrails {
        for v in spec.variants.iter().filter(|v| v.name != control_name) {
            let (Some(Ok(base)), Some(Ok(cand))) = (
                control.guardrails.get(&g.metric),
                arm(&v.name).guardrails.get(&g.metric).cloned(),
            ) else {
                continue;
            };
            let flip = |c: Counts| Counts {
                events: c.trials.saturating_sub(c.events),
                trials: c.trials,
            };
            let (base, cand) = if g.metric.lower_is_better() {
                (*base, cand)
            } else {
                (flip(*base), flip(cand))
            };
            let Ok(policy) =
                GuardrailPolicy::new(g.max_relative_increase.fraction()).map(|p| GuardrailPolicy {
                    alpha: 1.0 - g.confidence.fraction(),
                    min_trials_per_arm: u64::try_from(g.min_samples).unwrap_or(0),
                    ..p
                })
            else {
                continue;
            };
            if let Ok(e) = evaluate_guardrail(&policy, base, cand)
                && e.decision == GuardrailDecision::Breach
            {
                let message = format!("variant {}: {}: {}", v.name, g.metric.as_str(), e.message);
                status.phase = ExperimentPhase::Stopped;
                status.decision = ExperimentDecision::GuardrailBreached;
                status.message = Some(message.clone());
                events.push((true, reasons::GUARDRAIL_BREACHED.to_owned(), message));
                return;
            }
        }
    }

    // Conclude at the planned size, counted in units whose outcomes have settled.
    let Some(required) = status.required_samples_per_variant else {
        return;
    };
    let reached = spec
        .variants
        .iter()
        .all(|v| to_i64(arm(&v.name).primary.units) >= required);
    if !reached {
        return;
    }
    let significant = |v: &VariantResult| v.adjusted_p_value.is_some_and(|p| p < alpha);
    let improves = |v: &VariantResult| {
        v.estimate
            .is_some_and(|e| if lower_is_better { e < 0.0 } else { e > 0.0 })
    };
    let better = |v: &VariantResult| significant(v) && improves(v);
    let worse = |v: &VariantResult| significant(v) && !improves(v);
    let treatments: Vec<&VariantResult> = status
        .per_variant
        .iter()
        .filter(|v| v.name != control_name)
        .collect();
    let winner = treatments
        .iter()
        .filter(|v| better(v))
        .max_by(|a, b| {
            let key = |v: &VariantResult| {
                v.estimate.unwrap_or(0.0) * if lower_is_better { -1.0 } else { 1.0 }
            };
            key(a).total_cmp(&key(b))
        })
        .map(|v| (*v).clone());
    let summary = |v: &VariantResult| {
        format!(
            "{}: {:+.2} pts {}, {}% CI [{:+.2}, {:+.2}], Holm-adjusted p = {:.3}",
            v.name,
            v.estimate.unwrap_or(0.0) * 100.0,
            spec.primary_metric.name.as_str(),
            (1.0 - interval_alpha) * 100.0,
            v.ci_low.unwrap_or(0.0) * 100.0,
            v.ci_high.unwrap_or(0.0) * 100.0,
            v.adjusted_p_value.unwrap_or(1.0)
        )
    };
    let mut message = treatments
        .iter()
        .map(|v| summary(v))
        .collect::<Vec<_>>()
        .join("; ");
    if treatments.len() > 1 {
        message.push_str(&format!(
            " ({} comparisons: family-wise alpha {}, Holm)",
            treatments.len(),
            spec.alpha
        ));
    }
    status.decision = if let Some(w) = &winner {
        status.winner = Some(w.name.clone());
        ExperimentDecision::ShipVariant
    } else if treatments.iter().all(|v| worse(v)) {
        ExperimentDecision::KeepControl
    } else {
        ExperimentDecision::Inconclusive
    };
    status.phase = ExperimentPhase::Concluded;
    status.message = Some(message.clone());
    events.push((
        false,
        reasons::CONCLUDED.to_owned(),
        format!("{:?}: {message}", status.decision),
    ));
}

/// Per segment value, each variant's rate and its unit-level difference to the control's within
/// the segment, at `1 − alpha` (exploratory: not corrected for the number of segments).
fn segment_results(
    spec: &ExperimentSpec,
    control_name: &str,
    segments: &Segments,
    alpha: f64,
) -> Vec<SegmentResult> {
    let metric = spec.primary_metric.name.as_str();
    let moments = |arms: &BTreeMap<String, ArmUnits>, name: &str| {
        arms.get(name)
            .and_then(|a| a.metrics.get(metric))
            .copied()
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for attribute in &spec.segments {
        for (value, arms) in segments.get(attribute).into_iter().flatten() {
            let control = moments(arms, control_name);
            out.push(SegmentResult {
                attribute: attribute.clone(),
                value: value.clone(),
                variants: spec
                    .variants
                    .iter()
                    .map(|v| {
                        let m = moments(arms, &v.name);
                        let e = (v.name != control_name)
                            .then(|| difference_of_ratios(&control, &m, alpha).ok())
                            .flatten();
                        SegmentVariant {
                            name: v.name.clone(),
                            units: to_i64(m.units),
                            rate: ratio(&m).unwrap_or(0.0),
                            estimate: e.map(|e| e.difference),
                            ci_low: e.map(|e| e.interval.lower),
                            ci_high: e.map(|e| e.interval.upper),
                        }
                    })
                    .collect(),
            });
        }
    }
    out
}

/// With `spec.cuped`: replaces each treatment variant's estimate by the CUPED-adjusted
/// comparison of per-unit rates (Deng, Xu, Kohavi & Walker 2013) where the outcome store's data
/// allows, keeps the unadjusted per-interaction estimate where it does not, and says which on the
/// `CupedApplied` condition. Returns the smallest variance reduction when every treatment variant
/// was adjusted (the plan shrinks by it).
fn apply_cuped(
    status: &mut ExperimentStatus,
    spec: &ExperimentSpec,
    control_name: &str,
    cuped: Option<&Result<BTreeMap<String, CupedArm>, String>>,
    alpha: f64,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<f64> {
    let covariate = spec
        .cuped
        .as_ref()
        .and_then(|c| c.covariate)
        .unwrap_or(spec.primary_metric.name);
    let outcome: Result<Vec<f64>, String> = match cuped {
        None => Err("per-unit outcomes not read yet".to_owned()),
        Some(Err(e)) => Err(format!("per-unit outcomes unavailable: {e}")),
        Some(Ok(arms)) => match arms.get(control_name) {
            None => Err(format!(
                "the outcome store has no unit of the control variant {control_name} (do answer requests carry a unit id?)"
            )),
            Some(control) => {
                let mut reductions = Vec::new();
                let mut problems = Vec::new();
                for v in &mut status.per_variant {
                    let arm = arms.get(&v.name);
                    v.units_with_covariate =
                        arm.map(|a| i64::try_from(a.units_with_covariate).unwrap_or(i64::MAX));
                    if v.name == control_name {
                        continue;
                    }
                    let Some(arm) = arm else {
                        problems.push(format!("{}: no units in the outcome store", v.name));
                        continue;
                    };
                    match cuped_difference(&control.moments, &arm.moments, alpha) {
                        Ok(e) => {
                            v.unadjusted_estimate = Some(e.unadjusted.difference);
                            v.estimate = Some(e.adjusted.difference);
                            v.ci_low = Some(e.adjusted.interval.lower);
                            v.ci_high = Some(e.adjusted.interval.upper);
                            v.variance_reduction = Some(e.variance_reduction);
                            reductions.push(e.variance_reduction);
                        }
                        Err(e) => problems.push(format!("{}: {e}", v.name)),
                    }
                }
                if problems.is_empty() {
                    Ok(reductions)
                } else {
                    Err(problems.join("; "))
                }
            }
        },
    };
    let (ok, reason, message, reduction) = match outcome {
        Ok(reductions) => {
            let least = reductions.iter().copied().fold(f64::INFINITY, f64::min);
            let least = least.is_finite().then_some(least);
            (
                true,
                reasons::CUPED_ADJUSTED,
                format!(
                    "estimates compare per-unit {} adjusted by each unit's pre-period {} ({} preperiod); variance reduced by {:.0}% at least",
                    spec.primary_metric.name.as_str(),
                    covariate.as_str(),
                    spec.cuped
                        .as_ref()
                        .map(|c| c.preperiod.to_string())
                        .unwrap_or_default(),
                    least.unwrap_or(0.0) * 100.0
                ),
                least,
            )
        }
        Err(e) => (
            false,
            reasons::CUPED_UNAVAILABLE,
            format!("{e}; estimates without CUPED are shown where it could not be applied"),
            None,
        ),
    };
    set_condition(
        &mut status.conditions,
        condition(cond::CUPED_APPLIED, ok, reason, message, generation, now),
    );
    reduction
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(guardrail: bool) -> ExperimentSpec {
        let mut v = serde_json::json!({
            "routerRef": {"name": "frontline"},
            "salt": "s1",
            "holdout": {"share": "10%"},
            "variants": [{"name": "control", "weight": 50}, {"name": "rewrite", "weight": 50}],
            "primaryMetric": {"name": "escalationRate", "direction": "Decrease"},
            "minimumDetectableEffect": {"absolute": "5%"},
            "expectedBaselineRate": "20%",
        });
        if guardrail {
            v["guardrails"] = serde_json::json!([{"metric": "csatLow", "maxRelativeIncrease": "5%", "minSamples": 100}]);
        }
        serde_json::from_value(v).unwrap()
    }

    /// An arm of `units` units with one interaction each, `escalations` of them escalated.
    fn arm(units: u64, escalations: u64, csat_low: u64) -> ArmData {
        ArmData {
            units,
            interactions: units,
            primary: RatioMoments::from_units(
                (0..units).map(|u| (if u < escalations { 1.0 } else { 0.0 }, 1.0)),
            ),
            guardrails: [(
                Metric::CsatLow,
                Ok(Counts {
                    events: csat_low,
                    trials: units / 2,
                }),
            )]
            .into(),
        }
    }

    /// One evaluation at second `at`: the whole layer free, no CUPED, no segments.
    fn input<'a>(
        spec: &'a ExperimentSpec,
        annotations: &'a BTreeMap<String, String>,
        status: &'a ExperimentStatus,
        data: Result<BTreeMap<String, ArmData>, String>,
        at: i64,
    ) -> ExperimentInput<'a> {
        ExperimentInput {
            generation: Some(1),
            spec,
            annotations,
            status,
            router_exists: true,
            allocation: Some(Ok(LayerRange {
                start: 0,
                end: 10_000,
            })),
            data,
            unsettled: None,
            segments: Segments::new(),
            cuped: None,
            now: Timestamp::from_second(at).unwrap(),
        }
    }

    fn run(
        spec: &ExperimentSpec,
        status: &ExperimentStatus,
        data: BTreeMap<String, ArmData>,
        at: i64,
    ) -> ExperimentOutput {
        evaluate(input(spec, &BTreeMap::new(), status, Ok(data), at))
    }

    #[test]
    fn a_full_layer_keeps_the_experiment_pending_with_the_reason() {
        let spec = spec(false);
        let full = switchboard_policy::experiment::allocate(
            1.0,
            &[LayerRange {
                start: 0,
                end: 2_000,
            }],
        )
        .unwrap_err();
        let none = BTreeMap::new();
        let pending = ExperimentStatus::default();
        fn input<'a>(
            spec: &'a ExperimentSpec,
            none: &'a BTreeMap<String, String>,
            status: &'a ExperimentStatus,
            full: &LayerFull,
        ) -> ExperimentInput<'a> {
            ExperimentInput {
                generation: Some(1),
                spec,
                annotations: none,
                status,
                router_exists: true,
                allocation: Some(Err(full.clone())),
                data: Ok(BTreeMap::new()),
                unsettled: None,
                segments: Segments::new(),
                cuped: None,
                now: Timestamp::from_second(0).unwrap(),
            }
        }
        let out = evaluate(input(&spec, &none, &pending, &full));
        assert_eq!(out.status.phase, ExperimentPhase::Pending);
        assert_eq!(out.status.allocation, None);
        let c = switchboard_crds::find_condition(&out.status.conditions, cond::ALLOCATED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "LayerFull")
        );
        assert!(
            c.message
                .contains("largest free range is 8000 buckets (80%)"),
            "{}",
            c.message
        );
        let ready = switchboard_crds::find_condition(&out.status.conditions, cond::READY).unwrap();
        assert_eq!(ready.reason, "LayerFull");
        assert_eq!(out.events.len(), 1);
        // Said once, not at every analysis.
        assert!(
            evaluate(input(&spec, &none, &out.status, &full))
                .events
                .is_empty()
        );
    }

    #[test]
    fn segments_get_their_own_estimates() {
        let mut spec = spec(false);
        spec.segments = vec!["channel".into()];
        let running = run(&spec, &ExperimentStatus::default(), BTreeMap::new(), 0).status;
        let arm_units = |units: u64, escalations: u64| ArmUnits {
            units,
            interactions: units,
            metrics: [(
                "escalationRate".to_owned(),
                arm(units, escalations, 0).primary,
            )]
            .into(),
        };
        let segments: Segments = [(
            "channel".to_owned(),
            [
                (
                    "chat".to_owned(),
                    [
                        ("control".to_owned(), arm_units(400, 80)),
                        ("rewrite".to_owned(), arm_units(400, 40)),
                    ]
                    .into(),
                ),
                (
                    "email".to_owned(),
                    [
                        ("control".to_owned(), arm_units(100, 20)),
                        ("rewrite".to_owned(), arm_units(100, 20)),
                    ]
                    .into(),
                ),
            ]
            .into(),
        )]
        .into();
        let data: BTreeMap<_, _> = [
            ("control".to_owned(), arm(500, 100, 0)),
            ("rewrite".to_owned(), arm(500, 60, 0)),
            (HOLDOUT.to_owned(), arm(111, 22, 0)),
        ]
        .into();
        let none = BTreeMap::new();
        let out = evaluate(ExperimentInput {
            segments,
            ..input(&spec, &none, &running, Ok(data), 3600)
        });
        let s = &out.status.per_segment;
        assert_eq!(s.len(), 2);
        let chat = s.iter().find(|r| r.value == "chat").unwrap();
        let rewrite = &chat.variants[1];
        assert_eq!((rewrite.name.as_str(), rewrite.units), ("rewrite", 400));
        assert!((rewrite.estimate.unwrap() + 0.10).abs() < 1e-9);
        assert!(rewrite.ci_high.unwrap() < 0.0);
        let email = s.iter().find(|r| r.value == "email").unwrap();
        assert!(email.variants[1].estimate.unwrap().abs() < 1e-9);
        assert!(
            email.variants[0].estimate.is_none(),
            "the control has no estimate"
        );
    }

    #[test]
    fn a_running_experiment_without_a_range_gets_one_and_says_so() {
        let spec = spec(false);
        let mut running = run(&spec, &ExperimentStatus::default(), BTreeMap::new(), 0).status;
        running.allocation = None;
        let out = run(&spec, &running, BTreeMap::new(), 60);
        assert_eq!(out.status.phase, ExperimentPhase::Running);
        assert_eq!(out.status.allocation.map(|r| r.len()), Some(10_000));
        assert!(out.events.iter().any(|e| e.1 == reasons::ALLOCATED));
    }

    #[test]
    fn starts_measures_and_concludes_at_the_planned_size() {
        let spec = spec(false);
        let started = run(&spec, &ExperimentStatus::default(), BTreeMap::new(), 0);
        assert_eq!(started.status.phase, ExperimentPhase::Running);
        assert_eq!(started.events[0].1, "Started");
        assert_eq!(
            started.status.allocation,
            Some(LayerRange {
                start: 0,
                end: 10_000
            })
        );

        let early: BTreeMap<_, _> = [
            ("control".to_owned(), arm(450, 90, 0)),
            ("rewrite".to_owned(), arm(450, 60, 0)),
            (HOLDOUT.to_owned(), arm(100, 20, 0)),
        ]
        .into();
        let out = run(&spec, &started.status, early, 3600);
        let s = &out.status;
        assert_eq!(s.phase, ExperimentPhase::Running);
        assert_eq!((s.samples, s.holdout_samples), (Some(900), Some(100)));
        let required = s.required_samples_per_variant.unwrap();
        assert!((800..1300).contains(&required), "{required}");
        assert!(s.eta.is_some());
        assert!(!s.srm.as_ref().unwrap().detected);
        let rewrite = &s.per_variant[1];
        assert!((rewrite.estimate.unwrap() + 0.0667).abs() < 1e-3);

        let done: BTreeMap<_, _> = [
            ("control".to_owned(), arm(2250, 450, 0)),
            ("rewrite".to_owned(), arm(2250, 300, 0)),
            (HOLDOUT.to_owned(), arm(500, 100, 0)),
        ]
        .into();
        let out = run(&spec, &out.status, done, 7200);
        assert_eq!(out.status.phase, ExperimentPhase::Concluded);
        assert_eq!(out.status.decision, ExperimentDecision::ShipVariant);
        assert_eq!(out.status.winner.as_deref(), Some("rewrite"));
    }

    #[test]
    fn a_broken_split_or_a_guardrail_breach_stops_it() {
        let spec = spec(true);
        let running = run(&spec, &ExperimentStatus::default(), BTreeMap::new(), 0).status;
        let skewed: BTreeMap<_, _> = [
            ("control".to_owned(), arm(900, 90, 0)),
            ("rewrite".to_owned(), arm(500, 50, 0)),
            (HOLDOUT.to_owned(), arm(150, 15, 0)),
        ]
        .into();
        let out = run(&spec, &running, skewed, 60);
        assert_eq!(out.status.decision, ExperimentDecision::InvalidSampleRatio);
        assert_eq!(out.status.phase, ExperimentPhase::Stopped);
        assert!(switchboard_crds::is_condition_true(
            &out.status.conditions,
            cond::SAMPLE_RATIO_MISMATCH
        ));

        let breach: BTreeMap<_, _> = [
            ("control".to_owned(), arm(4500, 900, 100)),
            ("rewrite".to_owned(), arm(4500, 900, 400)),
            (HOLDOUT.to_owned(), arm(1000, 200, 20)),
        ]
        .into();
        let out = run(&spec, &running, breach, 60);
        assert_eq!(
            out.status.decision,
            ExperimentDecision::GuardrailBreached,
            "{:?}",
            out.status.message
        );
        assert!(
            out.events
                .iter()
                .any(|e| e.0 && e.1 == reasons::GUARDRAIL_BREACHED)
        );
        assert!(switchboard_crds::is_condition_true(
            &out.status.conditions,
            cond::DEGRADED
        ));
    }

    #[test]
    fn missing_metrics_hold_and_stop_annotation_acts_once() {
        let spec = spec(false);
        let running = run(&spec, &ExperimentStatus::default(), BTreeMap::new(), 0).status;
        let none = BTreeMap::new();
        let out = evaluate(input(
            &spec,
            &none,
            &running,
            Err("outcome store unreachable".to_owned()),
            60,
        ));
        assert_eq!(out.status.phase, ExperimentPhase::Running);
        let c = switchboard_crds::find_condition(&out.status.conditions, cond::METRICS_AVAILABLE)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::METRICS_UNAVAILABLE)
        );

        let stop = BTreeMap::from([(annotations::ACTION.to_owned(), "stop".to_owned())]);
        let out = evaluate(input(&spec, &stop, &running, Err("unused".to_owned()), 60));
        assert_eq!(out.status.phase, ExperimentPhase::Stopped);
        assert_eq!(out.consumed_annotations, [annotations::ACTION]);
        // Past maxDuration (14 days by default) it stops as inconclusive.
        let late = run(&spec, &running, BTreeMap::new(), 15 * 86_400);
        assert_eq!(late.status.decision, ExperimentDecision::Inconclusive);
        assert_eq!(late.status.phase, ExperimentPhase::Stopped);
    }

    use crate::experiment::simulation::Rng;

    /// Simulated units of one arm: each has its own escalation propensity, seen through 20
    /// pre-period interactions (the covariate) and 5 interactions during the experiment (shifted
    /// by `effect`). Returns the store's unit-level data and CUPED sums.
    fn simulate_arm(rng: &mut Rng, units: usize, effect: f64) -> (ArmData, CupedArm) {
        let mut pairs = Vec::new();
        let mut per_unit = Vec::new();
        for _ in 0..units {
            let propensity = 0.05 + 0.5 * rng.uniform();
            let pre = f64::from(rng.binomial(20, propensity)) / 20.0;
            let during = rng.binomial(5, (propensity + effect).clamp(0.0, 1.0));
            per_unit.push((f64::from(during), 5.0));
            pairs.push((f64::from(during) / 5.0, pre));
        }
        let data = ArmData {
            units: units as u64,
            interactions: 5 * units as u64,
            primary: RatioMoments::from_units(per_unit),
            guardrails: BTreeMap::new(),
        };
        let cuped = CupedArm {
            moments: switchboard_analysis::CupedMoments::from_units(pairs),
            units_with_covariate: units as u64,
        };
        (data, cuped)
    }

    fn cuped_spec() -> ExperimentSpec {
        let mut s = spec(false);
        s.cuped = Some(serde_json::from_value(serde_json::json!({"preperiod": "336h"})).unwrap());
        s
    }

    #[test]
    fn cuped_adjusts_the_estimate_and_narrows_its_interval_on_simulated_units() {
        let spec = cuped_spec();
        let running = run(&spec, &ExperimentStatus::default(), BTreeMap::new(), 0).status;
        let mut rng = Rng(7);
        let (control, control_cuped) = simulate_arm(&mut rng, 1500, 0.0);
        let (rewrite, rewrite_cuped) = simulate_arm(&mut rng, 1500, -0.04);
        let (holdout, _) = simulate_arm(&mut rng, 330, 0.0);
        let data: BTreeMap<_, _> = [
            ("control".to_owned(), control),
            ("rewrite".to_owned(), rewrite),
            (HOLDOUT.to_owned(), holdout),
        ]
        .into();
        let arms: BTreeMap<_, _> = [
            ("control".to_owned(), control_cuped),
            ("rewrite".to_owned(), rewrite_cuped),
        ]
        .into();
        let no_annotations = BTreeMap::new();
        let with = |cuped| ExperimentInput {
            cuped,
            ..input(&spec, &no_annotations, &running, Ok(data.clone()), 3600)
        };
        let adjusted = evaluate(with(Some(Ok(arms))));
        let v = &adjusted.status.per_variant[1];
        let (low, high) = (v.ci_low.unwrap(), v.ci_high.unwrap());
        // The true effect is inside the adjusted interval, which excludes zero.
        assert!(low < -0.04 && -0.04 < high, "[{low}, {high}]");
        assert!(high < 0.0, "[{low}, {high}]");
        // The pre-period covariate explains a good part of the per-unit variance.
        let reduction = v.variance_reduction.unwrap();
        assert!(reduction > 0.2, "variance reduction {reduction}");
        assert!(v.unadjusted_estimate.is_some());
        assert_eq!(v.units_with_covariate, Some(1500));
        let c = switchboard_crds::find_condition(&adjusted.status.conditions, cond::CUPED_APPLIED)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::CUPED_ADJUSTED)
        );

        // Without the pre-period data: the unadjusted unit-level estimate, a larger plan, and a
        // condition that says why.
        let fallback = evaluate(with(Some(Err("connection refused".to_owned()))));
        let u = &fallback.status.per_variant[1];
        assert!(u.variance_reduction.is_none() && u.estimate.is_some());
        assert!(
            adjusted.status.required_samples_per_variant.unwrap()
                < fallback.status.required_samples_per_variant.unwrap()
        );
        let c = switchboard_crds::find_condition(&fallback.status.conditions, cond::CUPED_APPLIED)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::CUPED_UNAVAILABLE)
        );
        assert!(c.message.contains("connection refused"), "{}", c.message);
    }

    #[test]
    fn cuped_intervals_cover_the_true_effect_and_are_narrower_across_simulations() {
        // 200 simulated experiments with a true effect of -3 points: the adjusted 95% interval
        // covers it about 95% of the time, and is narrower than the unadjusted one on average.
        let mut rng = Rng(11);
        let (mut covered, mut adjusted_width, mut unadjusted_width) = (0, 0.0, 0.0);
        let runs = 200;
        for _ in 0..runs {
            let (_, c) = simulate_arm(&mut rng, 400, 0.0);
            let (_, t) = simulate_arm(&mut rng, 400, -0.03);
            let e = cuped_difference(&c.moments, &t.moments, 0.05).unwrap();
            let i = e.adjusted.interval;
            covered += usize::from(i.lower <= -0.03 && -0.03 <= i.upper);
            adjusted_width += i.upper - i.lower;
            unadjusted_width += e.unadjusted.interval.upper - e.unadjusted.interval.lower;
        }
        let coverage = covered as f64 / f64::from(runs);
        assert!((0.91..=0.99).contains(&coverage), "coverage {coverage}");
        assert!(
            adjusted_width < 0.9 * unadjusted_width,
            "{adjusted_width} vs {unadjusted_width}"
        );
    }
}
