//! `kubectl switchboard status`: where every AdapterPatch rollout and Experiment stands, from
//! their status (the operator's single source of truth).

use std::fmt::Write as _;
use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;
use switchboard_crds::{AdapterPatch, Experiment};

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

/// Everything `status` shows.
#[derive(Debug, Serialize, PartialEq)]
pub struct Status {
    rollouts: Vec<RolloutRow>,
    experiments: Vec<ExperimentRow>,
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
    out
}

/// Runs `status`.
pub async fn run(args: &StatusArgs, format: OutputFormat, out: &mut dyn Write) -> Result<()> {
    let (client, namespace) = args.cluster.client().await?;
    let (patches, experiments): (Api<AdapterPatch>, Api<Experiment>) = if args.all_namespaces {
        (Api::all(client.clone()), Api::all(client))
    } else {
        (
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
    let status = Status {
        rollouts,
        experiments,
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
        let status = Status {
            rollouts: vec![rollout_row(&patch, now)],
            experiments: vec![experiment_row(&experiment, now)],
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
    }
}
