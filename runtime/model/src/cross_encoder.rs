//! Cross-encoder reranker: a Hugging Face `BertForSequenceClassification` checkpoint scoring
//! (query, passage) pairs.
//!
//! Follows `transformers` `BertForSequenceClassification` in eval mode: BERT -> pooler
//! (tanh(dense([CLS]))) -> `classifier` linear. With one label the score is `sigmoid(logit)` (what
//! sentence-transformers' `CrossEncoder` returns); with two it is the softmax probability of label 1.
use std::path::Path;

use tch::Device;
use tch::nn::{self, Module};
use tokenizers::Tokenizer;

use crate::batch::{padded_batches, to_f32_rows};
use crate::bert::{BertConfig, BertModel};
use crate::encoder::{encode_all, load_tokenizer};
use crate::error::{ModelError, Result, read_json};
use crate::weights::Checkpoint;

/// A loaded cross-encoder.
#[derive(Debug)]
pub struct CrossEncoder {
    _vs: nn::VarStore,
    bert: BertModel,
    classifier: nn::Linear,
    tokenizer: Tokenizer,
    num_labels: i64,
    device: Device,
    model_id: String,
}

impl CrossEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg: BertConfig = read_json(&dir.join("config.json"))?;
        cfg.validate()?;
        let num_labels = cfg.num_labels();
        if num_labels > 2 {
            return Err(ModelError::Unsupported(format!(
                "{}: a reranker needs 1 or 2 labels, the checkpoint has {num_labels}",
                dir.display()
            )));
        }
        let tokenizer = load_tokenizer(
            &dir.join("tokenizer.json"),
            cfg.max_position_embeddings as usize,
        )?;
        let weights = Checkpoint::open(dir.join("model.safetensors"))?;
        let mut vs = nn::VarStore::new(device);
        let bert = BertModel::new(vs.root() / "bert", &cfg, true);
        let classifier = nn::linear(
            vs.root() / "classifier",
            cfg.hidden_size,
            num_labels,
            Default::default(),
        );
        weights.load_into(&vs, "")?;
        vs.freeze();
        Ok(Self {
            _vs: vs,
            bert,
            classifier,
            tokenizer,
            num_labels,
            device,
            model_id: dir.file_name().map_or_else(
                || "reranker".to_owned(),
                |n| n.to_string_lossy().into_owned(),
            ),
        })
    }

    /// The checkpoint's identifier (its directory name).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Raw classifier logits `[passages.len() * num_labels]` for `(query, passage)` pairs.
    pub fn logits<S: AsRef<str>>(
        &self,
        query: &str,
        passages: &[S],
        batch_size: usize,
    ) -> Result<Vec<f32>> {
        let pairs: Vec<(&str, &str)> = passages.iter().map(|p| (query, p.as_ref())).collect();
        let encodings = encode_all(&self.tokenizer, pairs)?;
        let width = self.num_labels as usize;
        let mut out = vec![0f32; passages.len() * width];
        tch::no_grad(|| -> Result<()> {
            for batch in padded_batches(&encodings, batch_size, self.device) {
                let hidden = self.bert.forward(
                    &batch.input_ids,
                    &batch.attention_mask,
                    Some(&batch.token_type_ids),
                );
                let pooled = self.bert.pool(&hidden).ok_or_else(|| {
                    ModelError::Unsupported("cross-encoder without pooler".into())
                })?;
                let logits = to_f32_rows(&self.classifier.forward(&pooled))?;
                for (row, &i) in batch.rows.iter().enumerate() {
                    out[i * width..(i + 1) * width]
                        .copy_from_slice(&logits[row * width..(row + 1) * width]);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// One relevance logit per passage: the logit with one label, `logit[1] - logit[0]` with two
    /// (so `sigmoid` of it is the label-1 probability either way).
    pub fn relevance_logits<S: AsRef<str>>(
        &self,
        query: &str,
        passages: &[S],
        batch_size: usize,
    ) -> Result<Vec<f32>> {
        let logits = self.logits(query, passages, batch_size)?;
        Ok(match self.num_labels {
            1 => logits,
            _ => logits
                .chunks_exact(2)
                .map(|pair| pair[1] - pair[0])
                .collect(),
        })
    }

    /// Relevance scores in `[0, 1]`, one per passage, higher is more relevant.
    pub fn score<S: AsRef<str>>(
        &self,
        query: &str,
        passages: &[S],
        batch_size: usize,
    ) -> Result<Vec<f32>> {
        Ok(self
            .relevance_logits(query, passages, batch_size)?
            .into_iter()
            .map(sigmoid)
            .collect())
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}
