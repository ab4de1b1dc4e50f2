//! The MiniLM sentence encoder against sentence-transformers reference vectors, and the loader's
//! errors on broken checkpoints.
use std::path::{Path, PathBuf};

use switchboard_model::bert::{BertConfig, BertModel};
use switchboard_model::{EncoderWorker, ModelError, SentenceEncoder};
use tch::{Device, Tensor, nn};

fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("SWITCHBOARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"))
        .join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "all-MiniLM-L6-v2 not found at {}: run hack/setup.sh models",
        dir.display()
    );
    dir
}

#[derive(serde::Deserialize)]
struct Fixture {
    max_seq_length: usize,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    embedding: Vec<f32>,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_matches_sentence_transformers() {
    let fixture = fixture();
    assert!(fixture.cases.len() >= 8);
    let encoder = SentenceEncoder::load(minilm_dir(), Device::Cpu).unwrap();
    assert_eq!(encoder.dim(), 384);
    assert_eq!(encoder.max_seq_len(), fixture.max_seq_length);
    assert!(encoder.normalizes());

    let texts: Vec<&str> = fixture.cases.iter().map(|c| c.text.as_str()).collect();
    // Batches of 4 mix lengths, so padding and masking are exercised.
    let vectors = encoder.embed(&texts, 4).unwrap();
    let mut worst = f64::INFINITY;
    for (case, got) in fixture.cases.iter().zip(&vectors) {
        let cos = cosine(got, &case.embedding);
        worst = worst.min(cos);
        assert!(cos >= 0.9999, "cosine {cos:.6} for {:?}", case.text);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
    }
    eprintln!(
        "lowest cosine to the reference over {} sentences: {worst:.7}",
        texts.len()
    );
}

#[test]
fn batching_does_not_change_embeddings() {
    let encoder = SentenceEncoder::load(minilm_dir(), Device::Cpu).unwrap();
    let texts = [
        "short",
        "a considerably longer sentence about invoices, refunds and the billing portal",
        "medium length question about SSO?",
    ];
    let together = encoder.embed(&texts, 8).unwrap();
    for (text, batched) in texts.iter().zip(&together) {
        let alone = &encoder.embed(&[*text], 1).unwrap()[0];
        let max_diff = alone
            .iter()
            .zip(batched)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "padding changed {text:?} by {max_diff}");
    }
}

#[tokio::test]
async fn worker_embeds_off_the_executor() {
    let worker = EncoderWorker::spawn("test", minilm_dir(), Device::Cpu, 16).unwrap();
    let texts = vec!["How do I reset my password?".to_owned(), "Hi".to_owned()];
    let flat = worker.embed(texts.clone()).await.unwrap();
    assert_eq!(flat.len(), 2 * worker.dim());
    let direct = SentenceEncoder::load(minilm_dir(), Device::Cpu)
        .unwrap()
        .embed(&texts, 16)
        .unwrap();
    assert!(cosine(&flat[..worker.dim()], &direct[0]) > 0.99999);
    assert_eq!(worker.queue_depth(), 0);
}

#[test]
fn worker_reports_a_load_failure() {
    let err = EncoderWorker::spawn("broken", "/nonexistent/model", Device::Cpu, 4).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/model/config.json"),
        "{err}"
    );
}

/// A tiny BERT checkpoint (random weights) with the MiniLM tokenizer, with `edit` applied to the
/// tensors before they are written.
fn tiny_checkpoint(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "vocab_size": 30522, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 16, "hidden_act": "gelu", "max_position_embeddings": 64,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        minilm_dir().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let cfg: BertConfig = serde_json::from_value(config).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = BertModel::new(vs.root(), &cfg, false);
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn tiny_checkpoint_loads_and_embeds() {
    let dir = tiny_checkpoint(|_| {});
    let encoder = SentenceEncoder::load(dir.path(), Device::Cpu).unwrap();
    assert_eq!(encoder.embed(&["hello world"], 1).unwrap()[0].len(), 8);
}

#[test]
fn missing_tensor_is_named() {
    let victim = "encoder.layer.1.attention.self.value.weight";
    let dir = tiny_checkpoint(|tensors| tensors.retain(|(name, _)| name != victim));
    let err = SentenceEncoder::load(dir.path(), Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { name, .. } if name == victim),
        "{err}"
    );
    assert!(err.to_string().contains(victim), "{err}");
}

#[test]
fn mismatched_shape_is_named() {
    let victim = "encoder.layer.0.intermediate.dense.weight";
    let dir = tiny_checkpoint(|tensors| {
        for (name, tensor) in tensors.iter_mut() {
            if name == victim {
                *tensor = Tensor::zeros([12, 8], (tch::Kind::Float, Device::Cpu));
            }
        }
    });
    let err = SentenceEncoder::load(dir.path(), Device::Cpu).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(victim), "{message}");
    assert!(
        message.contains("[12, 8]") && message.contains("[16, 8]"),
        "{message}"
    );
}
