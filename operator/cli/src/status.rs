//! `kubectl switchboard status`: where every AdapterPatch rollout, Experiment and Router
//! holdout stands, from their status (the operator's single source of truth).

use std::fmt::Write as _;
use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;
use switchboard_crds::{AdapterPatch, Experiment, Router};

use crate::actions::age;
use crate::cluster::ClusterArgs;
use crate::output::{OutputFormat, short, thousands};

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// All namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// One AdapterPatch's rollout.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRow {
    namespace: String,
    name: String,
    lineage: String,
    phase: String,
    stable: Option<String>,
    candidate: Option<String>,
    /// Percent of the lineage's traffic on the candidate.
    weight: Option<i32>,
    /// `current/total` canary step.
    step: Option<String>,
    paused: bool,
    last_analysis: Option<String>,
    /// Seconds since the last analysis.
    last_analysis_age: Option<String>,
    history: Vec<String>,
}

/// One Experiment's progress.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentRow {
    namespace: String,
    name: String,
    router: String,
    /// `spec.traffic`, with the allocated range once running.
    traffic: String,
    phase: String,
    samples: Option<i64>,
    required_per_variant: Option<i64>,
    eta: Option<String>,
    decision: String,
    estimates: Vec<String>,
    /// Per segment value (exploratory), one line each.
    segments: Vec<String>,
    message: Option<String>,
}

/// One Router's permanent holdout.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HoldoutRow {
    namespace: String,
    router: String,
    share: String,
    /// `Running`, `Ended`, or `Starting` before the operator has seen it.
    phase: String,
    /// `lineage@version` kept for its units.
    pinned: Vec<String>,
    units: Option<i64>,
    exposed_units: Option<i64>,
    /// `in 29d` while it runs, `2d ago` once ended.
    ends: Option<String>,
    /// Per metric: exposed against held out.
    comparisons: Vec<String>,
    message: Option<String>,
}

/// Everything `status` shows.
#[derive(Debug, Serialize, PartialEq)]
pub struct Status {
    rollouts: Vec<RolloutRow>,
    experiments: Vec<ExperimentRow>,
    holdouts: Vec<HoldoutRow>,
}

/// The holdout of `router`, if it has one.
pub fn holdout_row(router: &Router, now: Timestamp) -> Option<HoldoutRow> {
    let spec = router.spec.holdout.as_ref()?;
    let status = router.status.as_ref().and_then(|s| s.holdout.as_ref());
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let pts = |x: f64| format!("{:+.2} pts", 100.0 * x);
    Some(HoldoutRow {
        namespace: router.metadata.namespace.clone().unwrap_or_default(),
        router: router.metadata.name.clone().unwrap_or_default(),
        share: spec.share.to_string(),
        phase: status.map_or_else(|| "Starting".to_owned(), |s| debug_name(&s.phase)),
        pinned: status
            .map(|s| {
                s.pinned
                    .iter()
                    .map(|p| format!("{}@{}", p.lineage, p.version))
                    .collect()
            })
            .unwrap_or_default(),
        units: status.and_then(|s| s.units),
        exposed_units: status.and_then(|s| s.exposed_units),
        ends: status.map(|s| {
            if s.ends_at.0 > now {
                format!("in {}", age(now, s.ends_at.0))
            } else {
                format!("{} ago", age(s.ends_at.0, now))
            }
        }),
        comparisons: status
            .map(|s| {
                s.comparisons
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: exposed {} vs held out {}: {} (95% CI {} to {}), p={:.3}",
                            c.metric.as_str(),
                            pct(c.exposed_rate),
                            pct(c.holdout_rate),
                            pts(c.difference),
                            pts(c.ci_low),
                            pts(c.ci_high),
                            c.p_value
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        message: status.and_then(|s| s.message.clone()),
    })
}

fn debug_name(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}")
}

/// The rollout row of an AdapterPatch.
pub fn rollout_row(patch: &AdapterPatch, now: Timestamp) -> RolloutRow {
    let status = patch.status.clone().unwrap_or_default();
    let steps = patch.spec.rollout.canary.steps.len();
    let analysis = status.last_analysis.as_ref();
    RolloutRow {
        namespace: patch.metadata.namespace.clone().unwrap_or_default(),
        name: patch.metadata.name.clone().unwrap_or_default(),
        lineage: patch.spec.lineage.clone(),
        phase: debug_name(&status.phase),
        stable: status.stable_version.clone(),
        candidate: status.candidate_version.clone(),
        weight: status.canary_weight,
        step: status
            .current_step
            .map(|s| format!("{}/{steps}", s.saturating_add(1))),
        paused: patch.spec.paused,
        last_analysis: analysis.map(|a| {
            if a.message.is_empty() {
                debug_name(&a.decision)
            } else {
                format!("{:?}: {}", a.decision, a.message)
            }
        }),
        last_analysis_age: analysis
            .and_then(|a| a.time.as_ref())
            .map(|t| age(t.0, now)),
        history: status
            .history
            .iter()
            .map(|h| format!("{} {:?}", h.version, h.phase))
            .collect(),
    }
}

/// The progress row of an Experiment.
pub fn experiment_row(experiment: &Experiment, now: Timestamp) -> ExperimentRow {
    let status = experiment.status.clone().unwrap_or_default();
    ExperimentRow {
        namespace: experiment.metadata.namespace.clone().unwrap_or_default(),
        name: experiment.metadata.name.clone().unwrap_or_default(),
        router: experiment.spec.router_ref.name.clone(),
        traffic: experiment.spec.traffic.to_string(),
        phase: debug_name(&status.phase),
        samples: status.samples,
        required_per_variant: status.required_samples_per_variant,
        eta: status.eta.as_ref().map(|t| {
            if t.0 > now {
                format!("in {}", age(now, t.0))
            } else {
                "reached".to_owned()
            }
        }),
        decision: debug_name(&status.decision),
        estimates: status
            .per_variant
            .iter()
            .map(|v| {
                let mut text = format!(
                    "{}: {} units, rate {}",
                    v.name,
                    thousands(u64::try_from(v.units).unwrap_or(0)),
                    short(v.rate)
                );
                if let Some(estimate) = v.estimate {
                    let points = estimate * 100.0;
                    let sign = if points > 0.0 { "+" } else { "" };
                    let _ = write!(text, ", {sign}{}pp", short(points));
                    if let (Some(lo), Some(hi)) = (v.ci_low, v.ci_high) {
                        let _ = write!(text, " [{}, {}]", short(lo * 100.0), short(hi * 100.0));
                    }
                }
                text
            })
            .collect(),
        segments: status
            .per_segment
            .iter()
            .map(|seg| {
                let variants: Vec<String> = seg
                    .variants
                    .iter()
                    .map(|v| {
                        let mut text = format!(
                            "{} {} units, rate {}",
                            v.name,
                            thousands(u64::try_from(v.units).unwrap_or(0)),
                            short(v.rate)
                        );
                        if let (Some(e), Some(lo), Some(hi)) = (v.estimate, v.ci_low, v.ci_high) {
                            let sign = if e > 0.0 { "+" } else { "" };
                            let _ = write!(
                                text,
                                " {sign}{}pp [{}, {}]",
                                short(e * 100.0),
                                short(lo * 100.0),
                                short(hi * 100.0)
                            );
                        }
                        text
                    })
                    .collect();
                format!("{}={}: {}", seg.attribute, seg.value, variants.join("; "))
            })
            .collect(),
        message: status.message.clone(),
    }
}

/// Renders aligned columns.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(out, &mut header.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

fn dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The human-readable report.
pub fn render_text(status: &Status) -> String {
    let mut out = String::new();
    if status.rollouts.is_empty() {
        out.push_str("No AdapterPatches.\n");
    } else {
        let rows: Vec<Vec<String>> = status
            .rollouts
            .iter()
            .map(|r| {
                vec![
                    r.namespace.clone(),
                    r.name.clone(),
                    r.lineage.clone(),
                    if r.paused {
                        format!("{} (paused)", r.phase)
                    } else {
                        r.phase.clone()
                    },
                    dash(r.stable.as_ref()),
                    dash(r.candidate.as_ref()),
                    dash(r.weight.map(|w| format!("{w}%"))),
                    dash(r.step.as_ref()),
                    match (&r.last_analysis, &r.last_analysis_age) {
                        (Some(a), Some(t)) => format!("{t} ago {a}"),
                        (Some(a), None) => a.clone(),
                        _ => "-".to_owned(),
                    },
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "NAMESPACE",
                "ADAPTERPATCH",
                "LINEAGE",
                "PHASE",
                "STABLE",
                "CANDIDATE",
                "WEIGHT",
                "STEP",
                "LAST ANALYSIS",
            ],
            &rows,
        );
    }
    out.push('\n');
    if status.experiments.is_empty() {
        out.push_str("No Experiments.\n");
    } else {
        let rows: Vec<Vec<String>> = status
            .experiments
            .iter()
            .map(|e| {
                vec![
                    e.namespace.clone(),
                    e.name.clone(),
                    e.router.clone(),
                    e.traffic.clone(),
                    e.phase.clone(),
                    dash(e.samples.map(|s| thousands(u64::try_from(s).unwrap_or(0)))),
                    dash(
                        e.required_per_variant
                            .map(|s| thousands(u64::try_from(s).unwrap_or(0))),
                    ),
                    dash(e.eta.as_ref()),
                    e.decision.clone(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "NAMESPACE",
                "EXPERIMENT",
                "ROUTER",
                "TRAFFIC",
                "PHASE",
                "SAMPLES",
                "REQUIRED/VARIANT",
                "ETA",
                "DECISION",
            ],
            &rows,
        );
        for e in &status.experiments {
            if e.estimates.is_empty() && e.message.is_none() {
                continue;
            }
            let _ = writeln!(out, "\n{}/{}:", e.namespace, e.name);
            for estimate in &e.estimates {
                let _ = writeln!(out, "  {estimate}");
            }
            if !e.segments.is_empty() {
                let _ = writeln!(
                    out,
                    "  by segment (exploratory, not corrected for the number of segments):"
                );
                for segment in &e.segments {
                    let _ = writeln!(out, "    {segment}");
                }
            }
            if let Some(message) = &e.message {
                let _ = writeln!(out, "  {message}");
            }
        }
    }
    if !status.holdouts.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = status
            .holdouts
            .iter()
            .map(|h| {
                vec![
                    h.namespace.clone(),
                    h.router.clone(),
                    h.share.clone(),
                    h.phase.clone(),
                    if h.pinned.is_empty() {
                        "-".to_owned()
                    } else {
                        h.pinned.join(",")
                    },
                    match (h.units, h.exposed_units) {
                        (Some(held), Some(exposed)) => format!(
                            "{}/{}",
                            thousands(u64::try_from(held).unwrap_or(0)),
                            thousands(u64::try_from(exposed).unwrap_or(0))
                        ),
                        _ => "-".to_owned(),
                    },
                    dash(h.ends.as_ref()),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "NAMESPACE",
                "ROUTER HOLDOUT",
                "SHARE",
                "PHASE",
                "PINNED",
                "UNITS (HELD/EXPOSED)",
                "ENDS",
            ],
            &rows,
        );
        for h in &status.holdouts {
            if h.comparisons.is_empty() && h.message.is_none() {
                continue;
            }
            let _ = writeln!(out, "\n{}/{} holdout:", h.namespace, h.router);
            for c in &h.comparisons {
                let _ = writeln!(out, "  {c}");
            }
            if let Some(message) = &h.message {
                let _ = writeln!(out, "  {message}");
            }
        }
    }
    out
}

/// Runs `status`.
pub async fn run(args: &StatusArgs, format: OutputFormat, out: &mut dyn Write) -> Result<()> {
    let (client, namespace) = args.cluster.client().await?;
    let (patches, experiments, routers): (Api<AdapterPatch>, Api<Experiment>, Api<Router>) =
        if args.all_namespaces {
            (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client),
            )
        } else {
            (
                Api::namespaced(client.clone(), &namespace),
                Api::namespaced(client.clone(), &namespace),
                Api::namespaced(client, &namespace),
            )
        };
    let now = Timestamp::now();
    let mut rollouts: Vec<RolloutRow> = patches
        .list(&ListParams::default())
        .await
        .context("listing AdapterPatches")?
        .items
        .iter()
        .map(|p| rollout_row(p, now))
        .collect();
    rollouts.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut experiments: Vec<ExperimentRow> = experiments
        .list(&ListParams::default())
        .await
        .context("listing Experiments")?
        .items
        .iter()
        .map(|e| experiment_row(e, now))
        .collect();
    experiments.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut holdouts: Vec<HoldoutRow> = routers
        .list(&ListParams::default())
        .await
        .context("listing Routers")?
        .items
        .iter()
        .filter_map(|r| holdout_row(r, now))
        .collect();
    holdouts.sort_by(|a, b| (&a.namespace, &a.router).cmp(&(&b.namespace, &b.router)));
    let status = Status {
        rollouts,
        experiments,
        holdouts,
    };
    match format {
        OutputFormat::Text => out.write_all(render_text(&status).as_bytes())?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &status)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_canary_and_an_experiment_read_at_a_glance() {
        let now: Timestamp = "2026-11-27T12:00:00Z".parse().expect("time");
        let patch: AdapterPatch = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "AdapterPatch",
            "metadata": { "name": "pricing", "namespace": "support" },
            "spec": {
                "lineage": "pricing", "baseModel": "m", "version": "1.3.0",
                "artifact": { "uri": "file:///a", "sha256": format!("sha256:{}", "0".repeat(64)) },
                "lora": { "rank": 8 }, "domain": { "description": "d" },
                "rollout": { "canary": { "steps": [
                    { "weight": 5, "duration": "1h" }, { "weight": 25, "duration": "1h" }, { "weight": 50, "duration": "1h" }
                ]}}
            },
            "status": {
                "phase": "Canary", "stableVersion": "1.2.0", "candidateVersion": "1.3.0",
                "canaryWeight": 25, "currentStep": 1,
                "lastAnalysis": { "time": "2026-11-27T11:58:00Z", "decision": "Continue",
                                  "message": "escalationRate +1.2% [-3.0%, +5.5%]" }
            }
        }))
        .expect("AdapterPatch");
        let mut experiment: Experiment =
            serde_yaml::from_str(include_str!("../../../examples/experiment.yaml"))
                .expect("examples/experiment.yaml");
        experiment.status = Some(
            serde_json::from_value(json!({
                "phase": "Running", "samples": 12000, "requiredSamplesPerVariant": 19461,
                "eta": "2026-11-29T12:00:00Z", "decision": "Pending",
                "perVariant": [
                    { "name": "treatment", "units": 6000, "trials": 6000, "events": 840, "rate": 0.14,
                      "estimate": -0.011, "ciLow": -0.016, "ciHigh": -0.006 }
                ],
                "perSegment": [
                    { "attribute": "channel", "value": "chat", "variants": [
                        { "name": "current", "units": 3000, "rate": 0.15 },
                        { "name": "always-rewrite", "units": 3000, "rate": 0.13,
                          "estimate": -0.02, "ciLow": -0.035, "ciHigh": -0.005 } ] }
                ]
            }))
            .expect("ExperimentStatus"),
        );
        let mut router: Router =
            serde_yaml::from_str(include_str!("../../../examples/router.yaml"))
                .expect("examples/router.yaml");
        router.status = Some(
            serde_json::from_value(json!({
                "holdout": {
                    "phase": "Running", "startedAt": "2026-10-01T12:00:00Z",
                    "endsAt": "2026-12-30T12:00:00Z",
                    "pinned": [{ "lineage": "pricing", "version": "1.2.0" }],
                    "units": 2400, "exposedUnits": 118000,
                    "comparisons": [{ "metric": "escalationRate", "holdoutRate": 0.16,
                        "exposedRate": 0.145, "difference": -0.015, "ciLow": -0.024,
                        "ciHigh": -0.006, "pValue": 0.0011 }]
                }
            }))
            .expect("RouterStatus"),
        );
        let status = Status {
            rollouts: vec![rollout_row(&patch, now)],
            experiments: vec![experiment_row(&experiment, now)],
            holdouts: holdout_row(&router, now).into_iter().collect(),
        };
        let text = render_text(&status);
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle}:\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            line("pricing"),
            "support pricing pricing Canary 1.2.0 1.3.0 25% 2/3 2m ago Continue: escalationRate +1.2% [-3.0%, +5.5%]"
        );
        assert_eq!(
            line("rewrite-always  support"),
            "support rewrite-always support 50% Running 12,000 19,461 in 2d Pending"
        );
        assert_eq!(
            line("treatment:"),
            "treatment: 6,000 units, rate 0.14, -1.1pp [-1.6, -0.6]"
        );
        assert_eq!(
            line("channel=chat"),
            "channel=chat: current 3,000 units, rate 0.15; always-rewrite 3,000 units, rate 0.13 -2pp [-3.5, -0.5]"
        );
        assert!(text.contains("by segment (exploratory"), "{text}");
        assert_eq!(
            line("pricing@1.2.0"),
            "support support 2% Running pricing@1.2.0 2,400/118,000 in 33d"
        );
        assert_eq!(
            line("exposed 14.5%"),
            "escalationRate: exposed 14.5% vs held out 16.0%: -1.50 pts (95% CI -2.40 pts to -0.60 pts), p=0.001"
        );
        // A Router without a holdout is not listed.
        router.spec.holdout = None;
        assert!(holdout_row(&router, now).is_none());
    }
}
