//! The RuntimeConfig compiler: selection, roles, experiments, determinism.

use switchboard_crds::compile::{CompileError, CompileInput, HoldoutPins, compile};
use switchboard_crds::{
    AdapterPatch, Experiment, KnowledgeBase, Router,
    runtime_config::{AdapterRole, RuntimeConfig},
};

fn router(selector: serde_json::Value) -> Router {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
        "metadata": {"name": "helpdesk", "namespace": "support"},
        "spec": {
            "knowledgeBaseRef": {"name": "docs"},
            "smallModel": {"model": "/models/smollm2", "adapterSelector": selector},
            "largeModel": {"endpoint": {"url": "http://large:8080", "model": "big"}}
        }
    }))
    .unwrap()
}

fn kb(generation: Option<i64>) -> KnowledgeBase {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "KnowledgeBase",
        "metadata": {"name": "docs", "namespace": "support"},
        "spec": {"sources": [{"name": "faq", "format": "Markdown", "inline": {"a.md": "# A"}}]},
        "status": {"indexGeneration": generation, "previousGeneration": 1}
    }))
    .unwrap()
}

fn patch(
    name: &str,
    lineage: &str,
    labels: serde_json::Value,
    version: &str,
    status: serde_json::Value,
) -> AdapterPatch {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AdapterPatch",
        "metadata": {"name": name, "namespace": "support", "labels": labels,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "lineage": lineage, "baseModel": "/models/smollm2", "version": version,
            "artifact": {"uri": format!("file:///adapters/{lineage}/{version}"),
                         "sha256": format!("sha256:{}", "ab".repeat(32))},
            "lora": {"rank": 8}, "domain": {"description": lineage, "exampleQueries": ["q"]}
        },
        "status": status
    }))
    .unwrap()
}

fn stable(version: &str) -> serde_json::Value {
    serde_json::json!({"phase": "Promoted", "stableVersion": version, "candidateVersion": version,
                       "history": [{"version": version, "sha256": format!("sha256:{}", "ab".repeat(32)), "phase": "Promoted"}]})
}

fn canary(stable: &str, candidate: &str, weight: i32, phase: &str) -> serde_json::Value {
    serde_json::json!({"phase": phase, "stableVersion": stable, "candidateVersion": candidate,
                       "canaryWeight": weight, "currentStep": 1,
                       "history": [{"version": stable, "sha256": format!("sha256:{}", "cd".repeat(32)), "phase": "Promoted"},
                                   {"version": candidate, "sha256": format!("sha256:{}", "ab".repeat(32)), "phase": phase}]})
}

fn experiment(name: &str, phase: &str, holdout: &str, overrides: serde_json::Value) -> Experiment {
    // Running ones hold a range of the layer and started in the order rewrite, adapter, missing.
    let (start, started) = match name {
        "rewrite" => (0, "2026-11-01T00:00:00Z"),
        "adapter" => (2_000, "2026-11-02T00:00:00Z"),
        _ => (4_000, "2026-11-03T00:00:00Z"),
    };
    let status = if phase == "Running" {
        serde_json::json!({"phase": phase, "startedAt": started,
                           "allocation": {"start": start, "end": start + 2_000}})
    } else {
        serde_json::json!({"phase": phase})
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": name, "namespace": "support"},
        "spec": {
            "routerRef": {"name": "helpdesk"}, "salt": format!("{name}-salt"),
            "holdout": {"share": holdout},
            "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50, "overrides": overrides}],
            "primaryMetric": {"name": "escalationRate", "direction": "Decrease"},
            "minimumDetectableEffect": {"relative": "10%"},
            "traffic": "20%"
        },
        "status": status
    }))
    .unwrap()
}

fn run(router: &Router, adapters: &[AdapterPatch], experiments: &[Experiment]) -> RuntimeConfig {
    compile(CompileInput {
        router,
        knowledge_base: &kb(Some(3)),
        adapters,
        experiments,
        holdout: HoldoutPins::Off,
    })
    .unwrap()
    .config
}

#[test]
fn adapters_are_selected_by_labels_and_base_model() {
    let r = router(serde_json::json!({"matchLabels": {"team": "support"},
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["experimental"]}]}));
    let mut other_base = patch(
        "other",
        "other",
        serde_json::json!({"team": "support"}),
        "1.0.0",
        stable("1.0.0"),
    );
    other_base.spec.base_model = "/models/llama".into();
    let adapters = [
        patch(
            "pricing",
            "pricing",
            serde_json::json!({"team": "support"}),
            "1.0.0",
            stable("1.0.0"),
        ),
        patch(
            "billing",
            "billing",
            serde_json::json!({"team": "billing"}),
            "1.0.0",
            stable("1.0.0"),
        ),
        patch(
            "exp",
            "exp",
            serde_json::json!({"team": "support", "tier": "experimental"}),
            "1.0.0",
            stable("1.0.0"),
        ),
        other_base,
    ];
    let compiled = compile(CompileInput {
        router: &r,
        knowledge_base: &kb(Some(3)),
        adapters: &adapters,
        experiments: &[],
        holdout: HoldoutPins::Off,
    })
    .unwrap();
    let lineages: Vec<_> = compiled
        .config
        .adapters
        .iter()
        .map(|a| a.lineage.as_str())
        .collect();
    assert_eq!(lineages, ["pricing"]);
    assert_eq!(compiled.skipped.len(), 1);
    assert_eq!(compiled.skipped[0].reason, "BaseModelMismatch");
    // No selector: no adapters.
    let mut none = router(serde_json::json!({}));
    none.spec.small_model.adapter_selector = None;
    assert!(run(&none, &adapters, &[]).adapters.is_empty());
}

#[test]
fn canary_and_shadow_candidates_carry_their_weight_and_share() {
    let r = router(serde_json::json!({}));
    let adapters = [
        patch(
            "pricing",
            "pricing",
            serde_json::json!({}),
            "1.1.0",
            canary("1.0.0", "1.1.0", 25, "Canary"),
        ),
        patch(
            "returns",
            "returns",
            serde_json::json!({}),
            "2.1.0",
            canary("2.0.0", "2.1.0", 0, "Shadow"),
        ),
    ];
    let c = run(&r, &adapters, &[]);
    let entries: Vec<_> = c
        .adapters
        .iter()
        .map(|a| (a.lineage.as_str(), a.version.as_str(), a.role))
        .collect();
    assert_eq!(
        entries,
        [
            ("pricing", "1.0.0", AdapterRole::Stable),
            ("pricing", "1.1.0", AdapterRole::Canary),
            ("returns", "2.0.0", AdapterRole::Stable),
            ("returns", "2.1.0", AdapterRole::Shadow),
        ]
    );
    assert_eq!(c.adapters[1].traffic_weight, Some(25));
    assert_eq!(
        c.adapters[1].artifact.uri.as_deref(),
        Some("file:///adapters/pricing/1.1.0")
    );
    // The stable version's artifact is known by digest from history.
    assert_eq!(c.adapters[0].artifact.uri, None);
    assert_eq!(
        c.adapters[0].artifact.sha256.as_str(),
        format!("sha256:{}", "cd".repeat(32))
    );
    assert_eq!(
        c.adapters[3]
            .shadow_sample_share
            .as_ref()
            .map(|s| s.as_str()),
        Some("10%")
    );
    assert_eq!(c.adapters[1].lora.alpha, 16.0);
}

#[test]
fn rolled_back_and_validating_candidates_are_not_served() {
    let r = router(serde_json::json!({}));
    for phase in ["RolledBack", "Validating", "Failed", "Pending"] {
        let adapters = [patch(
            "pricing",
            "pricing",
            serde_json::json!({}),
            "1.1.0",
            canary("1.0.0", "1.1.0", 25, phase),
        )];
        let c = run(&r, &adapters, &[]);
        let versions: Vec<_> = c.adapters.iter().map(|a| a.version.as_str()).collect();
        assert_eq!(versions, ["1.0.0"], "{phase}");
    }
}

#[test]
fn running_experiments_compile_with_their_holdout() {
    let r = router(serde_json::json!({}));
    let adapters = [patch(
        "pricing",
        "pricing",
        serde_json::json!({}),
        "1.1.0",
        canary("1.0.0", "1.1.0", 25, "Canary"),
    )];
    let experiments = [
        experiment(
            "rewrite",
            "Running",
            "7.5%",
            serde_json::json!({"queryRewritePolicy": "Always"}),
        ),
        experiment("pending", "Pending", "5%", serde_json::json!({})),
        experiment("done", "Concluded", "5%", serde_json::json!({})),
        experiment(
            "adapter",
            "Running",
            "5%",
            serde_json::json!({"adapterVersions": {"pricing": "1.1.0"}}),
        ),
        experiment(
            "missing",
            "Running",
            "5%",
            serde_json::json!({"adapterVersions": {"pricing": "9.0.0"}}),
        ),
        {
            // Running without a range (written by hand, or by an older operator): left out.
            let mut x = experiment("unallocated", "Running", "5%", serde_json::json!({}));
            x.status.as_mut().unwrap().allocation = None;
            x
        },
    ];
    let compiled = compile(CompileInput {
        router: &r,
        knowledge_base: &kb(Some(3)),
        adapters: &adapters,
        experiments: &experiments,
        holdout: HoldoutPins::Off,
    })
    .unwrap();
    let names: Vec<_> = compiled
        .config
        .experiments
        .iter()
        .map(|x| x.name.as_str())
        .collect();
    // In the order they started: the older experiment keeps its units.
    assert_eq!(names, ["rewrite", "adapter"]);
    let rewrite = &compiled.config.experiments[0];
    assert_eq!(rewrite.holdout_share.as_str(), "7.5%");
    assert_eq!(rewrite.control, "control");
    assert_eq!(rewrite.salt, "rewrite-salt");
    assert_eq!(
        (rewrite.range.start, rewrite.range.end),
        (0, 2_000),
        "the range in status is the range served"
    );
    let skipped: Vec<_> = compiled
        .skipped
        .iter()
        .map(|s| (s.name.as_str(), s.reason))
        .collect();
    assert_eq!(
        skipped,
        [
            ("missing", "AdapterVersionNotLoaded"),
            ("unallocated", "NotAllocated")
        ]
    );
}

#[test]
fn the_revision_is_deterministic_and_tracks_content() {
    let r = router(serde_json::json!({}));
    let a = [
        patch(
            "pricing",
            "pricing",
            serde_json::json!({}),
            "1.1.0",
            canary("1.0.0", "1.1.0", 25, "Canary"),
        ),
        patch(
            "returns",
            "returns",
            serde_json::json!({}),
            "2.0.0",
            stable("2.0.0"),
        ),
    ];
    let reversed = [a[1].clone(), a[0].clone()];
    let first = run(&r, &a, &[]);
    assert_eq!(first.revision, run(&r, &reversed, &[]).revision);
    assert_eq!(first, run(&r, &reversed, &[]));
    assert!(first.revision.starts_with("sha256:") && first.revision.len() == 71);
    // Replicas are not the runtime's business: same revision.
    let mut scaled = r.clone();
    scaled.spec.replicas = 5;
    assert_eq!(run(&scaled, &a, &[]).revision, first.revision);
    // A canary step changes it.
    let moved = [
        patch(
            "pricing",
            "pricing",
            serde_json::json!({}),
            "1.1.0",
            canary("1.0.0", "1.1.0", 50, "Canary"),
        ),
        a[1].clone(),
    ];
    assert_ne!(run(&r, &moved, &[]).revision, first.revision);
    // And the runtime accepts what the operator writes.
    let bytes = serde_json::to_vec(&first).unwrap();
    assert_eq!(RuntimeConfig::from_json(&bytes).unwrap(), first);
}

#[test]
fn a_knowledge_base_without_an_index_is_an_error_with_a_reason() {
    let r = router(serde_json::json!({}));
    let err = compile(CompileInput {
        router: &r,
        knowledge_base: &kb(None),
        adapters: &[],
        experiments: &[],
        holdout: HoldoutPins::Off,
    })
    .unwrap_err();
    assert!(
        matches!(err, CompileError::KnowledgeBaseNotReady(ref name) if name == "docs"),
        "{err}"
    );
    assert_eq!(err.reason(), "IndexBuilding");
}

#[test]
fn the_runtime_counts_feedback_at_every_follow_up_its_guardrails_use() {
    let r = router(serde_json::json!({"matchLabels": {"team": "support"}}));
    // Default guardrail (escalationRate, 1h), a 24h reopen guardrail and an answer-time one.
    let mut pricing = patch(
        "pricing",
        "pricing",
        serde_json::json!({"team": "support"}),
        "1.0.0",
        stable("1.0.0"),
    );
    pricing.spec.guardrails = serde_json::from_value(serde_json::json!([
        {"metric": "escalationRate", "maxRelativeIncrease": "5%"},
        {"metric": "reopenRate", "maxRelativeIncrease": "10%", "settleAfter": "24h"},
        {"metric": "refusalRate", "maxRelativeIncrease": "10%"}
    ]))
    .unwrap();
    // Not selected by this Router: its follow-up is not this runtime's business.
    let mut elsewhere = patch(
        "billing",
        "billing",
        serde_json::json!({"team": "billing"}),
        "1.0.0",
        stable("1.0.0"),
    );
    elsewhere.spec.guardrails[0].settle_after = Some("2h".parse().unwrap());
    // A running Experiment's csatLow guardrail at 30m; a concluded one's is gone.
    let mut running = experiment("rewrite", "Running", "5%", serde_json::json!({}));
    running.spec.guardrails = serde_json::from_value(serde_json::json!([
        {"metric": "csatLow", "maxRelativeIncrease": "10%", "settleAfter": "30m"},
        {"metric": "escalationRate", "maxRelativeIncrease": "10%", "settleAfter": "1h"}
    ]))
    .unwrap();
    let mut done = experiment("done", "Concluded", "5%", serde_json::json!({}));
    done.spec.guardrails = running.spec.guardrails.clone();
    done.spec.guardrails[0].settle_after = Some("45m".parse().unwrap());

    let config = run(&r, &[pricing, elsewhere], &[running, done]);
    let windows: Vec<String> = config
        .guardrail_settle_windows
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(windows, ["30m", "1h", "24h"]);
    // A config without outcome guardrails carries none (and its revision is unchanged by them).
    let plain = run(&router(serde_json::json!({})), &[], &[]);
    assert!(plain.guardrail_settle_windows.is_empty());
    assert!(
        !serde_json::to_string(&plain)
            .unwrap()
            .contains("guardrailSettleWindows")
    );
}

#[test]
fn a_holdout_pins_the_stable_versions_and_keeps_them_loaded_after_promotion() {
    use switchboard_crds::router::PinnedVersion;
    let mut r = router(serde_json::json!({}));
    r.spec.holdout = Some(serde_json::from_value(serde_json::json!({"share": "5%"})).unwrap());
    let compile_with = |adapters: &[AdapterPatch], holdout| {
        compile(CompileInput {
            router: &r,
            knowledge_base: &kb(Some(3)),
            adapters,
            experiments: &[],
            holdout,
        })
        .unwrap()
    };

    // It starts during pricing's canary: the stable 1.0.0 is pinned, not the canary.
    let canarying = [patch(
        "pricing",
        "pricing",
        serde_json::json!({}),
        "1.1.0",
        canary("1.0.0", "1.1.0", 25, "Canary"),
    )];
    let started = compile_with(&canarying, HoldoutPins::Start).config;
    let holdout = started.holdout.clone().unwrap();
    assert_eq!(holdout.share.to_string(), "5%");
    assert_eq!(
        holdout.pinned.into_iter().collect::<Vec<_>>(),
        [("pricing".to_owned(), "1.0.0".to_owned())]
    );
    assert!(
        started
            .adapters
            .iter()
            .all(|a| a.role != AdapterRole::Pinned),
        "1.0.0 is loaded already, as the stable version"
    );

    // 1.1.0 is promoted: everyone else moves on, the holdout keeps 1.0.0 loaded from history.
    // A pinned lineage whose AdapterPatch is gone is left out, and says so.
    let promoted = [patch(
        "pricing",
        "pricing",
        serde_json::json!({}),
        "1.1.0",
        serde_json::json!({"phase": "Promoted", "stableVersion": "1.1.0", "candidateVersion": "1.1.0",
            "history": [
                {"version": "1.0.0", "sha256": format!("sha256:{}", "cd".repeat(32)),
                 "uri": "file:///adapters/pricing/1.0.0", "phase": "Superseded"},
                {"version": "1.1.0", "sha256": format!("sha256:{}", "ab".repeat(32)), "phase": "Promoted"}]}),
    )];
    let pins = [
        PinnedVersion {
            lineage: "pricing".into(),
            version: "1.0.0".into(),
        },
        PinnedVersion {
            lineage: "billing".into(),
            version: "2.0.0".into(),
        },
    ];
    let compiled = compile_with(&promoted, HoldoutPins::Pinned(&pins));
    let config = compiled.config;
    let roles: Vec<(String, AdapterRole)> = config
        .adapters
        .iter()
        .map(|a| (a.version.clone(), a.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("1.1.0".to_owned(), AdapterRole::Stable),
            ("1.0.0".to_owned(), AdapterRole::Pinned)
        ]
    );
    let pinned = &config.adapters[1];
    assert_eq!(
        pinned.artifact.uri.as_deref(),
        Some("file:///adapters/pricing/1.0.0")
    );
    assert_eq!(
        config
            .holdout
            .as_ref()
            .unwrap()
            .pinned
            .keys()
            .collect::<Vec<_>>(),
        ["pricing"]
    );
    let skipped = &compiled.skipped;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(
        (skipped[0].kind, skipped[0].name.as_str(), skipped[0].reason),
        ("HoldoutPin", "billing@2.0.0", "PinnedVersionUnavailable")
    );

    // Ended (or no spec.holdout): no holdout, no pinned entry.
    let ended = compile_with(&promoted, HoldoutPins::Off).config;
    assert!(ended.holdout.is_none());
    assert!(ended.adapters.iter().all(|a| a.role != AdapterRole::Pinned));
}
