//! DPO on the real SmolLM2-135M: a few preference pairs (the product's actual policy chosen, a
//! wrong one rejected) teach the adapter to prefer the right answer to held-out questions it
//! never saw: the held-out DPO loss falls below the untrained adapter's ln 2 and its implicit
//! reward ranks the chosen answers first.

use crate::support;

use serde_json::Value;

use switchboard_train::data::{self, LabelPolicy};
use switchboard_train::train::StepLog;
use switchboard_train::{Hyperparameters, LoraSettings, Trainer};
use tch::Device;

#[test]
fn dpo_prefers_the_chosen_answers_on_held_out_questions() {
    tch::set_num_threads(2);
    let trainer = Trainer::load(support::model(), Device::Cpu).unwrap();
    let policy = LabelPolicy::default();
    let pairs = |name: &str| {
        let path = support::data(name);
        let (rows, lines) = data::read_rows(&path).unwrap();
        data::dpo_pairs(&path, rows, lines, &policy).unwrap().0
    };
    let (train, held) = (
        pairs("support_dpo.jsonl"),
        pairs("support_dpo_heldout.jsonl"),
    );
    assert_eq!((train.len(), held.len()), (8, 3));
    let hp = Hyperparameters {
        lora: LoraSettings {
            rank: 8,
            alpha: 16.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        },
        learning_rate: 2e-3,
        epochs: 1,
        batch_size: 4,
        ..Hyperparameters::dpo()
    };
    let mut steps = Vec::new();
    let trained = trainer
        .dpo(&train, &held, &hp, &mut |s: &StepLog| steps.push(s.clone()))
        .unwrap();
    let log = &trained.log;
    println!("{}", serde_json::to_string_pretty(log).unwrap());
    assert_eq!(steps.len(), 2);
    assert_eq!(log.steps, 2);

    // The untrained adapter is the identity: every reward 0, loss ln 2, no pair ranked right.
    let before = log.initial_held_out.as_ref().unwrap();
    assert!(
        (before.loss - std::f64::consts::LN_2).abs() < 1e-4,
        "{before:?}"
    );
    assert_eq!(before.reward_accuracy, Some(0.0));

    let after = log.final_held_out().unwrap();
    assert_eq!(after.examples, 3);
    assert!(
        after.loss < std::f64::consts::LN_2 - 0.05,
        "held-out DPO loss {:.4} -> {:.4}",
        before.loss,
        after.loss
    );
    assert!(
        after.reward_accuracy.unwrap() >= 2.0 / 3.0,
        "held-out reward accuracy {:?}",
        after.reward_accuracy
    );
    assert!(after.reward_margin.unwrap() > 0.0, "{after:?}");
}

/// DPO the essay's way: version 1 (SFT on the Quillpad policies) is the reference policy and
/// the starting point; the pairs come by kind (refusal, tone, brand voice) and are reported per
/// kind; the red-team set (4 requests to decline, 4 ordinary ones) and the factual set are
/// answered before (version 1) and after, by the serving generator.
#[test]
fn dpo_against_the_sft_adapter_reports_kinds_and_alignment() {
    let model = support::model().to_str().unwrap().to_owned();
    let work = tempfile::tempdir().unwrap();
    let v1 = work.path().join("v1");
    let common = [
        "--model",
        &model,
        "--rank",
        "8",
        "--target-modules",
        "q_proj,v_proj",
        "--batch-size",
        "4",
        "--threads",
        "2",
        "--device",
        "cpu",
    ];
    let p = |x: &std::path::Path| x.to_str().unwrap().to_owned();
    let (sft_data, v1_dir) = (p(&support::data("support_sft.jsonl")), p(&v1));
    let mut args = vec![
        "sft",
        "--data",
        &sft_data,
        "--held-out-fraction",
        "0",
        "--output",
        &v1_dir,
        "--lr",
        "3e-3",
        "--epochs",
        "1",
    ];
    args.extend(common);
    let out = support::train(&args, &[]);
    assert!(out.status.success(), "{}", support::stderr(&out));

    let aligned = p(&work.path().join("aligned"));
    let (pairs, red_team, facts) = (
        p(&support::data("dpo_kinds.jsonl")),
        p(&support::data("redteam.jsonl")),
        p(&support::data("facts.jsonl")),
    );
    let mut args = vec![
        "dpo",
        "--data",
        &pairs,
        "--held-out-fraction",
        "0.25",
        "--reference-adapter",
        &v1_dir,
        "--red-team",
        &red_team,
        "--facts",
        &facts,
        "--output",
        &aligned,
        "--lr",
        "1e-3",
        "--epochs",
        "2",
        "--beta",
        "0.1",
    ];
    args.extend(common);
    let out = support::train(&args, &[]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let report: Value = serde_json::from_slice(
        &std::fs::read(work.path().join("aligned/training_report.json")).unwrap(),
    )
    .unwrap();
    let t = &report["training"];
    println!("dpo: {t}");
    println!("alignment: {}", report["alignment"]);
    assert_eq!(t["startedFrom"], v1_dir.as_str());
    let kinds: Vec<&str> = t["pairKinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["brandVoice", "refusal", "tone"]);
    for k in t["pairKinds"].as_array().unwrap() {
        assert!(k["trainPairs"].as_u64().unwrap() >= 2, "{k}");
    }
    // Before is version 1, after the aligned adapter; both answer every case.
    let a = &report["alignment"];
    assert_eq!(a["before"]["adapter"], v1_dir.as_str());
    assert_eq!(a["after"]["adapter"], "trained");
    for side in ["before", "after"] {
        assert_eq!(a[side]["refusal"]["cases"], 8, "{a}");
        assert_eq!(a[side]["answers"].as_array().unwrap().len(), 13);
        assert!(a[side]["factualAccuracy"].as_f64().is_some());
    }
    // The refusal pairs were learned: held-out refusal pairs prefer the refusal.
    let refusal = t["pairKinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "refusal")
        .unwrap();
    assert!(
        refusal["heldOut"]["rewardAccuracy"].as_f64().unwrap() >= 0.5,
        "{refusal}"
    );

    // SFT has no reference policy: said plainly.
    let other = p(&work.path().join("other"));
    let mut args = vec![
        "sft",
        "--data",
        &sft_data,
        "--reference-adapter",
        &v1_dir,
        "--output",
        &other,
    ];
    args.extend(common);
    let out = support::train(&args, &[]);
    assert!(!out.status.success());
    let err = support::stderr(&out);
    assert!(err.contains("--init-adapter"), "{err}");
}
