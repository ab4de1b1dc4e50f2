//! `switchboard-train sft` end to end on the real SmolLM2-135M: a small support data set about a
//! fictional product (Quillpad) teaches the adapter its policies, the held-out questions (other
//! wordings of the same facts) get a clearly lower loss, the PEFT directory loads in the runtime
//! with the digest `verify-artifact` computes, and `--apply` makes it the next version of the
//! example AdapterPatch in a (stand-in) cluster, where the operator's AdapterPatch controller
//! verifies the real artifact and starts the rollout in Shadow.
//!
//! CPU-cheap: 20 short examples, one epoch of 5 steps, 2 libtorch threads.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;
use switchboard_artifact::oci::Credentials;
use switchboard_crds::adapter_patch::AdapterPhase;
use switchboard_crds::{AdapterPatch, AdapterPatchSpec, Resource, resource_from_value};
use switchboard_model::llama::LlamaModel;
use switchboard_model::lora::LoraAdapter;
use switchboard_operator::adapter_patch::{self, artifact::PeftArtifacts};
use switchboard_operator::context::{Context, Settings};
use switchboard_operator::fakes::{FakeClock, FnSource};
use switchboard_operator::metrics::Metrics;
use switchboard_operator::ports::{ArtifactCheck, ArtifactChecker, BoxFuture};
use switchboard_testkit::controlplane::ControlPlane;
use tch::Device;

/// The operator's real artifact check (`file://`: copy, digest, adapter_config.json against
/// the spec), except for the example's current version, whose registry
/// (`registry.example.com`) does not exist: that one is taken as verified, so 1.3.0 is the
/// stable version the trained 1.4.0 is compared with.
#[derive(Debug)]
struct ExampleRegistry(PeftArtifacts);

impl ArtifactChecker for ExampleRegistry {
    fn check<'a>(
        &'a self,
        spec: &'a AdapterPatchSpec,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, ArtifactCheck> {
        if spec.artifact.uri.starts_with("oci://registry.example.com/") {
            Box::pin(async { ArtifactCheck::Verified })
        } else {
            self.0.check(spec, credentials)
        }
    }
}

async fn reconcile(ctx: &Arc<Context>, api: &Api<AdapterPatch>) -> AdapterPatch {
    let p = api.get("pricing").await.unwrap();
    adapter_patch::reconcile(Arc::new(p), ctx.clone())
        .await
        .unwrap();
    api.get("pricing").await.unwrap()
}

fn phase(p: &AdapterPatch) -> AdapterPhase {
    p.status.as_ref().unwrap().phase
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sft_lowers_held_out_loss_and_the_adapter_enters_the_rollout() {
    let model_path = support::model();
    let work = tempfile::tempdir().unwrap();
    // The real control plane: a namespace of this test's own, the operator under the chart's
    // RBAC, the trainer's `--apply` with the admin kubeconfig.
    let (plane, ns) = tokio::task::spawn_blocking(|| {
        let plane = ControlPlane::shared();
        (plane, plane.operator_namespace("train"))
    })
    .await
    .unwrap();
    let kubeconfig = plane.kubeconfig();
    let client = plane.admin_client(&ns).await;
    let api: Api<AdapterPatch> = Api::default_namespaced(client.clone());

    // The example AdapterPatch at 1.3.0, promoted. (Without its pull Secret, which would only
    // matter to a registry this test cannot reach.)
    let mut doc = support::example_adapter_patch();
    doc["spec"]["artifact"]
        .as_object_mut()
        .unwrap()
        .remove("pullSecretRef");
    doc["metadata"]["namespace"] = ns.clone().into();
    let created: AdapterPatch = serde_json::from_value(doc).unwrap();
    api.create(&PostParams::default(), &created).await.unwrap();
    let ctx = Arc::new(Context::new(
        plane.operator_client(&ns).await,
        Some("test".to_owned()),
        Arc::new(Metrics::new()),
        Arc::new(FnSource::empty()),
        Arc::new(ExampleRegistry(PeftArtifacts::new(None))),
        Settings {
            runtime_image: "runtime:test".to_owned(),
            analysis_interval: Duration::from_secs(2),
            ..Settings::default()
        },
        Arc::new(FakeClock::new(
            Timestamp::from_second(1_800_000_000).unwrap(),
        )),
    ));
    let p = reconcile(&ctx, &api).await;
    assert_eq!(phase(&p), AdapterPhase::Promoted, "{:?}", p.status);
    assert_eq!(
        p.status.as_ref().unwrap().stable_version.as_deref(),
        Some("1.3.0")
    );

    // Train the next version and patch it in, as the training Job does.
    let output = work.path().join("adapters/{lineage}/{version}");
    let report_path = work.path().join("report.json");
    let (data, held_out, example) = (
        support::data("support_sft.jsonl"),
        support::data("support_sft_heldout.jsonl"),
        support::example("adapterpatch.yaml"),
    );
    let args: Vec<String> = [
        "sft",
        "--model",
        model_path.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--held-out",
        held_out.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--report",
        report_path.to_str().unwrap(),
        "--adapter-patch",
        example.to_str().unwrap(),
        "--apply",
        "--namespace",
        ns.as_str(),
        "--rank",
        "8",
        "--target-modules",
        "q_proj,v_proj",
        "--lr",
        "3e-3",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--threads",
        "2",
        "--device",
        "cpu",
    ]
    .map(str::to_owned)
    .to_vec();
    let run = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        support::train(&args, &[("KUBECONFIG", kubeconfig.as_path())])
    })
    .await
    .unwrap();
    assert!(run.status.success(), "{}", support::stderr(&run));

    // Held-out loss: the questions it never saw, answered with the same facts, are clearly
    // more likely after training.
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let training = &report["training"];
    let before = training["initialHeldOut"]["loss"].as_f64().unwrap();
    let after = training["epochs"][0]["heldOut"]["loss"].as_f64().unwrap();
    println!("held-out loss {before:.3} -> {after:.3} nats/token, report: {training}");
    assert_eq!(training["heldOutExamples"], 5);
    assert_eq!(training["trainExamples"], 20);
    assert!(
        after < before - 0.25,
        "held-out loss {before:.3} -> {after:.3}: training did not teach the facts"
    );

    // The artifact: where --output put it, the digest verify-artifact computes, the report
    // inside, and it loads in the runtime against the base model.
    let dir = work.path().join("adapters/pricing/1.4.0");
    let uri = format!("file://{}", dir.display());
    let sha = report["artifact"]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(report["artifact"]["uri"], uri.as_str());
    assert!(dir.join("training_report.json").is_file());
    let verified = switchboard_artifact::VerifyReport::of_dir(&uri, &dir);
    assert_eq!(verified.error, None);
    assert_eq!(verified.sha256.as_deref(), Some(sha.as_str()));
    verify_with_the_runtime_binary(&uri, &sha);
    peft_loads(&dir);
    let model = LlamaModel::load(&model_path, Device::Cpu).unwrap();
    let adapter = LoraAdapter::load("pricing@1.4.0", &dir, &model).unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter.config().r, 8);
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["lora_alpha"], 16.0);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );

    // The printed manifest: the example at 1.4.0 with the new artifact, admitted as an update
    // of the example.
    let manifest: Value = serde_yaml::from_slice(&run.stdout).unwrap();
    assert_eq!(manifest["spec"]["version"], "1.4.0");
    assert_eq!(manifest["spec"]["artifact"]["uri"], uri.as_str());
    assert_eq!(manifest["spec"]["artifact"]["sha256"], sha.as_str());
    assert_eq!(manifest["spec"]["lora"]["rank"], 8);
    assert_eq!(manifest["metadata"]["name"], "pricing");
    let Resource::AdapterPatch(next) = resource_from_value(manifest.clone()).unwrap() else {
        panic!("not an AdapterPatch: {manifest}")
    };
    let example_doc = support::example_adapter_patch();
    let Resource::AdapterPatch(example) = resource_from_value(example_doc.clone()).unwrap() else {
        unreachable!()
    };
    next.spec.validate_update(&example.spec).unwrap();
    // Rollout and guardrails as the example's (typed: the cluster's copy has defaults filled).
    assert_eq!(next.spec.rollout, example.spec.rollout);
    assert_eq!(next.spec.guardrails, example.spec.guardrails);
    for same in ["lineage", "baseModel", "rollbackWindow"] {
        assert_eq!(manifest["spec"][same], example_doc["spec"][same], "{same}");
    }
    assert_eq!(report["adapterPatch"]["applied"], true);

    // --apply patched the cluster's object; the operator verifies the artifact for real and
    // starts the rollout: 1.4.0 in Shadow against the stable 1.3.0.
    let p = api.get("pricing").await.unwrap();
    assert_eq!(p.spec.version, "1.4.0");
    assert_eq!(p.spec.artifact.sha256.to_string(), sha);
    let mut p = reconcile(&ctx, &api).await;
    for _ in 0..3 {
        if phase(&p) != AdapterPhase::Validating {
            break;
        }
        p = reconcile(&ctx, &api).await;
    }
    let status = p.status.clone().unwrap();
    assert_eq!(status.phase, AdapterPhase::Shadow, "{status:?}");
    assert_eq!(status.candidate_version.as_deref(), Some("1.4.0"));
    assert_eq!(status.stable_version.as_deref(), Some("1.3.0"));
    let verified = switchboard_crds::find_condition(
        &status.conditions,
        switchboard_crds::conditions::ARTIFACT_VERIFIED,
    )
    .unwrap();
    assert_eq!(verified.status, "True", "{verified:?}");
}

/// `switchboard-runtime verify-artifact` (what the operator's verification Job runs for a
/// `pvc://` artifact) reports the digest the trainer reported. The runtime binary is another
/// package's: checked when it is built next to this one (as `hack/test.sh` builds the
/// workspace), skipped with the reason otherwise.
fn verify_with_the_runtime_binary(uri: &str, sha: &str) {
    let train = std::path::Path::new(env!("CARGO_BIN_EXE_switchboard-train"));
    let runtime = train.with_file_name("switchboard-runtime");
    if !runtime.exists() {
        println!(
            "skipped: {} is not built (cargo build -p switchboard-runtime)",
            runtime.display()
        );
        return;
    }
    let out = std::process::Command::new(&runtime)
        .args(["verify-artifact", "--uri", uri])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sha256"], sha, "{report}");
    let config: Value = serde_json::from_str(report["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["r"], 8);
}

/// Hugging Face PEFT loads the directory onto a SmolLM2-135M-shaped Llama (random weights: only
/// the adapter's names and shapes matter) and every tensor of the file lands in its LoRA module.
/// Needs the reference environment (`.cache/venv-ref` with torch, transformers and peft), which
/// CI does not install: skipped with the reason when it is absent.
fn peft_loads(dir: &std::path::Path) {
    const SCRIPT: &str = r#"
import sys, torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM
config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                     num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                     tie_word_embeddings=True)
model = PeftModel.from_pretrained(LlamaForCausalLM(config), sys.argv[1])
state = model.state_dict()
saved = load_file(sys.argv[1] + "/adapter_model.safetensors")
for key, tensor in saved.items():
    loaded = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
        ".lora_B.weight", ".lora_B.default.weight")
    assert loaded in state, f"PEFT has no {loaded}"
    assert torch.equal(state[loaded], tensor), f"{key} did not load"
print(f"PEFT loaded {len(saved)} tensors, r={model.peft_config['default'].r}")
"#;
    let python = support::root().join(".cache/venv-ref/bin/python");
    let has_peft = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import peft, transformers"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !has_peft {
        println!(
            "skipped the PEFT check: {} with peft and transformers is absent",
            python.display()
        );
        return;
    }
    let out = std::process::Command::new(&python)
        .args(["-c", SCRIPT, dir.to_str().unwrap()])
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("OMP_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PEFT refused the adapter: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
}
