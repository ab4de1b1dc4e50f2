//! DPO on the real SmolLM2-135M: a few preference pairs (the product's actual policy chosen, a
//! wrong one rejected) teach the adapter to prefer the right answer to held-out questions it
//! never saw: the held-out DPO loss falls below the untrained adapter's ln 2 and its implicit
//! reward ranks the chosen answers first.

use crate::support;

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
