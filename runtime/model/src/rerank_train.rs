//! Training a cross-encoder reranker with libtorch autograd.
//!
//! No pretrained cross-encoder exists on these machines, so the reranker is trained in-project:
//! a Hugging Face `BertForSequenceClassification` with one label is initialised from a BERT-family
//! sentence encoder (all-MiniLM-L6-v2: embeddings, encoder layers and pooler from the checkpoint,
//! a fresh `classifier` head) or from an existing cross-encoder, trained on
//! `(query, positive, negatives)` groups, and saved as a directory that
//! [`CrossEncoder::load`](crate::CrossEncoder::load) (and `transformers`) reads.
//!
//! Loss: listwise softmax cross-entropy over each group, the positive first (Gao et al. 2021,
//! "Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline": localized contrastive
//! estimation with hard negatives from the first-stage retriever). The model scores each pair
//! independently, as it will at serving; the loss only asks the positive to outscore the
//! negatives the retriever confuses it with, which is exactly the reranker's job.
//!
//! Architecture and names follow `transformers` `BertForSequenceClassification` (training mode:
//! dropout on embeddings, attention probabilities, both residual branches and the pooled output);
//! the forward pass is [`BertModel::forward_t`].
use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};
use tch::nn::{self, Init, LinearConfig, Module};
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use crate::batch::{Encoded, padded_batches};
use crate::bert::BertModel;
use crate::encoder::{encode_all, load_tokenizer};
use crate::error::{ModelError, Result};
use crate::train_common::{ScheduledAdamW, check_inputs, read_config};

/// Files of the source checkpoint copied next to the trained weights, so the directory is also a
/// complete `transformers` checkpoint (only `tokenizer.json` is required by this crate).
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
];

/// Optimiser group of the classification head.
const HEAD_GROUP: usize = 1;

/// Hyper-parameters of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Peak learning rate of AdamW for the encoder (and its pooler).
    pub learning_rate: f64,
    /// The fresh classification head learns this many times faster: the pooled `[CLS]` state of
    /// a sentence encoder varies little between inputs (it was never trained), so a head at the
    /// encoder's rate barely moves in the few hundred steps a small dataset gives.
    pub head_lr_multiplier: f64,
    /// AdamW weight decay (applied to every parameter).
    pub weight_decay: f64,
    /// Share of the steps spent warming the learning rate up linearly; it then decays linearly to 0.
    pub warmup_share: f64,
    /// Dropout probability while training; `None` takes the checkpoint's `hidden_dropout_prob`.
    pub dropout: Option<f64>,
    /// Longest (query, passage) pair in tokens; longer pairs are truncated longest-first.
    pub max_len: usize,
    /// Gradient L2-norm clip.
    pub max_grad_norm: f64,
    /// Seed of the head's initialisation and of dropout.
    pub seed: i64,
    /// Weight of the distillation term (groups with `teacher` scores): soft cross-entropy of the
    /// model's group softmax against `softmax(teacher / distill_temperature)`. 0 trains on the
    /// labels alone.
    pub distill_weight: f64,
    /// Temperature applied to the teacher's scores (cosine similarities: 0.05 turns a 0.1
    /// difference into a factor e^2).
    pub distill_temperature: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 3e-5,
            head_lr_multiplier: 10.0,
            weight_decay: 0.01,
            warmup_share: 0.1,
            dropout: None,
            max_len: 256,
            max_grad_norm: 1.0,
            seed: 17,
            distill_weight: 0.0,
            distill_temperature: 0.05,
        }
    }
}

/// One training example: a query, the passage that answers it, and passages that do not.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingGroup {
    /// The query.
    pub query: String,
    /// A passage that answers it.
    pub positive: String,
    /// Passages that do not (hard negatives: what the retriever ranks high for the query).
    pub negatives: Vec<String>,
    /// A teacher's scores of the positive then each negative (e.g. the retrieval encoder's
    /// cosine similarities), for distillation: the model learns the teacher's ordering of every
    /// passage of the group, not only which one is the answer. `None`: labels only.
    pub teacher: Option<Vec<f32>>,
}

/// A `BertForSequenceClassification` (one label) being trained.
#[derive(Debug)]
pub struct RerankerTrainer {
    vs: nn::VarStore,
    bert: BertModel,
    classifier: nn::Linear,
    tokenizer: Tokenizer,
    /// The source checkpoint's `config.json`, rewritten for the classification head on save.
    config: Value,
    dropout: f64,
    device: Device,
    train: TrainConfig,
    optimizer: ScheduledAdamW,
}

impl RerankerTrainer {
    /// A new reranker from a BERT encoder checkpoint directory (`config.json`, `tokenizer.json`,
    /// `model.safetensors` with or without the `bert.` prefix): everything but the classifier is
    /// copied from the checkpoint (a missing pooler is initialised fresh, like the head).
    pub fn from_encoder(dir: impl AsRef<Path>, device: Device, train: TrainConfig) -> Result<Self> {
        Self::init(dir.as_ref(), device, train, false)
    }

    /// Continues training an existing cross-encoder checkpoint (one label).
    pub fn from_cross_encoder(
        dir: impl AsRef<Path>,
        device: Device,
        train: TrainConfig,
    ) -> Result<Self> {
        Self::init(dir.as_ref(), device, train, true)
    }

    fn init(dir: &Path, device: Device, train: TrainConfig, with_head: bool) -> Result<Self> {
        let (config, cfg) = read_config(dir)?;
        if with_head && cfg.num_labels() != 1 {
            return Err(ModelError::Unsupported(format!(
                "{}: training continues one-label cross-encoders; this one has {} labels",
                dir.display(),
                cfg.num_labels()
            )));
        }
        let dropout = check_inputs(train.max_len, train.dropout, &config, &cfg)?;
        let weight_ok = train.distill_weight.is_finite() && train.distill_weight >= 0.0;
        let temperature_ok =
            train.distill_temperature.is_finite() && train.distill_temperature > 0.0;
        if !weight_ok || !temperature_ok {
            return Err(ModelError::InvalidRequest(format!(
                "distill_weight {} must be >= 0 and distill_temperature {} > 0",
                train.distill_weight, train.distill_temperature
            )));
        }
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), train.max_len)?;
        let std = config
            .get("initializer_range")
            .and_then(Value::as_f64)
            .unwrap_or(0.02);

        tch::manual_seed(train.seed);
        let vs = nn::VarStore::new(device);
        let bert = BertModel::new(vs.root() / "bert", &cfg, true);
        // transformers' `_init_weights`: normal(0, initializer_range) weights, zero bias.
        let head_init = LinearConfig {
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            bs_init: Some(Init::Const(0.0)),
            bias: true,
        };
        // Optimiser group 1: the head, at `head_lr_multiplier` times the encoder's rate.
        let classifier = nn::linear(
            vs.root().set_group(HEAD_GROUP) / "classifier",
            cfg.hidden_size,
            1,
            head_init,
        );
        if with_head {
            crate::weights::Checkpoint::open(dir.join("model.safetensors"))?.load_into(&vs, "")?;
        } else {
            load_encoder(&vs, &dir.join("model.safetensors"), std)?;
        }
        let optimizer = ScheduledAdamW::new(
            &vs,
            train.learning_rate,
            train.weight_decay,
            train.warmup_share,
            train.max_grad_norm,
        )?;
        Ok(Self {
            vs,
            bert,
            classifier,
            tokenizer,
            config,
            dropout,
            device,
            train,
            optimizer,
        })
    }

    /// Sets the number of optimiser steps the run will take (the learning-rate schedule's
    /// length). Without it the learning rate stays at its peak.
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

    /// One optimiser step on `groups` (each group's positive against its negatives, averaged over
    /// the groups); returns the loss before the step.
    pub fn train_step(&mut self, groups: &[TrainingGroup]) -> Result<f64> {
        let (logits, sizes) = self.group_logits(groups, self.dropout)?;
        let loss = self.objective(&logits, &sizes, groups)?;
        self.optimizer
            .step(&loss, &[(HEAD_GROUP, self.train.head_lr_multiplier)])
    }

    /// The listwise loss of `groups` without dropout or a step (held-out monitoring).
    pub fn loss(&self, groups: &[TrainingGroup]) -> Result<f64> {
        tch::no_grad(|| {
            let (logits, sizes) = self.group_logits(groups, 0.0)?;
            Ok(f64::try_from(&self.objective(&logits, &sizes, groups)?)?)
        })
    }

    /// Relevance logits of `(query, passage)` pairs in inference mode, as
    /// [`CrossEncoder::relevance_logits`](crate::CrossEncoder::relevance_logits) computes them
    /// once saved.
    pub fn logits<S: AsRef<str>>(&self, query: &str, passages: &[S]) -> Result<Vec<f32>> {
        tch::no_grad(|| {
            let pairs: Vec<(&str, &str)> = passages.iter().map(|p| (query, p.as_ref())).collect();
            let logits = self.pair_logits(&encode_all(&self.tokenizer, pairs)?, 0.0)?;
            Ok(Vec::<f32>::try_from(
                logits.to_kind(Kind::Float).to_device(Device::Cpu),
            )?)
        })
    }

    /// Writes `config.json` (architecture `BertForSequenceClassification`, one label),
    /// `model.safetensors` (`bert.*`, `classifier.*`) and the tokenizer files into `dir`
    /// (created if needed; files of the same names are replaced).
    pub fn save(&self, dir: impl AsRef<Path>, source: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(ModelError::io(dir))?;
        let mut config = self.config.clone();
        if let Value::Object(map) = &mut config {
            map.insert(
                "architectures".into(),
                json!(["BertForSequenceClassification"]),
            );
            map.insert("model_type".into(), json!("bert"));
            map.insert("num_labels".into(), json!(1));
            map.insert("id2label".into(), json!({"0": "LABEL_0"}));
            map.insert("label2id".into(), json!({"LABEL_0": 0}));
            map.remove("_name_or_path");
        }
        let config_path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&config).map_err(|source| ModelError::Config {
            path: config_path.clone(),
            source,
        })?;
        std::fs::write(&config_path, text).map_err(ModelError::io(&config_path))?;
        let mut tensors: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(name, t)| (name, t.detach().to_device(Device::Cpu).contiguous()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&tensors, dir.join("model.safetensors"))?;
        let source = source.as_ref();
        for file in TOKENIZER_FILES {
            let from = source.join(file);
            if from.is_file() {
                std::fs::copy(&from, dir.join(file)).map_err(ModelError::io(&from))?;
            }
        }
        Ok(())
    }

    /// The training objective: the listwise loss, plus `distill_weight` times the distillation
    /// loss of the groups that carry teacher scores.
    fn objective(
        &self,
        logits: &Tensor,
        sizes: &[usize],
        groups: &[TrainingGroup],
    ) -> Result<Tensor> {
        let loss = listwise_loss(logits, sizes)?;
        if self.train.distill_weight == 0.0 {
            return Ok(loss);
        }
        let teachers: Vec<Option<&[f32]>> = groups.iter().map(|g| g.teacher.as_deref()).collect();
        Ok(
            match distillation_loss(logits, sizes, &teachers, self.train.distill_temperature)? {
                Some(d) => loss + d * self.train.distill_weight,
                None => loss,
            },
        )
    }

    /// Logits of every pair of `groups`, flattened group by group, and each group's size.
    fn group_logits(&self, groups: &[TrainingGroup], dropout: f64) -> Result<(Tensor, Vec<usize>)> {
        if groups.is_empty() {
            return Err(ModelError::InvalidRequest("no training groups".into()));
        }
        let mut pairs = Vec::new();
        let mut sizes = Vec::with_capacity(groups.len());
        for g in groups {
            if g.negatives.is_empty() {
                return Err(ModelError::InvalidRequest(format!(
                    "query {:?} has no negative passage",
                    g.query
                )));
            }
            if let Some(t) = &g.teacher
                && t.len() != 1 + g.negatives.len()
            {
                return Err(ModelError::InvalidRequest(format!(
                    "query {:?}: {} teacher scores for {} passages",
                    g.query,
                    t.len(),
                    1 + g.negatives.len()
                )));
            }
            pairs.push((g.query.as_str(), g.positive.as_str()));
            pairs.extend(g.negatives.iter().map(|n| (g.query.as_str(), n.as_str())));
            sizes.push(1 + g.negatives.len());
        }
        let logits = self.pair_logits(&encode_all(&self.tokenizer, pairs)?, dropout)?;
        Ok((logits, sizes))
    }

    /// One logit per encoded pair, in input order (one padded batch).
    fn pair_logits(&self, encodings: &[Encoded], dropout: f64) -> Result<Tensor> {
        let Some(batch) = padded_batches(encodings, encodings.len().max(1), self.device).next()
        else {
            return Ok(Tensor::zeros([0], (Kind::Float, self.device)));
        };
        let hidden = self.bert.forward_t(
            &batch.input_ids,
            &batch.attention_mask,
            Some(&batch.token_type_ids),
            dropout,
        );
        let pooled = self
            .bert
            .pool(&hidden)
            .ok_or_else(|| ModelError::Unsupported("cross-encoder without pooler".into()))?;
        let pooled = if dropout > 0.0 {
            pooled.dropout(dropout, true)
        } else {
            pooled
        };
        let sorted = self.classifier.forward(&pooled).squeeze_dim(-1);
        // `padded_batches` sorts by length; put the logits back in input order.
        let mut inverse = vec![0i64; batch.rows.len()];
        for (row, &i) in batch.rows.iter().enumerate() {
            inverse[i] = row as i64;
        }
        let inverse = Tensor::from_slice(&inverse).to_device(self.device);
        Ok(sorted.index_select(0, &inverse))
    }
}

/// Mean over groups of `logsumexp(group) - logit(positive)`: softmax cross-entropy with the
/// positive (each group's first logit) as the target.
fn listwise_loss(logits: &Tensor, sizes: &[usize]) -> Result<Tensor> {
    let mut losses = Vec::with_capacity(sizes.len());
    let mut start = 0i64;
    for &size in sizes {
        let group = logits.f_narrow(0, start, size as i64)?;
        losses.push(group.f_logsumexp([0].as_slice(), false)? - group.f_get(0)?);
        start += size as i64;
    }
    Ok(Tensor::f_stack(&losses, 0)?.f_mean(Kind::Float)?)
}

/// Mean over the groups with teacher scores of the soft cross-entropy
/// `-sum softmax(teacher / temperature) * log_softmax(group)`; `None` when no group has them.
fn distillation_loss(
    logits: &Tensor,
    sizes: &[usize],
    teachers: &[Option<&[f32]>],
    temperature: f64,
) -> Result<Option<Tensor>> {
    let mut losses = Vec::new();
    let mut start = 0i64;
    for (&size, teacher) in sizes.iter().zip(teachers) {
        let group = logits.f_narrow(0, start, size as i64)?;
        start += size as i64;
        let Some(teacher) = teacher else { continue };
        let target = (Tensor::from_slice(teacher).to_device(group.device()) / temperature)
            .f_softmax(0, Kind::Float)?;
        let log_p = group.f_log_softmax(0, Kind::Float)?;
        losses.push(-(target * log_p).f_sum(Kind::Float)?);
    }
    if losses.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tensor::f_stack(&losses, 0)?.f_mean(Kind::Float)?))
}

/// Copies the encoder's tensors into the `bert.*` variables of `vs` (checkpoint keys with or
/// without the `bert.` prefix), checking shapes. A checkpoint without a pooler (many sentence
/// encoders drop it) gets a freshly initialised one.
fn load_encoder(vs: &nn::VarStore, path: &Path, std: f64) -> Result<()> {
    if !path.is_file() {
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
    let probe = "embeddings.word_embeddings.weight";
    let prefix = ["", "bert."]
        .into_iter()
        .find(|p| tensors.contains_key(&format!("{p}{probe}")))
        .ok_or_else(|| ModelError::MissingTensor {
            path: path.to_path_buf(),
            name: probe.to_owned(),
        })?;
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut var) in variables {
            let Some(inner) = name.strip_prefix("bert.") else {
                continue; // the classifier head: freshly initialised
            };
            let full = format!("{prefix}{inner}");
            match tensors.get(&full) {
                Some(src) if src.size() == var.size() => {
                    var.f_copy_(&src.f_to_kind(var.kind())?)?;
                }
                Some(src) => {
                    return Err(ModelError::ShapeMismatch {
                        path: path.to_path_buf(),
                        name: full,
                        expected: var.size(),
                        found: src.size(),
                    });
                }
                None if inner.starts_with("pooler.") => {
                    tracing::warn!(tensor = %full, "encoder has no pooler; initialising it fresh");
                    if inner.ends_with("weight") {
                        var.f_copy_(&(var.randn_like() * std))?;
                    } else {
                        let _ = var.f_zero_()?;
                    }
                }
                None => {
                    return Err(ModelError::MissingTensor {
                        path: path.to_path_buf(),
                        name: full,
                    });
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listwise_loss_is_cross_entropy_on_the_first_logit() {
        // Group 1: [2, 0] -> ln(1 + e^-2); group 2: [0, 0, 0] -> ln 3.
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 0.0, 0.0]);
        let loss = f64::try_from(listwise_loss(&logits, &[2, 3]).unwrap()).unwrap();
        let want = ((1.0 + (-2.0f64).exp()).ln() + 3f64.ln()) / 2.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
    }

    #[test]
    fn distillation_is_soft_cross_entropy_against_the_tempered_teacher() {
        // Group 1 has a teacher [0.2, 0.1] at temperature 0.1 -> target softmax([2, 1]);
        // group 2 has none and is left out of the mean.
        let logits = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0]);
        let loss = distillation_loss(&logits, &[2, 2], &[Some(&[0.2, 0.1]), None], 0.1)
            .unwrap()
            .unwrap();
        let loss = f64::try_from(loss).unwrap();
        let t1 = 1.0 / (1.0 + (-1.0f64).exp()); // softmax([2, 1])[0]
        let l1 = -(1.0 / (1.0 + (-1.0f64).exp())).ln(); // -log_softmax([1, 0])[0]
        let l2 = -(1.0 / (1.0 + 1.0f64.exp())).ln(); // -log_softmax([1, 0])[1]
        let want = t1 * l1 + (1.0 - t1) * l2;
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
        assert!(
            distillation_loss(&logits, &[2, 2], &[None, None], 0.1)
                .unwrap()
                .is_none()
        );
    }
}
