//! Reranker training on a tiny generated BERT checkpoint: the loss goes down, the saved directory
//! loads with `CrossEncoder::load`, scores exactly as the trainer did, and ranks as it was taught.
use std::path::{Path, PathBuf};

use switchboard_model::bert::{BertConfig, BertModel};
use switchboard_model::rerank_train::{RerankerTrainer, TrainConfig, TrainingGroup};
use switchboard_model::{CrossEncoder, ModelError};
use tch::{Device, Tensor, nn};

fn minilm_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("tokenizer.json").exists(),
        "run hack/setup.sh models"
    );
    dir
}

/// A small random BERT encoder in the sentence-transformers layout (no `bert.` prefix, no
/// pooler: the trainer initialises one) with the MiniLM tokenizer.
fn tiny_encoder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "hidden_act": "gelu", "max_position_embeddings": 128,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        minilm_dir().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let cfg: BertConfig = serde_json::from_value(config).unwrap();
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = BertModel::new(vs.root(), &cfg, false);
    let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

/// Each query names a fruit; its positive is the passage about that fruit, the negatives are
/// passages about the others. Nothing but training makes the positive win.
fn groups() -> Vec<TrainingGroup> {
    let topics = [
        ("apple", "apples grow on trees in cold orchards"),
        ("banana", "bananas are yellow and come from the tropics"),
        ("cherry", "cherries are small red stone fruits"),
        ("grape", "grapes are pressed to make wine"),
    ];
    topics
        .iter()
        .map(|(name, passage)| TrainingGroup {
            query: format!("tell me about the {name}"),
            positive: (*passage).to_owned(),
            negatives: topics
                .iter()
                .filter(|(other, _)| other != name)
                .map(|(_, p)| (*p).to_owned())
                .collect(),
            teacher: None,
        })
        .collect()
}

fn config() -> TrainConfig {
    TrainConfig {
        learning_rate: 2e-3,
        warmup_share: 0.1,
        dropout: Some(0.0),
        max_len: 64,
        ..TrainConfig::default()
    }
}

#[test]
fn training_lowers_the_loss_and_the_saved_reranker_ranks_as_trained() {
    let encoder = tiny_encoder();
    let mut trainer = RerankerTrainer::from_encoder(encoder.path(), Device::Cpu, config()).unwrap();
    let data = groups();
    let before = trainer.loss(&data).unwrap();
    // Four groups of four: a random head is near ln 4.
    assert!((before - 4f64.ln()).abs() < 0.5, "initial loss {before}");
    let steps = 60;
    trainer.set_total_steps(steps);
    for _ in 0..steps {
        trainer.train_step(&data).unwrap();
    }
    assert_eq!(trainer.steps(), steps);
    let after = trainer.loss(&data).unwrap();
    assert!(after < 0.2 * before, "loss {before} -> {after}");

    let out = tempfile::tempdir().unwrap();
    trainer.save(out.path(), encoder.path()).unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["num_labels"], 1);
    assert_eq!(saved["architectures"][0], "BertForSequenceClassification");
    let names: Vec<String> = Tensor::read_safetensors(out.path().join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for name in [
        "bert.embeddings.word_embeddings.weight",
        "bert.pooler.dense.weight",
        "classifier.weight",
        "classifier.bias",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }

    let model = CrossEncoder::load(out.path(), Device::Cpu).unwrap();
    for group in &data {
        let passages: Vec<&str> = std::iter::once(group.positive.as_str())
            .chain(group.negatives.iter().map(String::as_str))
            .collect();
        let loaded = model.relevance_logits(&group.query, &passages, 3).unwrap();
        let trained = trainer.logits(&group.query, &passages).unwrap();
        for (a, b) in loaded.iter().zip(&trained) {
            assert!((a - b).abs() < 1e-4, "loaded {a} vs trainer {b}");
        }
        let best = loaded
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(best, 0, "{}: {loaded:?}", group.query);
    }

    // The saved checkpoint can be trained further, starting where it stopped.
    let resumed = RerankerTrainer::from_cross_encoder(out.path(), Device::Cpu, config()).unwrap();
    assert!((resumed.loss(&data).unwrap() - after).abs() < 1e-4);
}

#[test]
fn bad_inputs_are_named() {
    let encoder = tiny_encoder();
    let mut trainer = RerankerTrainer::from_encoder(encoder.path(), Device::Cpu, config()).unwrap();
    let lonely = TrainingGroup {
        query: "q".into(),
        positive: "p".into(),
        negatives: Vec::new(),
        teacher: None,
    };
    let err = trainer.train_step(&[lonely]).unwrap_err();
    assert!(err.to_string().contains("no negative"), "{err}");
    // Teacher scores must cover the positive and every negative.
    let short = TrainingGroup {
        query: "q".into(),
        positive: "p".into(),
        negatives: vec!["n".into()],
        teacher: Some(vec![0.5]),
    };
    let err = trainer.train_step(&[short]).unwrap_err();
    assert!(
        err.to_string().contains("1 teacher scores for 2 passages"),
        "{err}"
    );

    // An encoder checkpoint missing a layer tensor: the error names it.
    let path = encoder.path().join("model.safetensors");
    let victim = "encoder.layer.1.output.dense.weight";
    let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != victim)
        .collect();
    Tensor::write_safetensors(&kept, &path).unwrap();
    let err = RerankerTrainer::from_encoder(encoder.path(), Device::Cpu, config()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { name, .. } if name == victim),
        "{err}"
    );
    // A max_len beyond the position table is refused.
    let long = TrainConfig {
        max_len: 4096,
        ..config()
    };
    let err = RerankerTrainer::from_encoder(minilm_dir(), Device::Cpu, long).unwrap_err();
    assert!(err.to_string().contains("max_len 4096"), "{err}");
}
