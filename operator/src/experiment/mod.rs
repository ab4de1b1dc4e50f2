//! Experiment controller: phase handling, per-arm counts from the metrics source, estimates and
//! CIs, sample-ratio-mismatch check, required sample size and ETA, automatic stop on a guardrail
//! breach, conclusion at the planned size. The Router controller compiles Running Experiments
//! into the RuntimeConfig.

pub mod analysis;
#[cfg(test)]
mod simulation;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use switchboard_analysis::Counts;
use switchboard_crds::{
    Experiment, Guardrail, Router, Validate,
    conditions::{self as cond},
    experiment::{ExperimentPhase, LayerRange},
};
use switchboard_policy::experiment::allocate;

use crate::{
    context::{Context, apply_status, condition, describe, namespaced_name},
    error::{Error, Result},
    observe::{Arm, count, metric_queries},
    ports::{CupedRequest, MetricsSource, UnitsRequest},
};

use self::analysis::{ArmData, ExperimentInput, HOLDOUT, Segments, evaluate};

/// Controller name in metrics.
pub const CONTROLLER: &str = "experiment";

/// Reconciles one Experiment.
pub async fn reconcile(x: Arc<Experiment>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer(CONTROLLER);
    let result = reconcile_inner(&x, &ctx).await;
    if let Err(error) = &result {
        crate::context::report_failure(x.as_ref(), &ctx, error).await;
    }
    ctx.record_reconcile(CONTROLLER, &describe(x.as_ref()), &result);
    result
}

/// Retries with exponential backoff.
pub use crate::context::error_policy;

/// Counts of `metric` for `arm`; no series means zero (the arm has had no such traffic yet).
async fn counts_or_zero(
    source: &dyn MetricsSource,
    guardrail: &Guardrail,
    arm: &Arm,
    window: Duration,
) -> Result<Counts, String> {
    let (events_q, trials_q) = metric_queries(guardrail.metric, arm, window, guardrail.settle())?;
    let trials = count(source, &trials_q).await?.unwrap_or(0);
    let events = count(source, &events_q).await?.unwrap_or(0);
    Ok(Counts {
        events: events.min(trials),
        trials,
    })
}

/// Reads every arm's data since the start: units, interactions and the primary metric per unit
/// from the Router's outcome store, guardrail counts from the metrics source. The number of
/// enrolled interactions not settled yet comes along.
pub async fn arm_data(
    ctx: &Context,
    x: &Experiment,
    namespace: &str,
    started_at: i64,
    now: i64,
    window: Duration,
) -> Result<(BTreeMap<String, ArmData>, u64, Segments), String> {
    let name = x.metadata.name.clone().unwrap_or_default();
    let router = &x.spec.router_ref.name;
    let primary = x.spec.primary_metric.name;
    let request = UnitsRequest {
        namespace: namespace.to_owned(),
        router: router.clone(),
        experiment: name.clone(),
        metrics: vec![(primary, x.spec.primary_metric.settle())],
        segments: x.spec.segments.clone(),
        started_at,
        until: now,
    };
    let units = ctx
        .outcomes
        .units(&request)
        .await
        .map_err(|e| format!("unit-level outcomes: {e}"))?;
    let mut arms: Vec<String> = x.spec.variants.iter().map(|v| v.name.clone()).collect();
    arms.push(HOLDOUT.to_owned());
    let mut out = BTreeMap::new();
    for arm_name in arms {
        let reported = units.arms.get(&arm_name).cloned().unwrap_or_default();
        let arm = Arm::ExperimentArm {
            router: format!("{namespace}/{router}"),
            experiment: name.clone(),
            arm: arm_name.clone(),
        };
        let mut guardrails = BTreeMap::new();
        for g in &x.spec.guardrails {
            guardrails.insert(
                g.metric,
                counts_or_zero(ctx.source.as_ref(), g, &arm, window).await,
            );
        }
        out.insert(
            arm_name,
            ArmData {
                units: reported.units,
                interactions: reported.interactions,
                primary: reported
                    .metrics
                    .get(primary.as_str())
                    .copied()
                    .unwrap_or_default(),
                guardrails,
            },
        );
    }
    let unsettled = units
        .unsettled
        .get(primary.as_str())
        .copied()
        .unwrap_or_default();
    Ok((out, unsettled, units.segments))
}

/// The ranges of `router`'s experiment layer held by its running Experiments other than `name`,
/// read from the API server (not a cache: the caller holds [`Context::layer_allocation`], and a
/// range written a moment ago must be seen).
async fn occupied_ranges(
    ctx: &Context,
    namespace: &str,
    router: &str,
    name: &str,
) -> Result<Vec<LayerRange>> {
    let experiments = Api::<Experiment>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list", format!("Experiments in {namespace}"), e))?;
    Ok(experiments
        .items
        .iter()
        .filter(|o| o.spec.router_ref.name == router && o.metadata.name.as_deref() != Some(name))
        .filter_map(|o| o.status.as_ref())
        .filter(|s| s.phase == ExperimentPhase::Running)
        .filter_map(|s| s.allocation)
        .collect())
}

async fn reconcile_inner(x: &Experiment, ctx: &Context) -> Result<Action> {
    let (namespace, name) = namespaced_name(x)?;
    x.spec.validate().map_err(|source| Error::InvalidSpec {
        object: describe(x),
        source,
    })?;
    let router_name = &x.spec.router_ref.name;
    let router_exists = Api::<Router>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(router_name)
        .await
        .map_err(|e| Error::kube("get", format!("Router {namespace}/{router_name}"), e))?
        .is_some();
    let mut previous = x.status.clone().unwrap_or_default();
    // A start takes a range of the Router's layer (so does a running Experiment from before
    // ranges existed): held from reading the others' ranges until this one's is written.
    let needs_range = router_exists
        && (previous.phase == ExperimentPhase::Pending
            || (previous.phase == ExperimentPhase::Running && previous.allocation.is_none()));
    let _allocating = if needs_range {
        Some(ctx.layer_allocation.lock().await)
    } else {
        None
    };
    let mut allocation = None;
    if needs_range {
        // The cache may lag behind the range this Experiment was given a moment ago: the API
        // server's copy decides, so a range is never given twice.
        let fresh = Api::<Experiment>::namespaced(ctx.client.clone(), &namespace)
            .get(&name)
            .await
            .map_err(|e| Error::kube("get", describe(x), e))?
            .status
            .unwrap_or_default();
        if fresh.allocation.is_some() || fresh.phase != previous.phase {
            previous = fresh;
        } else {
            let occupied = occupied_ranges(ctx, &namespace, router_name, &name).await?;
            allocation = Some(allocate(x.spec.traffic.fraction(), &occupied));
        }
    }
    let now = ctx.now();
    let data = if previous.phase == ExperimentPhase::Running {
        let started = previous.started_at.as_ref().map_or(now, |t| t.0);
        let elapsed = Duration::try_from(now.duration_since(started)).unwrap_or_default();
        // Whole seconds, at least a minute (increase() needs two samples in range).
        let window = Duration::from_secs(elapsed.as_secs().max(60) + 1);
        arm_data(
            ctx,
            x,
            &namespace,
            started.as_second(),
            now.as_second(),
            window,
        )
        .await
        .map(Some)
    } else {
        Ok(None)
    };
    let (unsettled, segments) = match &data {
        Ok(Some((_, unsettled, segments))) => (Some(*unsettled), segments.clone()),
        _ => (None, Segments::new()),
    };
    let data = data.map(|d| d.map(|(arms, _, _)| arms).unwrap_or_default());
    let cuped = match (&x.spec.cuped, &previous.started_at) {
        (Some(c), Some(started)) if previous.phase == ExperimentPhase::Running => {
            let request = CupedRequest {
                namespace: namespace.clone(),
                router: router_name.clone(),
                experiment: name.clone(),
                metric: x.spec.primary_metric.name,
                covariate: c.covariate.unwrap_or(x.spec.primary_metric.name),
                started_at: started.0.as_second(),
                preperiod: c.preperiod.duration(),
                // The same settled interactions as the unadjusted comparison.
                settled_before: now.as_second().saturating_sub(
                    i64::try_from(x.spec.primary_metric.settle().as_secs()).unwrap_or(i64::MAX),
                ),
            };
            Some(ctx.outcomes.cuped(&request).await)
        }
        _ => None,
    };
    let empty = BTreeMap::new();
    let out = evaluate(ExperimentInput {
        generation: x.metadata.generation,
        spec: &x.spec,
        annotations: x.metadata.annotations.as_ref().unwrap_or(&empty),
        status: &previous,
        router_exists,
        allocation,
        data,
        unsettled,
        segments,
        cuped,
        now,
    });
    apply_status(&ctx.client, x, &out.status).await?;
    let samples: Vec<(String, i64)> = out
        .status
        .per_variant
        .iter()
        .map(|v| (v.name.clone(), v.units))
        .chain(out.status.holdout_samples.map(|h| (HOLDOUT.to_owned(), h)))
        .collect();
    ctx.metrics.experiment(
        &namespace,
        &name,
        &samples,
        out.status.required_samples_per_variant,
    );
    for (warning, reason, message) in &out.events {
        let type_ = if *warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(x, type_, reason, "Analyse", message.clone())
            .await;
    }
    if !out.consumed_annotations.is_empty() {
        let nulls: serde_json::Map<String, serde_json::Value> = out
            .consumed_annotations
            .iter()
            .map(|k| (k.clone(), serde_json::Value::Null))
            .collect();
        Api::<Experiment>::namespaced(ctx.client.clone(), &namespace)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"metadata": {"annotations": nulls}})),
            )
            .await
            .map_err(|e| Error::kube("remove annotations of", describe(x), e))?;
    }
    Ok(Action::requeue(match out.status.phase {
        ExperimentPhase::Running | ExperimentPhase::Pending => ctx.settings.analysis_interval,
        ExperimentPhase::Stopped | ExperimentPhase::Concluded => ctx.settings.resync_interval,
    }))
}

/// A failed reconcile: Degraded, and Ready false (pure; written by
/// [`crate::context::report_failure`]).
impl crate::context::FailureStatus for Experiment {
    type Status = switchboard_crds::ExperimentStatus;

    fn status_or_default(&self) -> switchboard_crds::ExperimentStatus {
        self.status.clone().unwrap_or_default()
    }

    fn conditions(
        status: &switchboard_crds::ExperimentStatus,
    ) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        &status.conditions
    }

    fn failed(
        &self,
        error: &Error,
        now: k8s_openapi::jiff::Timestamp,
    ) -> switchboard_crds::ExperimentStatus {
        let generation = self.metadata.generation;
        let mut status = self.status_or_default();
        status.observed_generation = generation;
        for c in [
            condition(
                cond::DEGRADED,
                true,
                error.reason(),
                error.to_string(),
                generation,
                now,
            ),
            condition(
                cond::READY,
                false,
                error.reason(),
                error.to_string(),
                generation,
                now,
            ),
        ] {
            switchboard_crds::set_condition(&mut status.conditions, c);
        }
        status
    }
}
