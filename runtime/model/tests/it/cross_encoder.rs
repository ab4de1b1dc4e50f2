//! The cross-encoder loader against Hugging Face transformers on a small generated checkpoint
//! (no pretrained cross-encoder exists on these machines; see hack/reference/cross_encoder_fixture.py).
use std::path::Path;

use switchboard_model::{CrossEncoder, ModelError};
use tch::Device;

#[derive(serde::Deserialize)]
struct Reference {
    query: String,
    passages: Vec<String>,
    logits: Vec<f32>,
}

/// The fixture checkpoint plus the MiniLM tokenizer (same vocabulary), in a temp dir.
fn checkpoint() -> (tempfile::TempDir, Reference) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-cross-encoder");
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/models/all-MiniLM-L6-v2/tokenizer.json");
    assert!(tokenizer.exists(), "run hack/setup.sh models");
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::copy(tokenizer, dir.path().join("tokenizer.json")).unwrap();
    let reference =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap())
            .unwrap();
    (dir, reference)
}

#[test]
fn logits_match_transformers() {
    let (dir, reference) = checkpoint();
    let model = CrossEncoder::load(dir.path(), Device::Cpu).unwrap();
    // Batch of 2 mixes lengths: padding and segment ids must not change a pair's logit.
    let logits = model
        .logits(&reference.query, &reference.passages, 2)
        .unwrap();
    assert_eq!(logits.len(), reference.logits.len());
    for (got, want) in logits.iter().zip(&reference.logits) {
        assert!((got - want).abs() < 1e-4, "logit {got} vs reference {want}");
    }
    let scores = model
        .score(&reference.query, &reference.passages, 8)
        .unwrap();
    for (score, logit) in scores.iter().zip(&reference.logits) {
        assert!((score - 1.0 / (1.0 + (-logit).exp())).abs() < 1e-4);
    }
}

#[test]
fn classifier_head_is_required() {
    let (dir, _) = checkpoint();
    // Drop the classifier: a bare BertModel is not a reranker, and the error must say which tensor.
    let path = dir.path().join("model.safetensors");
    let tensors: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("classifier."))
        .collect();
    tch::Tensor::write_safetensors(&tensors, &path).unwrap();
    let err = CrossEncoder::load(dir.path(), Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { name, .. } if name.starts_with("classifier.")),
        "{err}"
    );
}
