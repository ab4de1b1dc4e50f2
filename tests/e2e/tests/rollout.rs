//! Issue 7 item 7, tier 3: adapter rollouts end to end, across real processes.
//!
//! Each story runs its own "cluster" in a namespace of the real control plane (etcd,
//! kube-apiserver, kube-controller-manager): the real `switchboard-operator` under the chart's
//! RBAC (Prometheus metrics source, 2 s analysis interval), the stories' node running the pods
//! it asks for — the KnowledgeBase's index-build Job, then a real `switchboard-runtime` serving
//! the Router (SmolLM2-135M with PEFT LoRA adapters, MiniLM retrieval over the sample
//! KnowledgeBase) as the runtime Deployment's pod —, a real Prometheus scraping it every second,
//! and a simulated helpdesk whose customers escalate with a probability that depends on the
//! adapter version that answered them.
//!
//! (a) a canary whose escalations rise is rolled back automatically: status and an Event say
//!     why, and the runtime stops serving the candidate;
//! (b) a healthy canary walks its steps and is promoted;
//! (c) the operator SIGKILLed mid-rollout and restarted resumes without repeating or skipping a
//!     step.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use switchboard_e2e::helpdesk::{EscalationModel, Helpdesk};
use switchboard_e2e::story::{
    LINEAGE, RolloutPlan, SETTLE_AFTER, Story, adapter_patch, lora_artifact, wait_for,
};

const STABLE: &str = "1.0.0";
const CANDIDATE: &str = "1.1.0";

/// One observed state of the rollout.
#[derive(Debug, Clone, PartialEq)]
struct Observation {
    phase: String,
    step: Option<i64>,
    step_started_at: Option<String>,
    weight: Option<i64>,
}

/// Records every distinct rollout state the AdapterPatch goes through (polled every 250 ms).
struct Timeline {
    seen: Arc<Mutex<Vec<Observation>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    fn start(story: &Story) -> Self {
        let seen: Arc<Mutex<Vec<Observation>>> = Arc::default();
        let api = story.adapter_patches();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(Some(patch)) = api.get_opt(LINEAGE).await {
                        let status = serde_json::to_value(&patch.status).unwrap_or(Value::Null);
                        let observation = Observation {
                            phase: status["phase"].as_str().unwrap_or("").to_owned(),
                            step: status["currentStep"].as_i64(),
                            step_started_at: status["stepStartedAt"].as_str().map(str::to_owned),
                            weight: status["canaryWeight"].as_i64(),
                        };
                        let mut seen = seen.lock().unwrap();
                        if seen.last() != Some(&observation) {
                            seen.push(observation);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        Self { seen, task }
    }

    fn observations(&self) -> Vec<Observation> {
        self.seen.lock().unwrap().clone()
    }

    /// The canary steps in the order they were observed, each with its start time(s).
    fn canary_steps(&self) -> Vec<(i64, Vec<String>)> {
        let mut steps: Vec<(i64, Vec<String>)> = Vec::new();
        for o in self.observations().iter().filter(|o| o.phase == "Canary") {
            let (Some(step), Some(started)) = (o.step, o.step_started_at.clone()) else {
                continue;
            };
            match steps.last_mut() {
                Some((last, starts)) if *last == step => {
                    if !starts.contains(&started) {
                        starts.push(started);
                    }
                }
                _ => steps.push((step, vec![started])),
            }
        }
        steps
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn seconds(rfc3339: &str) -> i64 {
    let time = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"));
    time.unix_timestamp()
}

fn escalation(stable: f64, candidate: f64) -> EscalationModel {
    Arc::new(move |version: Option<&str>| {
        if version == Some(CANDIDATE) {
            candidate
        } else {
            stable
        }
    })
}

/// Common beginning: the stable version promoted and served, the helpdesk running, then the
/// candidate version published.
async fn roll_out_candidate(
    story: &Story,
    plan: &RolloutPlan,
    model: EscalationModel,
    seed: u64,
) -> (std::net::SocketAddr, Helpdesk) {
    let runtime = story.runtime().await;
    let stable = lora_artifact(&story.work.path().join("adapters/billing-1.0.0"), false);
    let candidate = lora_artifact(&story.work.path().join("adapters/billing-1.1.0"), true);
    assert_ne!(stable.sha256, candidate.sha256);

    // The first version has no baseline to compare with: promoted once its artifact checks out.
    story
        .adapter_patches()
        .create(
            &PostParams::default(),
            &adapter_patch(STABLE, &stable, plan),
        )
        .await
        .unwrap();
    story
        .wait_for_status("1.0.0 to be promoted", Duration::from_secs(120), |s| {
            s["phase"] == "Promoted" && s["stableVersion"] == STABLE
        })
        .await;
    story
        .wait_for_runtime_adapters(runtime, &[(STABLE, "stable")])
        .await;

    let helpdesk = Helpdesk::start(runtime, seed, model);
    let next = adapter_patch(CANDIDATE, &candidate, plan);
    let spec = json!({"spec": {"version": CANDIDATE, "artifact": next.spec.artifact}});
    story
        .adapter_patches()
        .patch(LINEAGE, &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    story
        .wait_for_status("the canary to start", Duration::from_secs(120), |s| {
            s["phase"] == "Canary" && s["candidateVersion"] == CANDIDATE
        })
        .await;
    story
        .wait_for_runtime_adapters(runtime, &[(STABLE, "stable"), (CANDIDATE, "canary")])
        .await;
    (runtime, helpdesk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_whose_escalations_rise_is_rolled_back() {
    let story = Story::start("rollback").await;
    let plan = RolloutPlan {
        steps: vec![(50, "1m"), (80, "1m")],
        min_samples: 15,
    };
    let (runtime, mut helpdesk) = roll_out_candidate(&story, &plan, escalation(0.05, 0.7), 1).await;

    let status = story
        .wait_for_status(
            "the guardrail to roll the canary back",
            Duration::from_secs(240),
            |s| s["phase"] == "RolledBack",
        )
        .await;

    // The status says why, with the numbers.
    assert_eq!(status["stableVersion"], STABLE, "{status:#}");
    let analysis = &status["lastAnalysis"];
    assert_eq!(analysis["decision"], "Rollback", "{status:#}");
    let guardrail = analysis["guardrails"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["metric"] == "escalationRate"))
        .unwrap_or_else(|| panic!("no escalationRate analysis in {status:#}"));
    assert_eq!(guardrail["breached"], true, "{guardrail:#}");
    // Compared at the guardrail's follow-up, with the answers still inside it counted apart.
    assert_eq!(guardrail["settleAfter"], SETTLE_AFTER, "{guardrail:#}");
    assert!(
        guardrail["candidate"]["unsettled"].is_i64(),
        "{guardrail:#}"
    );
    let (baseline, candidate) = (&guardrail["baseline"], &guardrail["candidate"]);
    assert!(candidate["trials"].as_i64().unwrap() >= 15, "{guardrail:#}");
    assert!(baseline["trials"].as_i64().unwrap() >= 15, "{guardrail:#}");
    assert!(
        candidate["rate"].as_f64().unwrap() > baseline["rate"].as_f64().unwrap(),
        "{guardrail:#}"
    );
    let rolled_back = status["history"]
        .as_array()
        .and_then(|h| h.iter().find(|e| e["version"] == CANDIDATE))
        .unwrap_or_else(|| panic!("no history entry for {CANDIDATE}: {status:#}"));
    assert_eq!(rolled_back["phase"], "RolledBack", "{status:#}");
    assert!(rolled_back["finishedAt"].is_string(), "{status:#}");

    // And so does a Warning Event.
    let events = story.events().await;
    let breach = events
        .iter()
        .find(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some("GuardrailBreached")
        })
        .unwrap_or_else(|| panic!("no GuardrailBreached Warning Event in {events:#?}"));
    let note = breach.note.clone().unwrap_or_default();
    assert!(
        note.contains("escalationRate"),
        "the Event should name the metric: {note}"
    );

    // The runtime stops serving the candidate: its config, then every answer since.
    let config = story
        .wait_for_runtime_adapters(runtime, &[(STABLE, "stable")])
        .await;
    let revision = config["revision"].as_str().unwrap().to_owned();
    let after: Vec<_> = wait_for(
        "20 answers on the rolled-back config",
        Duration::from_secs(120),
        || {
            let tickets = helpdesk.recent();
            let revision = revision.clone();
            async move {
                let after: Vec<_> = tickets
                    .into_iter()
                    .filter(|t| t.config_revision == revision)
                    .collect();
                (after.len() >= 20).then_some(after)
            }
        },
    )
    .await;
    assert!(
        after
            .iter()
            .all(|t| t.adapter_version.as_deref() == Some(STABLE)),
        "answers after the rollback came from {:?}",
        after
            .iter()
            .map(|t| t.adapter_version.clone())
            .collect::<Vec<_>>()
    );
    helpdesk.stop();

    // Prometheus scraped the candidate's escalations at the follow-up (what the operator's
    // analysis read).
    let escalated = story
        .prometheus
        .query_value(&format!(
            "sum(switchboard_feedback_settled_total{{lineage=\"{LINEAGE}\",adapter_version=\"{CANDIDATE}\",outcome=\"escalated\",settle=\"{SETTLE_AFTER}\"}})"
        ))
        .unwrap();
    assert!(escalated.unwrap_or(0.0) >= 1.0, "{escalated:?}");
    let rollbacks = story
        .prometheus
        .wait_for_value(
            "sum(switchboard_adapter_rollbacks_total{lineage=\"billing\"})",
            Duration::from_secs(30),
            |v| v >= 1.0,
        )
        .unwrap();
    assert_eq!(rollbacks, 1.0);
    assert!(
        helpdesk.errors().len() < 5,
        "helpdesk errors: {:?}",
        helpdesk.errors()
    );
}

/// Checks that the canary steps were each walked once, in order, for at least their duration.
fn assert_steps_walked_once(timeline: &Timeline, steps: usize, min_step_seconds: i64) {
    let walked = timeline.canary_steps();
    let order: Vec<i64> = walked.iter().map(|(step, _)| *step).collect();
    assert_eq!(
        order,
        (0..steps as i64).collect::<Vec<_>>(),
        "each step once, in order: {:#?}",
        timeline.observations()
    );
    for (step, starts) in &walked {
        assert_eq!(
            starts.len(),
            1,
            "step {step} (re)started more than once: {starts:?}"
        );
    }
    for pair in walked.windows(2) {
        let (first, second) = (seconds(&pair[0].1[0]), seconds(&pair[1].1[0]));
        assert!(
            second - first >= min_step_seconds,
            "step {} started {}s after step {}: shorter than its duration",
            pair[1].0,
            second - first,
            pair[0].0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_walks_its_steps_and_is_promoted() {
    let story = Story::start("promote").await;
    let timeline = Timeline::start(&story);
    let plan = RolloutPlan {
        steps: vec![(25, "1m"), (50, "1m")],
        min_samples: 10,
    };
    let (runtime, mut helpdesk) =
        roll_out_candidate(&story, &plan, escalation(0.45, 0.35), 2).await;
    let status = story
        .wait_for_status(
            "the candidate to be promoted",
            Duration::from_secs(300),
            |s| s["phase"] == "Promoted" && s["stableVersion"] == CANDIDATE,
        )
        .await;
    helpdesk.stop();

    assert_steps_walked_once(&timeline, 2, 60);
    let weights: Vec<i64> = timeline
        .observations()
        .iter()
        .filter_map(|o| o.weight)
        .filter(|w| *w > 0)
        .collect();
    assert!(
        weights.contains(&25) && weights.contains(&50),
        "canary weights seen: {weights:?}"
    );
    let history = status["history"].as_array().unwrap();
    let phase_of = |v: &str| {
        history
            .iter()
            .find(|e| e["version"] == v)
            .map(|e| e["phase"].clone())
    };
    assert_eq!(phase_of(STABLE), Some(json!("Superseded")), "{status:#}");
    assert_eq!(phase_of(CANDIDATE), Some(json!("Promoted")), "{status:#}");
    story
        .wait_for_runtime_adapters(runtime, &[(CANDIDATE, "stable")])
        .await;

    // The candidate really served traffic during the canary, at roughly its weights.
    let tally = helpdesk.tally();
    let (candidate_answers, _) = tally.get(CANDIDATE).copied().unwrap_or_default();
    let (stable_answers, _) = tally.get(STABLE).copied().unwrap_or_default();
    assert!(candidate_answers >= 10 && stable_answers >= 10, "{tally:?}");
    assert!(
        helpdesk.errors().len() < 5,
        "helpdesk errors: {:?}",
        helpdesk.errors()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_killed_mid_rollout_resumes_without_repeating_or_skipping_a_step() {
    let mut story = Story::start("restart").await;
    let timeline = Timeline::start(&story);
    let plan = RolloutPlan {
        steps: vec![(25, "1m"), (50, "1m")],
        min_samples: 10,
    };
    let (_runtime, mut helpdesk) =
        roll_out_candidate(&story, &plan, escalation(0.45, 0.35), 3).await;

    // Mid step 1: SIGKILL (no graceful shutdown, the Lease stays held until it expires).
    tokio::time::sleep(Duration::from_secs(15)).await;
    let before = story.patch_status().await;
    assert_eq!(before["phase"], "Canary", "{before:#}");
    assert_eq!(before["currentStep"], 0, "{before:#}");
    story.kill_operator();
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::block_in_place(|| story.start_operator());

    let status = story
        .wait_for_status(
            "the candidate to be promoted after the restart",
            Duration::from_secs(300),
            |s| s["phase"] == "Promoted" && s["stableVersion"] == CANDIDATE,
        )
        .await;
    helpdesk.stop();
    assert_steps_walked_once(&timeline, 2, 60);
    // The step the operator was killed in kept its start time across the restart.
    let walked = timeline.canary_steps();
    assert_eq!(
        Some(&walked[0].1[0]),
        before["stepStartedAt"].as_str().map(str::to_owned).as_ref()
    );
    let history = status["history"].as_array().unwrap();
    assert_eq!(
        history.iter().filter(|e| e["version"] == CANDIDATE).count(),
        1,
        "one history entry per version: {status:#}"
    );
}
