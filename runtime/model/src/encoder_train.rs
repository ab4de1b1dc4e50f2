//! Fine-tuning a sentence encoder (the retrieval bi-encoder) with libtorch autograd.
//!
//! The first-stage encoder is trained in domain on `(query, answer)` pairs: each query must score
//! its answer above every other answer of the batch (in-batch negatives) and above the hard
//! negatives given with it — the multiple-negatives ranking loss of sentence-transformers
//! (Henderson et al. 2017; `MultipleNegativesRankingLoss`, scale 20 on cosine similarities).
//! Unlike a cross-encoder with a fresh head, the model starts from a working similarity
//! function and only bends it towards the domain, which is why a few hundred questions are
//! enough (docs/evaluation.md, "Encoder fine-tuning").
//!
//! The checkpoint is read and written in the sentence-transformers layout the runtime serves
//! ([`SentenceEncoder::load`](crate::SentenceEncoder::load)): the transformer weights under the
//! source's names, and every other file (config, tokenizer, `modules.json`, pooling config)
//! copied, so pooling and normalisation stay those of the source.
use std::path::Path;

use tch::nn;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use crate::batch::padded_batches;
use crate::bert::BertModel;
use crate::encoder::{Head, encode_all, l2_normalize, load_tokenizer, pool};
use crate::error::{ModelError, Result};
use crate::train_common::{ScheduledAdamW, check_inputs, read_config};
use crate::weights::Checkpoint;

/// Hyper-parameters of an encoder fine-tuning run.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderTrainConfig {
    /// Peak learning rate of AdamW.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Share of the steps spent warming the learning rate up linearly; it then decays linearly to 0.
    pub warmup_share: f64,
    /// Multiplier of the cosine similarities before the softmax (sentence-transformers: 20).
    pub scale: f64,
    /// Dropout while training; `None` takes the checkpoint's `hidden_dropout_prob`.
    pub dropout: Option<f64>,
    /// Longest text in tokens.
    pub max_len: usize,
    /// Gradient L2-norm clip.
    pub max_grad_norm: f64,
    /// Seed of dropout.
    pub seed: i64,
}

impl Default for EncoderTrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 2e-5,
            weight_decay: 0.01,
            warmup_share: 0.1,
            scale: 20.0,
            dropout: None,
            max_len: 256,
            max_grad_norm: 1.0,
            seed: 17,
        }
    }
}

/// One training pair: a query, its answer, and hard negatives (passages it must not prefer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderPair {
    /// The query.
    pub query: String,
    /// The passage that answers it.
    pub positive: String,
    /// Passages that do not answer it (may be empty: the batch's other answers are negatives).
    pub negatives: Vec<String>,
}

/// A sentence encoder being fine-tuned.
#[derive(Debug)]
pub struct EncoderTrainer {
    vs: nn::VarStore,
    model: BertModel,
    tokenizer: Tokenizer,
    head: Head,
    prefix: String,
    dropout: f64,
    device: Device,
    train: EncoderTrainConfig,
    optimizer: ScheduledAdamW,
}

impl EncoderTrainer {
    /// Loads a sentence-encoder directory (`config.json`, `tokenizer.json`, `model.safetensors`,
    /// optional `modules.json`) for training.
    pub fn from_encoder(
        dir: impl AsRef<Path>,
        device: Device,
        train: EncoderTrainConfig,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let (config, cfg) = read_config(dir)?;
        let dropout = check_inputs(train.max_len, train.dropout, &config, &cfg)?;
        if !(train.scale.is_finite() && train.scale > 0.0) {
            return Err(ModelError::InvalidRequest(format!(
                "scale {} must be > 0",
                train.scale
            )));
        }
        let head = Head::read(dir)?;
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), train.max_len)?;
        let weights = Checkpoint::open(dir.join("model.safetensors"))?;
        let prefix = weights.bert_prefix()?.to_owned();
        tch::manual_seed(train.seed);
        let vs = nn::VarStore::new(device);
        let model = BertModel::new(vs.root(), &cfg, false);
        weights.load_into(&vs, &prefix)?;
        let optimizer = ScheduledAdamW::new(
            &vs,
            train.learning_rate,
            train.weight_decay,
            train.warmup_share,
            train.max_grad_norm,
        )?;
        Ok(Self {
            vs,
            model,
            tokenizer,
            head,
            prefix,
            dropout,
            device,
            train,
            optimizer,
        })
    }

    /// Sets the number of optimiser steps the run will take (the learning-rate schedule's length).
    pub fn set_total_steps(&mut self, steps: usize) {
        self.optimizer.set_total_steps(steps);
    }

    /// Optimiser steps taken so far.
    pub fn steps(&self) -> usize {
        self.optimizer.steps()
    }

    /// The learning rate of the next step: linear warm-up, then linear decay to 0.
    pub fn learning_rate(&self) -> f64 {
        self.optimizer.learning_rate()
    }

    /// One optimiser step on a batch of pairs; returns the loss before the step.
    pub fn train_step(&mut self, pairs: &[EncoderPair]) -> Result<f64> {
        let loss = self.batch_loss(pairs, self.dropout)?;
        self.optimizer.step(&loss, &[])
    }

    /// Writes the fine-tuned `model.safetensors` (tensor names as in the source checkpoint)
    /// into `dir`, with every other file of `source` (config, tokenizer, sentence-transformers
    /// modules and pooling config) copied, so the directory loads as the source did.
    pub fn save(&self, dir: impl AsRef<Path>, source: impl AsRef<Path>) -> Result<()> {
        let (dir, source) = (dir.as_ref(), source.as_ref());
        copy_tree_except_weights(source, dir)?;
        let mut tensors: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(name, t)| {
                (
                    format!("{}{name}", self.prefix),
                    t.detach().to_device(Device::Cpu).contiguous(),
                )
            })
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&tensors, dir.join("model.safetensors"))?;
        Ok(())
    }

    /// Multiple-negatives ranking loss: queries against every positive and negative of the batch.
    fn batch_loss(&self, pairs: &[EncoderPair], dropout: f64) -> Result<Tensor> {
        if pairs.is_empty() {
            return Err(ModelError::InvalidRequest("no training pairs".into()));
        }
        let queries: Vec<&str> = pairs.iter().map(|p| p.query.as_str()).collect();
        let mut passages: Vec<&str> = pairs.iter().map(|p| p.positive.as_str()).collect();
        passages.extend(
            pairs
                .iter()
                .flat_map(|p| p.negatives.iter().map(String::as_str)),
        );
        if passages.len() < 2 {
            return Err(ModelError::InvalidRequest(
                "a batch needs at least two passages (two pairs, or a hard negative)".into(),
            ));
        }
        let q = self.embed_t(&queries, dropout)?;
        let p = self.embed_t(&passages, dropout)?;
        let mut scores = q.f_matmul(&p.f_transpose(0, 1)?)? * self.train.scale;
        // A passage of the batch that is the same text as a query's own answer (another query's
        // hard negative, or a second question about the same answer) is not a negative for it.
        let mut same = vec![false; pairs.len() * passages.len()];
        for (i, pair) in pairs.iter().enumerate() {
            for (j, passage) in passages.iter().enumerate() {
                same[i * passages.len() + j] = j != i && *passage == pair.positive;
            }
        }
        if same.iter().any(|&m| m) {
            let mask = Tensor::from_slice(&same)
                .view([pairs.len() as i64, passages.len() as i64])
                .to_device(self.device);
            scores = scores.f_masked_fill(&mask, -1e4)?;
        }
        let targets = Tensor::arange(pairs.len() as i64, (Kind::Int64, self.device));
        Ok(scores.f_cross_entropy_loss::<Tensor>(
            &targets,
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )?)
    }

    /// Pooled (and, if the checkpoint normalises, unit-length) embeddings in input order.
    fn embed_t(&self, texts: &[&str], dropout: f64) -> Result<Tensor> {
        let encodings = encode_all(&self.tokenizer, texts.to_vec())?;
        let Some(batch) = padded_batches(&encodings, encodings.len().max(1), self.device).next()
        else {
            return Err(ModelError::InvalidRequest("no texts to embed".into()));
        };
        let hidden = self.model.forward_t(
            &batch.input_ids,
            &batch.attention_mask,
            Some(&batch.token_type_ids),
            dropout,
        );
        let pooled = pool(&hidden, &batch.attention_mask, self.head.pooling);
        let pooled = if self.head.normalize {
            l2_normalize(&pooled)
        } else {
            pooled
        };
        let mut inverse = vec![0i64; batch.rows.len()];
        for (row, &i) in batch.rows.iter().enumerate() {
            inverse[i] = row as i64;
        }
        let inverse = Tensor::from_slice(&inverse).to_device(self.device);
        Ok(pooled.index_select(0, &inverse))
    }
}

/// Copies `from` into `to` recursively (created if needed), except `model.safetensors` and
/// `pytorch_model.bin`: the configuration and tokenizer of a checkpoint without its weights.
fn copy_tree_except_weights(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(ModelError::io(to))?;
    for entry in std::fs::read_dir(from).map_err(ModelError::io(from))? {
        let entry = entry.map_err(ModelError::io(from))?;
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            copy_tree_except_weights(&path, &to.join(&name))?;
        } else if name != "model.safetensors" && name != "pytorch_model.bin" {
            std::fs::copy(&path, to.join(&name)).map_err(ModelError::io(&path))?;
        }
    }
    Ok(())
}
