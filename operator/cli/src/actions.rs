//! `kubectl switchboard promote|abort|rollback`: ask the operator to act on an AdapterPatch by
//! setting the action annotations (`switchboard.dev/action`, `switchboard.dev/rollback-to`) with
//! a merge patch. The operator consumes them on its next reconcile. Each request is checked
//! against the object's status first, with the same rules the operator applies, so a request it
//! would ignore is refused here with the reason.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use switchboard_crds::AdapterPatch;
use switchboard_crds::adapter_patch::AdapterPhase;
use switchboard_crds::annotations::{self, actions};

use crate::cluster::ClusterArgs;
use crate::output::OutputFormat;

/// An action on one AdapterPatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Promote the candidate now (skip the remaining steps).
    Promote,
    /// Abort the rollout: back to the stable version, the candidate marked rolled back.
    Abort,
    /// Make an earlier version stable again.
    RollbackTo(String),
}

/// Why a request is refused before it reaches the cluster.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Nothing is being rolled out.
    #[error("AdapterPatch {name} has no rollout in progress (phase {phase:?}): nothing to {verb}")]
    NoRollout {
        /// Object name.
        name: String,
        /// Current phase.
        phase: AdapterPhase,
        /// `promote` or `abort`.
        verb: &'static str,
    },
    /// The version never ran on this AdapterPatch.
    #[error(
        "AdapterPatch {name} has no version {version} in its history (known: {known}); \
         `kubectl switchboard status` lists them"
    )]
    NotInHistory {
        /// Object name.
        name: String,
        /// Requested version.
        version: String,
        /// The versions in history.
        known: String,
    },
    /// The version's artifact failed verification.
    #[error("version {version} of AdapterPatch {name} failed verification and cannot serve")]
    Failed {
        /// Object name.
        name: String,
        /// Requested version.
        version: String,
    },
    /// The version ended longer ago than the rollback window.
    #[error(
        "version {version} of AdapterPatch {name} stopped serving at {finished} and its rollback \
         window ({window}) is over: its artifact may be gone"
    )]
    OutsideWindow {
        /// Object name.
        name: String,
        /// Requested version.
        version: String,
        /// When it stopped serving.
        finished: String,
        /// `spec.rollbackWindow`.
        window: String,
    },
    /// The version already serves and nothing else is rolling out.
    #[error("version {version} of AdapterPatch {name} is already the stable version")]
    AlreadyStable {
        /// Object name.
        name: String,
        /// Requested version.
        version: String,
    },
}

fn in_rollout(patch: &AdapterPatch) -> bool {
    patch.status.as_ref().is_some_and(|s| {
        matches!(
            s.phase,
            AdapterPhase::Validating | AdapterPhase::Shadow | AdapterPhase::Canary
        ) && s.candidate_version.is_some()
    })
}

/// The merge patch that asks the operator for `action` on `patch`, or why it would not act.
pub fn action_patch(
    patch: &AdapterPatch,
    action: &Action,
    now: Timestamp,
) -> Result<serde_json::Value, Refusal> {
    let name = patch.metadata.name.clone().unwrap_or_default();
    let status = patch.status.clone().unwrap_or_default();
    match action {
        Action::Promote => {
            if !matches!(status.phase, AdapterPhase::Shadow | AdapterPhase::Canary) {
                return Err(Refusal::NoRollout {
                    name,
                    phase: status.phase,
                    verb: "promote",
                });
            }
            Ok(json!({ "metadata": { "annotations": {
                annotations::ACTION: actions::PROMOTE,
            }}}))
        }
        Action::Abort => {
            if !in_rollout(patch) {
                return Err(Refusal::NoRollout {
                    name,
                    phase: status.phase,
                    verb: "abort",
                });
            }
            Ok(json!({ "metadata": { "annotations": {
                annotations::ACTION: actions::ABORT,
            }}}))
        }
        Action::RollbackTo(version) => {
            let Some(entry) = status.history.iter().rev().find(|h| &h.version == version) else {
                let known = status
                    .history
                    .iter()
                    .map(|h| h.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Refusal::NotInHistory {
                    name,
                    version: version.clone(),
                    known: if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known
                    },
                });
            };
            if entry.phase == AdapterPhase::Failed {
                return Err(Refusal::Failed {
                    name,
                    version: version.clone(),
                });
            }
            if status.stable_version.as_deref() == Some(version.as_str()) && !in_rollout(patch) {
                return Err(Refusal::AlreadyStable {
                    name,
                    version: version.clone(),
                });
            }
            let window = &patch.spec.rollback_window;
            if let Some(finished) = &entry.finished_at {
                let expires = finished
                    .0
                    .checked_add(window.duration())
                    .unwrap_or(Timestamp::MAX);
                if expires <= now {
                    return Err(Refusal::OutsideWindow {
                        name,
                        version: version.clone(),
                        finished: finished.0.to_string(),
                        window: window.to_string(),
                    });
                }
            }
            Ok(json!({ "metadata": { "annotations": {
                annotations::ACTION: actions::ROLLBACK,
                annotations::ROLLBACK_TO: version,
            }}}))
        }
    }
}

/// Arguments of `promote` and `abort`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The AdapterPatch.
    name: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Arguments of `rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The AdapterPatch.
    name: String,
    /// The version to make stable again (one from the AdapterPatch's history, inside its
    /// rollback window).
    #[arg(long = "to", value_name = "VERSION")]
    to: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `promote` or `abort`.
pub async fn run_target(
    args: &TargetArgs,
    action: Action,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<()> {
    apply(&args.cluster, &args.name, action, format, out).await
}

/// Runs `rollback`.
pub async fn run_rollback(
    args: &RollbackArgs,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<()> {
    apply(
        &args.cluster,
        &args.name,
        Action::RollbackTo(args.to.clone()),
        format,
        out,
    )
    .await
}

async fn apply(
    cluster: &ClusterArgs,
    name: &str,
    action: Action,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<()> {
    let (client, namespace) = cluster.client().await?;
    let api: Api<AdapterPatch> = Api::namespaced(client, &namespace);
    let patch = api
        .get(name)
        .await
        .with_context(|| format!("reading AdapterPatch {namespace}/{name}"))?;
    let body = action_patch(&patch, &action, Timestamp::now())?;
    let patched = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .with_context(|| format!("annotating AdapterPatch {namespace}/{name}"))?;
    let what = match &action {
        Action::Promote => "promote".to_owned(),
        Action::Abort => "abort".to_owned(),
        Action::RollbackTo(v) => format!("rollback to {v}"),
    };
    match format {
        OutputFormat::Text => writeln!(
            out,
            "adapterpatch.switchboard.dev/{name} annotated: {what} requested; the operator acts on \
             its next reconcile (watch: kubectl get ap -n {namespace} {name} -w)"
        )?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(
                &mut *out,
                &json!({
                    "namespace": namespace,
                    "name": name,
                    "requested": what,
                    "annotations": patched.metadata.annotations,
                }),
            )?;
            writeln!(out)?;
        }
    }
    Ok(())
}

/// How long ago `t` was, compactly: `45s`, `12m`, `3h`, `2d`.
pub fn age(t: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(t.as_second()).max(0);
    let secs = u64::try_from(secs).unwrap_or(0);
    compact(Duration::from_secs(secs))
}

/// `45s`, `12m`, `3h`, `2d`.
pub fn compact(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(status: serde_json::Value) -> AdapterPatch {
        serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "AdapterPatch",
            "metadata": { "name": "pricing", "namespace": "support" },
            "spec": {
                "lineage": "pricing",
                "baseModel": "smollm2",
                "version": "1.3.0",
                "artifact": { "uri": "file:///a", "sha256": format!("sha256:{}", "0".repeat(64)) },
                "lora": { "rank": 8 },
                "domain": { "description": "pricing" },
                "rollbackWindow": "720h"
            },
            "status": status,
        }))
        .expect("AdapterPatch")
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn canary() -> AdapterPatch {
        patch(json!({
            "phase": "Canary", "stableVersion": "1.2.0", "candidateVersion": "1.3.0", "canaryWeight": 10,
            "history": [
                { "version": "1.1.0", "sha256": "a", "phase": "Superseded", "finishedAt": "2026-01-01T00:00:00Z" },
                { "version": "1.2.0", "sha256": "b", "phase": "Promoted" },
                { "version": "1.3.0", "sha256": "c", "phase": "Canary" },
                { "version": "0.9.0", "sha256": "d", "phase": "Failed", "finishedAt": "2026-11-01T00:00:00Z" }
            ]
        }))
    }

    #[test]
    fn promote_and_abort_need_a_rollout() {
        let now = at("2026-11-27T00:00:00Z");
        let body = action_patch(&canary(), &Action::Promote, now).expect("promote");
        assert_eq!(
            body["metadata"]["annotations"]["switchboard.dev/action"],
            "promote"
        );
        let body = action_patch(&canary(), &Action::Abort, now).expect("abort");
        assert_eq!(
            body["metadata"]["annotations"]["switchboard.dev/action"],
            "abort"
        );

        let promoted = patch(json!({ "phase": "Promoted", "stableVersion": "1.3.0" }));
        let err = action_patch(&promoted, &Action::Promote, now).unwrap_err();
        assert!(err.to_string().contains("no rollout in progress"), "{err}");
        assert!(action_patch(&promoted, &Action::Abort, now).is_err());
    }

    #[test]
    fn rollback_sets_both_annotations() {
        let now = at("2026-11-27T00:00:00Z");
        let body =
            action_patch(&canary(), &Action::RollbackTo("1.2.0".into()), now).expect("rollback");
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(annotations["switchboard.dev/action"], "rollback");
        assert_eq!(annotations["switchboard.dev/rollback-to"], "1.2.0");
    }

    #[test]
    fn rollback_refuses_versions_it_cannot_serve() {
        let now = at("2026-11-27T00:00:00Z");
        let err = action_patch(&canary(), &Action::RollbackTo("2.0.0".into()), now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AdapterPatch pricing has no version 2.0.0 in its history (known: 1.1.0, 1.2.0, \
             1.3.0, 0.9.0); `kubectl switchboard status` lists them"
        );
        let err = action_patch(&canary(), &Action::RollbackTo("0.9.0".into()), now).unwrap_err();
        assert!(matches!(err, Refusal::Failed { .. }), "{err}");
        // 1.1.0 stopped serving in January; the window is 30 days.
        let err = action_patch(&canary(), &Action::RollbackTo("1.1.0".into()), now).unwrap_err();
        assert!(matches!(err, Refusal::OutsideWindow { .. }), "{err}");
        assert!(err.to_string().contains("720h"), "{err}");
        // ... but inside the window it is fine.
        let january = at("2026-01-15T00:00:00Z");
        assert!(action_patch(&canary(), &Action::RollbackTo("1.1.0".into()), january).is_ok());

        let promoted = patch(json!({
            "phase": "Promoted", "stableVersion": "1.3.0",
            "history": [{ "version": "1.3.0", "sha256": "c", "phase": "Promoted" }]
        }));
        let err = action_patch(&promoted, &Action::RollbackTo("1.3.0".into()), now).unwrap_err();
        assert!(matches!(err, Refusal::AlreadyStable { .. }), "{err}");
    }

    #[test]
    fn ages_are_compact() {
        let now = at("2026-11-27T12:00:00Z");
        assert_eq!(age(at("2026-11-27T11:59:15Z"), now), "45s");
        assert_eq!(age(at("2026-11-27T11:00:00Z"), now), "1h");
        assert_eq!(age(at("2026-11-25T12:00:00Z"), now), "2d");
        assert_eq!(age(at("2026-11-28T12:00:00Z"), now), "0s");
    }
}
