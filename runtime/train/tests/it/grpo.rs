//! `switchboard-train grpo` on the real SmolLM2-135M, from the grounded-answer SFT adapter (the
//! essay's order: SFT, then RL; the base model never cites, so its groups would hold no
//! citation to reinforce): grounded prompts over the Quillpad facts (the serving prompt: the
//! system turn and numbered facts), four answers sampled per prompt, rewarded for valid
//! citations, grounded sentences, format and the key fact. Over a short run the sampled
//! answers' reward rises and the greedy answers to held-out prompts score higher, the KL to the
//! SFT adapter stays bounded, the monitors are reported, and the adapter loads in the runtime
//! like any other.
//!
//! CPU: 8 training prompts, 2 per step, 12 steps of 4 answers of at most 24 tokens (~2.5 min).

use crate::support;

use serde_json::Value;
use switchboard_model::llama::LlamaModel;
use switchboard_model::lora::LoraAdapter;
use tch::Device;

#[test]
fn grpo_raises_the_reward_under_a_bounded_kl_and_the_adapter_loads() {
    let model = support::model();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("grpo");
    let sft = support::example("adapters/grounded-answers/1.0.0");
    let encoder = support::root().join(".cache/models/all-MiniLM-L6-v2");
    let args = [
        "grpo",
        "--model",
        model.to_str().unwrap(),
        "--data",
        support::data("grpo_prompts.jsonl").to_str().unwrap(),
        "--held-out-fraction",
        "0.34",
        "--output",
        out.to_str().unwrap(),
        "--steps",
        "12",
        "--group",
        "4",
        "--prompts-per-step",
        "2",
        "--max-new-tokens",
        "24",
        "--lr",
        "5e-4",
        "--init-adapter",
        sft.to_str().unwrap(),
        "--reference-adapter",
        sft.to_str().unwrap(),
        "--encoder",
        encoder.to_str().unwrap(),
        "--rank",
        "8",
        "--threads",
        "2",
        "--device",
        "cpu",
    ]
    .map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = support::train(&args, &[]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("training_report.json")).unwrap()).unwrap();
    let g = &report["training"]["grpo"];
    println!("grpo: {g}");
    assert_eq!(report["training"]["method"], "grpo");
    let steps = g["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 12);
    // The monitors are there; the KL to the SFT adapter stays bounded (a spike is answered by
    // a larger β: the median and the end of the run are what stay low).
    let mut kls: Vec<f64> = steps.iter().map(|s| s["kl"].as_f64().unwrap()).collect();
    for s in steps {
        assert!(
            (0.0..=1.0).contains(&s["diversity"].as_f64().unwrap()),
            "{s}"
        );
        assert!(s["meanLength"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["beta"].as_f64().unwrap() > 0.0, "{s}");
    }
    assert!(kls.last().copied().unwrap() < 1.0, "{kls:?}");
    kls.sort_by(f64::total_cmp);
    assert!(kls[kls.len() / 2] < 0.5, "median KL: {kls:?}");
    assert!(g["lengthDrift"].as_f64().unwrap() > 0.0);
    assert!(g["trainRewardGain"].as_f64().is_some());
    // The held-out prompts, answered greedily, score higher after the run.
    let before = g["heldOutBefore"]["meanReward"].as_f64().unwrap();
    let after = g["heldOutAfter"]["meanReward"].as_f64().unwrap();
    assert!(after > before, "held-out reward {before} -> {after}");
    // The adapter is an adapter like any other.
    let base = LlamaModel::load(&model, Device::Cpu).unwrap();
    LoraAdapter::load("grpo", &out, &base).unwrap();
}
