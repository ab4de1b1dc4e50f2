//! Issue 22 item 5, tier 3: the offline evaluation gate, end to end across real processes.
//!
//! The story's cluster (its namespace on the real control plane, the real operator under the
//! chart's RBAC, the real runtime serving the Router over the sample KnowledgeBase, all pods run
//! by the stories' node) with a golden set in a ConfigMap. The `billing` lineage
//! is a fallback adapter (it answers every question) at 1.0.0 — the grounded-answer adapter
//! trained in-project (`examples/adapters/grounded-answers/1.0.0`). Then:
//!
//! 1. 1.1.0 is an adapter that deflects every question to "our support team" citing a fact
//!    its prompt does not have (`[4]` of three: a hot-fix gone wrong;
//!    `tests/e2e/fixtures/deflector`, made as docs/training.md says). With `spec.evaluation`,
//!    the operator runs the evaluation Job (the real `switchboard-runtime eval --answers` on the
//!    baseline and candidate RuntimeConfigs it compiled, run by the node, completed or failed by
//!    kube-controller-manager's Job controller); the candidate's answers carry invalid
//!    citations (the runtime would remove them and fall back to the extractive answer, but the
//!    model got worse and `maxInvalidCitationRate` is 0%), so the version is Failed with the
//!    numbers in the `Evaluated` condition, `status.evaluation` and a Warning Event — it **never
//!    reaches Shadow**, and the runtime keeps serving 1.0.0.
//! 2. 1.2.0, the good adapter again (a new digest), passes the same gate and goes on to Shadow.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use switchboard_e2e::story::{Artifact, LINEAGE, ROUTER, RolloutPlan, Story, adapter_patch};

/// Golden questions of `examples/kb/golden-answers.jsonl` the story asks: a few answerable
/// across sources and two the knowledge base cannot answer.
const GOLDEN_IDS: [&str; 8] = [
    "a001", "a038", "a041", "a056", "a092", "a101", "a121", "a113",
];

fn golden_set() -> String {
    let root = switchboard_testkit::process::workspace_root();
    let text = std::fs::read_to_string(root.join("examples/kb/golden-answers.jsonl")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            GOLDEN_IDS.contains(&v["id"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(lines.len(), GOLDEN_IDS.len(), "golden ids missing");
    lines.join("\n")
}

/// A copy of a PEFT directory, with one bit of its weights flipped when `perturb` (a new digest).
fn artifact(from: &Path, to: &Path, perturb: bool) -> Artifact {
    std::fs::create_dir_all(to).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    let weights = to.join("adapter_model.safetensors");
    if perturb {
        let mut bytes = std::fs::read(&weights).unwrap();
        let at = bytes.len() - 4;
        bytes[at] ^= 1;
        std::fs::write(&weights, bytes).unwrap();
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&weights).unwrap());
    Artifact {
        dir: to.to_path_buf(),
        sha256: format!(
            "sha256:{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
    }
}

/// The AdapterPatch at `version`: a fallback lineage, LoRA of `rank` on q/v, the gate on.
fn patch(version: &str, artifact: &Artifact, rank: i64) -> switchboard_crds::AdapterPatch {
    let plan = RolloutPlan {
        steps: vec![(50, "1h")],
        min_samples: 1000,
    };
    let mut p = adapter_patch(version, artifact, &plan);
    let mut value = serde_json::to_value(&p).unwrap();
    value["spec"]["lora"] =
        json!({"rank": rank, "alpha": 2 * rank, "targetModules": ["q_proj", "v_proj"]});
    value["spec"]["domain"]["fallback"] = json!(true);
    value["spec"]["rollout"]["shadow"] = json!({"duration": "1h", "sampleShare": "10%"});
    value["spec"]["evaluation"] = json!({
        "routerRef": {"name": ROUTER},
        "goldenSet": {"name": "golden", "key": "golden.jsonl"},
        // Eight questions: one question is 12.5 points; a real golden set is larger.
        "maxKeyFactAccuracyDrop": "20%",
        "maxFalseRefusalIncrease": "20%",
        "maxCorrectRefusalDrop": "50%",
        "timeout": "10m",
    });
    p = serde_json::from_value(value).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_that_hurts_the_golden_set_never_reaches_shadow() {
    let story = Story::start("evaluation-gate").await;
    let root = switchboard_testkit::process::workspace_root();
    let work = story.work.path().to_path_buf();
    let good = root.join("examples/adapters/grounded-answers/1.0.0");
    let deflector = root.join("tests/e2e/fixtures/deflector");
    let v1 = artifact(&good, &work.join("artifacts/1.0.0"), false);
    let v2 = artifact(&deflector, &work.join("artifacts/1.1.0"), false);
    let v3 = artifact(&good, &work.join("artifacts/1.2.0"), true);

    let maps: Api<ConfigMap> = Api::namespaced(story.client.clone(), &story.namespace);
    let golden: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "golden"},
        "data": {"golden.jsonl": golden_set()},
    }))
    .unwrap();
    maps.create(&PostParams::default(), &golden).await.unwrap();

    // 1.0.0: the first version, evaluated against the Router without the lineage.
    let patches = story.adapter_patches();
    patches
        .create(&PostParams::default(), &patch("1.0.0", &v1, 8))
        .await
        .unwrap();
    let status = story
        .wait_for_status("1.0.0 to be promoted", Duration::from_secs(600), |s| {
            s["stableVersion"] == "1.0.0"
        })
        .await;
    assert_eq!(status["evaluation"]["passed"], true, "{status}");
    let runtime = story.runtime().await;
    story
        .wait_for_runtime_adapters(runtime, &[("1.0.0", "Stable")])
        .await;

    // 1.1.0 cites facts it was not given: Failed by the gate, never Shadow.
    let seen_phases = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watcher = {
        let seen = seen_phases.clone();
        let api = story.adapter_patches();
        tokio::spawn(async move {
            loop {
                if let Ok(Some(p)) = api.get_opt(LINEAGE).await {
                    let phase = serde_json::to_value(&p.status).unwrap_or(Value::Null)["phase"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&phase) {
                        seen.push(phase);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let bad = patch("1.1.0", &v2, 1);
    patches
        .patch(
            LINEAGE,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": bad.spec})),
        )
        .await
        .unwrap();
    let status = story
        .wait_for_status(
            "1.1.0 to fail its evaluation",
            Duration::from_secs(600),
            |s| s["phase"] == "Failed",
        )
        .await;
    let evaluation = &status["evaluation"];
    assert_eq!(evaluation["version"], "1.1.0", "{status}");
    assert_eq!(evaluation["baselineVersion"], "1.0.0", "{status}");
    assert_eq!(evaluation["passed"], false, "{status}");
    let invalid = evaluation["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "invalidCitationRate")
        .unwrap();
    assert_eq!(invalid["passed"], false, "{status}");
    assert_eq!(invalid["baseline"].as_f64().unwrap(), 0.0, "{status}");
    assert!(invalid["candidate"].as_f64().unwrap() > 0.0, "{status}");
    let condition = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Evaluated")
        .unwrap();
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "EvaluationFailed");
    let message = condition["message"].as_str().unwrap();
    assert!(message.contains("invalidCitationRate"), "{message}");
    assert_eq!(status["stableVersion"], "1.0.0");
    let events = story.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("EvaluationFailed")
                && e.type_.as_deref() == Some("Warning")),
        "{events:?}"
    );
    // Still 1.0.0 on the runtime, and never a Shadow phase.
    story
        .wait_for_runtime_adapters(runtime, &[("1.0.0", "Stable")])
        .await;
    assert!(
        !seen_phases.lock().unwrap().iter().any(|p| p == "Shadow"),
        "{:?}",
        seen_phases.lock().unwrap()
    );

    // 1.2.0, the good adapter again: passes and goes on to Shadow.
    let next = patch("1.2.0", &v3, 8);
    patches
        .patch(
            LINEAGE,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": next.spec})),
        )
        .await
        .unwrap();
    let status = story
        .wait_for_status("1.2.0 to reach Shadow", Duration::from_secs(600), |s| {
            s["phase"] == "Shadow"
        })
        .await;
    assert_eq!(status["evaluation"]["version"], "1.2.0", "{status}");
    assert_eq!(status["evaluation"]["passed"], true, "{status}");
    watcher.abort();
}
