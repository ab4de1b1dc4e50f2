//! The training loops: supervised fine-tuning and DPO of a LoRA adapter on a frozen Llama-family
//! base model, with libtorch's autograd through [`LlamaModel::forward_train`].
//!
//! - **SFT**: cross-entropy of the answer tokens (the end-of-turn token included) given the
//!   prompt; prompt and padding positions carry no loss. The loss of an optimizer step is the
//!   mean over every answer token of its micro-batches (gradient accumulation weighs tokens,
//!   not micro-batches).
//! - **DPO** (Rafailov et al. 2023, "Direct Preference Optimization"): with `π` the adapted model
//!   and `ref` the base model (adapter off; its log-probabilities computed once, without
//!   gradients), the loss of a pair is `-log σ(β[(log π(c) − log ref(c)) − (log π(r) − log
//!   ref(r))])`, log-probabilities summed over the answer tokens. The implicit rewards are
//!   `β(log π − log ref)`; reward accuracy is the share of pairs whose chosen answer gets the
//!   higher reward (ties count as wrong, as in TRL: an untrained adapter scores 0).
//!
//! AdamW on the adapter's variables only, learning rate with optional warm-up then constant,
//! linear or cosine decay to zero, gradients clipped to a global L2 norm.
use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use switchboard_model::llama::LlamaModel;
use switchboard_model::lora::{LoraAdapter, LoraConfig};
use switchboard_model::tokenizer::LlmTokenizer;
use tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig as _};

use crate::data::{DataSet, DpoPair, SftExample, SplitMix64};
use crate::encode::{Encoded, Encoder};
use crate::error::{Result, TrainError};

/// How the learning rate moves after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Stays at the peak.
    Constant,
    /// Falls linearly to zero at the last step (Hugging Face's default).
    #[default]
    Linear,
    /// Half a cosine down to zero.
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            other => Err(format!("schedule `{other}`: constant, linear or cosine")),
        }
    }
}

/// Which assistant turns of an SFT conversation are learned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LossTurns {
    /// Every assistant turn (a multi-turn ticket teaches each reply in its context).
    #[default]
    All,
    /// Only the final answer (earlier assistant turns are context).
    Last,
}

impl std::str::FromStr for LossTurns {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "last" => Ok(Self::Last),
            other => Err(format!("`{other}`: all or last")),
        }
    }
}

/// The adapter's shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoraSettings {
    /// Rank `r` (AdapterPatch admits 1..=64).
    pub rank: i64,
    /// `lora_alpha`; the update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// PEFT module names (`q_proj`, `v_proj`, ...).
    pub target_modules: Vec<String>,
}

/// Everything that shapes a training run (recorded in the report).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hyperparameters {
    /// The adapter.
    pub lora: LoraSettings,
    /// Peak learning rate of AdamW.
    pub learning_rate: f64,
    /// Passes over the training data.
    pub epochs: usize,
    /// Examples (SFT) or pairs (DPO) per forward pass.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Seeds the adapter's initialisation, the data order and the held-out split.
    pub seed: u64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Optimizer steps of linear warm-up from zero.
    pub warmup_steps: usize,
    /// Learning-rate schedule after warm-up.
    pub schedule: Schedule,
    /// Global gradient L2 norm clip; 0 disables it.
    pub max_grad_norm: f64,
    /// Longest example (prompt + answer tokens); longer ones are dropped and counted.
    pub max_seq_len: usize,
    /// DPO's β (strength of the pull towards the base model); unused by SFT.
    pub beta: f64,
    /// SFT: which assistant turns of a multi-turn example carry the loss.
    pub loss_turns: LossTurns,
    /// Weight of the L2 pull `λ · Σ‖θ - θ₀‖²` towards the adapter's starting weights (the
    /// previous version's when training from it, else the initialisation): a hot-fix stays a
    /// small perturbation (seed section 6). 0 disables it.
    pub l2_to_start: f64,
}

impl Hyperparameters {
    /// Defaults for SFT of a small hot-fix adapter (r 8 on q/v, lr 2e-4, 3 epochs).
    pub fn sft() -> Self {
        Self {
            lora: LoraSettings {
                rank: 8,
                alpha: 16.0,
                target_modules: vec!["q_proj".into(), "v_proj".into()],
            },
            learning_rate: 2e-4,
            epochs: 3,
            batch_size: 4,
            grad_accum: 1,
            seed: 42,
            weight_decay: 0.0,
            warmup_steps: 0,
            schedule: Schedule::Linear,
            max_grad_norm: 1.0,
            max_seq_len: 1024,
            beta: 0.1,
            loss_turns: LossTurns::All,
            l2_to_start: 0.0,
        }
    }

    /// Defaults for DPO (as SFT, learning rate 5e-5, β 0.1).
    pub fn dpo() -> Self {
        Self {
            learning_rate: 5e-5,
            ..Self::sft()
        }
    }

    /// Checks ranges, naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, message: String| Err(TrainError::setting(name, message));
        if !(1..=64).contains(&self.lora.rank) {
            return bad(
                "--rank",
                format!("{} (an AdapterPatch admits 1..=64)", self.lora.rank),
            );
        }
        if !(self.lora.alpha > 0.0 && self.lora.alpha.is_finite()) {
            return bad("--alpha", format!("{} must be > 0", self.lora.alpha));
        }
        if self.lora.target_modules.is_empty() {
            return bad("--target-modules", "no module named".to_owned());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate < 1.0) {
            return bad("--lr", format!("{} is not in (0, 1)", self.learning_rate));
        }
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad(
                "--epochs/--batch-size/--grad-accum",
                "must be at least 1".to_owned(),
            );
        }
        if !(self.weight_decay >= 0.0 && self.max_grad_norm >= 0.0) {
            return bad("--weight-decay/--max-grad-norm", "must be >= 0".to_owned());
        }
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return bad("--beta", format!("{} must be > 0", self.beta));
        }
        if self.max_seq_len < 2 {
            return bad("--max-seq-len", "must be at least 2".to_owned());
        }
        if !(self.l2_to_start >= 0.0 && self.l2_to_start.is_finite()) {
            return bad(
                "--l2-to-start",
                format!("{} must be >= 0", self.l2_to_start),
            );
        }
        Ok(())
    }

    /// The learning rate of optimizer step `step` (0-based) of `total`.
    pub fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        let peak = self.learning_rate;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.schedule {
            Schedule::Constant => peak,
            Schedule::Linear => peak * (1.0 - progress),
            Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

/// Loss and, for DPO, the reward statistics of a set of examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// SFT: mean negative log-likelihood per answer token (nats). DPO: mean pair loss.
    pub loss: f64,
    /// Examples or pairs measured.
    pub examples: usize,
    /// SFT: answer tokens measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    /// DPO: share of pairs whose chosen answer has the higher implicit reward.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_accuracy: Option<f64>,
    /// DPO: mean of (chosen reward − rejected reward).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_margin: Option<f64>,
    /// DPO: mean implicit reward of the chosen answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen_reward: Option<f64>,
    /// DPO: mean implicit reward of the rejected answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_reward: Option<f64>,
}

/// One optimizer step, as reported to the progress callback.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// 1-based step over the whole run.
    pub step: usize,
    /// Steps of the run.
    pub total_steps: usize,
    /// The step's loss.
    pub loss: f64,
    /// Learning rate used.
    pub learning_rate: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
}

/// One epoch's summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Training loss over the epoch (as the adapter was when each step ran).
    pub train: Metrics,
    /// Held-out metrics after the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_out: Option<Metrics>,
    /// Optimizer steps.
    pub steps: usize,
    /// Wall-clock seconds of its training steps (evaluation excluded).
    pub seconds: f64,
}

/// What a run did, for the training report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainingLog {
    /// `sft` or `dpo`.
    pub method: String,
    /// Examples (pairs) trained on.
    pub train_examples: usize,
    /// Examples (pairs) held out.
    pub held_out_examples: usize,
    /// Examples dropped because they exceed `max_seq_len` (or the model's context).
    pub dropped_too_long: usize,
    /// Answer tokens of the training examples (both sides for DPO).
    pub train_answer_tokens: usize,
    /// Held-out metrics of the base model (the adapter starts as the identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_held_out: Option<Metrics>,
    /// Per epoch.
    pub epochs: Vec<EpochLog>,
    /// Optimizer steps in all.
    pub steps: usize,
    /// Mean wall-clock seconds per optimizer step.
    pub seconds_per_step: f64,
    /// Wall-clock seconds of the whole run (evaluations included).
    pub seconds: f64,
    /// The adapter the run started from (a previous version's directory), when not fresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_from: Option<String>,
    /// Per hot-fix set (SFT): examples and held-out loss before and after.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sets: Vec<SetReport>,
    /// Relative change of the stability anchors' held-out loss, after against before (the
    /// starting adapter): `0.02` is 2% worse. The regression a hot-fix must not cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_regression: Option<f64>,
    /// `‖θ - θ₀‖` after training: how far the adapter moved from where it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_from_start: Option<f64>,
    /// DPO: per pair kind (`tone`, `brandVoice`, `refusal`, ...), held-out metrics after
    /// training.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pair_kinds: Vec<KindReport>,
    /// GRPO: every step, the held-out reward before and after, the monitors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpo: Option<crate::grpo::GrpoLog>,
}

/// One kind of preference pairs in the training log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindReport {
    /// The kind.
    pub kind: String,
    /// Pairs trained on.
    pub train_pairs: usize,
    /// Held-out reward accuracy and margin of its pairs after training.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_out: Option<Metrics>,
}

/// One hot-fix set in the training log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetReport {
    /// The set.
    pub set: DataSet,
    /// Examples trained on.
    pub train_examples: usize,
    /// Examples held out.
    pub held_out_examples: usize,
    /// Held-out answer-token loss under the starting adapter (or the base model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_before: Option<f64>,
    /// Held-out loss after training.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_after: Option<f64>,
}

impl TrainingLog {
    /// The held-out loss of each hot-fix set before training (under the starting adapter: the
    /// previous version's, else the base model) and after.
    pub fn set(&self, set: DataSet) -> Option<&SetReport> {
        self.sets.iter().find(|r| r.set == set)
    }

    /// The last held-out metrics (after the last epoch).
    pub fn final_held_out(&self) -> Option<&Metrics> {
        self.epochs.last().and_then(|e| e.held_out.as_ref())
    }
}

/// A trained adapter: its variables and the log of the run.
#[derive(Debug)]
pub struct Trained {
    /// The adapter (its tensors are the variables of `vars`).
    pub adapter: LoraAdapter,
    /// The trained variables.
    pub vars: nn::VarStore,
    /// What happened.
    pub log: TrainingLog,
}

/// A base model with its tokenizer, ready to train adapters on.
#[derive(Debug)]
pub struct Trainer {
    model: LlamaModel,
    encoder: Encoder,
    base_model_name: String,
}

/// Items encoded for training: those that fit, the index of each in the input, and how many
/// were too long.
struct Encodings {
    kept: Vec<Vec<Encoded>>,
    indices: Vec<usize>,
    dropped: usize,
}

/// Rows of a batch, right-padded, and where the answer tokens are.
pub(crate) struct Batch {
    ids: Tensor,
    /// Flat positions (row · seq + t) whose logits predict an answer token.
    positions: Tensor,
    /// The answer token each of those positions predicts.
    targets: Tensor,
    /// The row of each of those positions.
    pub(crate) rows: Tensor,
    pub(crate) n_rows: i64,
    tokens: usize,
}

impl Trainer {
    /// Loads a GGUF file or Hugging Face directory with dense f32 weights, and its tokenizer.
    pub fn load(path: impl AsRef<std::path::Path>, device: Device) -> Result<Self> {
        let path = path.as_ref();
        let model = LlamaModel::load(path, device)?;
        let tokenizer = LlmTokenizer::load(path)?;
        Self::new(model, tokenizer)
    }

    /// A trainer for `model` (f32, dense weights) with `tokenizer`.
    pub fn new(model: LlamaModel, tokenizer: LlmTokenizer) -> Result<Self> {
        let base_model_name = default_base_model_name(&model.source().names);
        Ok(Self {
            model,
            encoder: Encoder::new(tokenizer)?,
            base_model_name,
        })
    }

    /// The base model.
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// The encoder (tokenizer and chat template).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// The name written as `base_model_name_or_path`: a Hugging Face id among the model's names
    /// (`HuggingFaceTB/SmolLM2-135M-Instruct`), else its file or directory name.
    pub fn base_model_name(&self) -> &str {
        &self.base_model_name
    }

    /// Overrides [`Self::base_model_name`] (e.g. with an AdapterPatch's `baseModel` id).
    pub fn set_base_model_name(&mut self, name: impl Into<String>) {
        self.base_model_name = name.into();
    }

    fn lora_config(&self, hp: &Hyperparameters) -> LoraConfig {
        LoraConfig::new(
            hp.lora.rank,
            hp.lora.alpha,
            hp.lora.target_modules.clone(),
            Some(self.base_model_name.clone()),
        )
    }

    /// Encodes examples, dropping (and counting) those longer than `max_len`.
    fn encode_all<'a, T>(
        &self,
        items: &'a [T],
        max_len: usize,
        encode: impl Fn(&'a T) -> Result<Vec<Encoded>>,
    ) -> Result<Encodings> {
        let limit = max_len.min(self.model.config().max_position_embeddings as usize);
        let mut out = Encodings {
            kept: Vec::with_capacity(items.len()),
            indices: Vec::with_capacity(items.len()),
            dropped: 0,
        };
        for (i, item) in items.iter().enumerate() {
            let encoded = encode(item)?;
            if encoded.iter().any(|e| e.ids.len() > limit) {
                out.dropped += 1;
            } else {
                out.kept.push(encoded);
                out.indices.push(i);
            }
        }
        Ok(out)
    }

    pub(crate) fn batch(&self, seqs: &[&Encoded]) -> Result<Batch> {
        let pad = i64::from(self.encoder.tokenizer().eos_token_ids()[0]);
        let len = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(seqs.len() * len);
        let (mut positions, mut targets, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for (row, seq) in seqs.iter().enumerate() {
            ids.extend_from_slice(&seq.ids);
            ids.extend(std::iter::repeat_n(pad, len - seq.ids.len()));
            // Position t's logits predict token t + 1: the positions before each trained token.
            for &(start, end) in &seq.spans {
                for t in start - 1..end - 1 {
                    positions.push((row * len + t) as i64);
                    targets.push(seq.ids[t + 1]);
                    rows.push(row as i64);
                }
            }
        }
        let device = self.model.device();
        Ok(Batch {
            ids: Tensor::from_slice(&ids)
                .f_view([seqs.len() as i64, len as i64])?
                .f_to_device(device)?,
            positions: Tensor::from_slice(&positions).f_to_device(device)?,
            targets: Tensor::from_slice(&targets).f_to_device(device)?,
            rows: Tensor::from_slice(&rows).f_to_device(device)?,
            n_rows: seqs.len() as i64,
            tokens: targets.len(),
        })
    }

    /// Per answer token log-probabilities (`[tokens]`) and their sum per row (`[rows]`).
    pub(crate) fn log_probs(
        &self,
        batch: &Batch,
        adapter: Option<&LoraAdapter>,
    ) -> Result<(Tensor, Tensor)> {
        let logits = self
            .model
            .forward_train(&batch.ids, adapter, Some(&batch.positions))?;
        let token_logp = logits
            .f_log_softmax(-1, Kind::Float)?
            .f_gather(1, &batch.targets.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?;
        let per_row = Tensor::f_zeros([batch.n_rows], (Kind::Float, self.model.device()))?
            .f_index_add(0, &batch.rows, &token_logp)?;
        Ok((token_logp, per_row))
    }

    /// Mean answer-token loss of `examples` (no gradients).
    fn sft_metrics(
        &self,
        examples: &[Encoded],
        adapter: Option<&LoraAdapter>,
        batch_size: usize,
    ) -> Result<Metrics> {
        let (mut nll, mut tokens) = (0.0, 0usize);
        tch::no_grad(|| -> Result<()> {
            for chunk in examples.chunks(batch_size.max(1)) {
                let seqs: Vec<&Encoded> = chunk.iter().collect();
                let batch = self.batch(&seqs)?;
                let (logp, _) = self.log_probs(&batch, adapter)?;
                nll -= logp.f_sum(Kind::Double)?.f_double_value(&[])?;
                tokens += batch.tokens;
            }
            Ok(())
        })?;
        Ok(Metrics {
            loss: nll / tokens.max(1) as f64,
            examples: examples.len(),
            tokens: Some(tokens),
            ..Metrics::default()
        })
    }

    pub(crate) fn optimizer(
        &self,
        vars: &nn::VarStore,
        hp: &Hyperparameters,
    ) -> Result<nn::Optimizer> {
        Ok(nn::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            wd: hp.weight_decay,
            eps: 1e-8,
            amsgrad: false,
        }
        .build(vars, hp.learning_rate)?)
    }

    pub(crate) fn new_adapter(
        &self,
        hp: &Hyperparameters,
        start: Option<&LoraAdapter>,
    ) -> Result<(LoraAdapter, nn::VarStore)> {
        hp.validate()?;
        let vars = nn::VarStore::new(self.model.device());
        tch::manual_seed(hp.seed as i64);
        let adapter = LoraAdapter::new_trainable(
            "training",
            self.lora_config(hp),
            &vars.root(),
            &self.model,
        )?;
        if let Some(previous) = start {
            adapter.copy_weights_from(previous)?;
        }
        Ok((adapter, vars))
    }

    /// Loads a previous version's PEFT directory to start a hot-fix from (checked against the
    /// base model like any adapter the runtime loads).
    pub fn load_start(&self, dir: &std::path::Path) -> Result<LoraAdapter> {
        Ok(LoraAdapter::load("previous", dir, &self.model)?)
    }

    /// Supervised fine-tuning on `train`, measured on `held_out` before training and after every
    /// epoch. `on_step` sees every optimizer step.
    pub fn sft(
        &self,
        train: &[SftExample],
        held_out: &[SftExample],
        hp: &Hyperparameters,
        on_step: &mut dyn FnMut(&StepLog),
    ) -> Result<Trained> {
        self.sft_from(train, held_out, hp, None, on_step)
    }

    /// [`Self::sft`] starting from `start` (a previous version's adapter: same rank and modules)
    /// instead of a fresh adapter. With `hp.l2_to_start` the loss pulls the weights back towards
    /// the start. Each hot-fix set (`SftExample::set`) is measured on its own before and after;
    /// the anchors' change is the run's `anchor_regression`.
    pub fn sft_from(
        &self,
        train: &[SftExample],
        held_out: &[SftExample],
        hp: &Hyperparameters,
        start: Option<(&LoraAdapter, String)>,
        on_step: &mut dyn FnMut(&StepLog),
    ) -> Result<Trained> {
        let started = Instant::now();
        let (adapter, vars) = self.new_adapter(hp, start.as_ref().map(|s| s.0))?;
        // The starting weights: what the L2 pull pulls towards, and what the distance moved is
        // measured from.
        let anchor = if hp.l2_to_start > 0.0 || start.is_some() {
            Some(adapter.snapshot()?)
        } else {
            None
        };
        let encode_one = |e: &SftExample| match hp.loss_turns {
            LossTurns::All => self.encoder.encode_all_turns(&e.messages, &e.completion),
            LossTurns::Last => self.encoder.encode(&e.messages, &e.completion),
        };
        let encode = |e: &SftExample| Ok(vec![encode_one(e)?]);
        let train_all = self.encode_all(train, hp.max_seq_len, encode)?;
        let held_all = self.encode_all(held_out, hp.max_seq_len, encode)?;
        let (dropped_train, dropped_held) = (train_all.dropped, held_all.dropped);
        let held_index = held_all.indices;
        let train_enc: Vec<Encoded> = train_all.kept.into_iter().flatten().collect();
        let held_enc: Vec<Encoded> = held_all.kept.into_iter().flatten().collect();
        if train_enc.is_empty() {
            return Err(TrainError::NotEnoughData(format!(
                "no training example fits --max-seq-len {} ({} dropped)",
                hp.max_seq_len, dropped_train
            )));
        }
        let eval = |adapter: Option<&LoraAdapter>| -> Result<Option<Metrics>> {
            if held_enc.is_empty() {
                return Ok(None);
            }
            Ok(Some(self.sft_metrics(
                &held_enc,
                adapter,
                hp.batch_size * 2,
            )?))
        };
        let initial_held_out = eval(start.as_ref().map(|s| s.0))?;
        // Per set: (train count, held-out encodings).
        let set_of = |examples: &[SftExample], set: DataSet| {
            examples.iter().filter(|e| e.set == set).count()
        };
        let held_sets: Vec<(DataSet, Vec<Encoded>)> = {
            let mut by_set: BTreeMap<DataSet, Vec<Encoded>> = BTreeMap::new();
            for (enc, &i) in held_enc.iter().zip(&held_index) {
                by_set.entry(held_out[i].set).or_default().push(enc.clone());
            }
            by_set.into_iter().collect()
        };
        let hot_fix = train.iter().chain(held_out).any(|e| e.set != DataSet::Fix);
        let set_loss = |enc: &[Encoded], adapter: Option<&LoraAdapter>| -> Result<Option<f64>> {
            if enc.is_empty() {
                return Ok(None);
            }
            Ok(Some(
                self.sft_metrics(enc, adapter, hp.batch_size * 2)?.loss,
            ))
        };
        let mut before = BTreeMap::new();
        if hot_fix {
            for (set, enc) in &held_sets {
                before.insert(*set, set_loss(enc, start.as_ref().map(|s| s.0))?);
            }
        }
        let epochs = self.run_epochs(
            train_enc.len(),
            hp,
            &vars,
            on_step,
            |chunk, (nll, tokens): &mut (f64, usize)| {
                let step_tokens: usize = chunk.iter().map(|&i| train_enc[i].answer_len()).sum();
                let mut step_nll = 0.0;
                for micro in chunk.chunks(hp.batch_size) {
                    let seqs: Vec<&Encoded> = micro.iter().map(|&i| &train_enc[i]).collect();
                    let batch = self.batch(&seqs)?;
                    let (logp, _) = self.log_probs(&batch, Some(&adapter))?;
                    let sum = logp.f_sum(Kind::Float)?;
                    step_nll -= sum.f_double_value(&[])?;
                    sum.f_neg()?
                        .f_div_scalar(step_tokens as f64)?
                        .f_backward()?;
                }
                if let Some(anchor) = anchor.as_ref().filter(|_| hp.l2_to_start > 0.0) {
                    adapter
                        .squared_distance(anchor)?
                        .f_mul_scalar(hp.l2_to_start)?
                        .f_backward()?;
                }
                *nll += step_nll;
                *tokens += step_tokens;
                Ok(step_nll / step_tokens.max(1) as f64)
            },
            |(nll, tokens)| {
                Ok(Metrics {
                    loss: nll / tokens.max(1) as f64,
                    examples: train_enc.len(),
                    tokens: Some(tokens),
                    ..Metrics::default()
                })
            },
            || eval(Some(&adapter)),
        )?;
        let mut sets = Vec::new();
        if hot_fix {
            for set in [DataSet::Fix, DataSet::NegativeRejection, DataSet::Anchor] {
                let enc = held_sets
                    .iter()
                    .find(|(s, _)| *s == set)
                    .map_or(&[][..], |(_, e)| e.as_slice());
                let n_train = set_of(train, set);
                if n_train == 0 && enc.is_empty() {
                    continue;
                }
                sets.push(SetReport {
                    set,
                    train_examples: n_train,
                    held_out_examples: enc.len(),
                    loss_before: before.get(&set).copied().flatten(),
                    loss_after: set_loss(enc, Some(&adapter))?,
                });
            }
        }
        let anchor_regression = sets
            .iter()
            .find(|r| r.set == DataSet::Anchor)
            .and_then(|r| Some((r.loss_after? - r.loss_before?) / r.loss_before?));
        let distance_from_start = match &anchor {
            Some(a) => Some(
                tch::no_grad(|| adapter.squared_distance(a))?
                    .f_double_value(&[])?
                    .sqrt(),
            ),
            None => None,
        };
        Ok(Trained {
            adapter,
            vars,
            log: TrainingLog {
                started_from: start.map(|s| s.1),
                pair_kinds: Vec::new(),
                grpo: None,
                sets,
                anchor_regression,
                distance_from_start,
                method: "sft".to_owned(),
                train_examples: train_enc.len(),
                held_out_examples: held_enc.len(),
                dropped_too_long: dropped_train + dropped_held,
                train_answer_tokens: train_enc.iter().map(Encoded::answer_len).sum(),
                initial_held_out,
                steps: epochs.iter().map(|e| e.steps).sum(),
                seconds_per_step: seconds_per_step(&epochs),
                epochs,
                seconds: started.elapsed().as_secs_f64(),
            },
        })
    }

    /// The optimizer loop SFT and DPO share: `hp.epochs` passes over `n` examples in an order
    /// shuffled by `hp.seed`, `batch_size · grad_accum` examples per optimizer step. `step`
    /// runs the forward and backward passes of one step's examples (indices), adds to the
    /// epoch's running statistics `S`, and returns the step's loss; `train_metrics` turns an
    /// epoch's statistics into its metrics and `held_out` measures the adapter after it.
    #[allow(clippy::too_many_arguments)]
    fn run_epochs<S: Default>(
        &self,
        n: usize,
        hp: &Hyperparameters,
        vars: &nn::VarStore,
        on_step: &mut dyn FnMut(&StepLog),
        mut step: impl FnMut(&[usize], &mut S) -> Result<f64>,
        mut train_metrics: impl FnMut(S) -> Result<Metrics>,
        held_out: impl Fn() -> Result<Option<Metrics>>,
    ) -> Result<Vec<EpochLog>> {
        let mut optimizer = self.optimizer(vars, hp)?;
        let per_step = hp.batch_size * hp.grad_accum;
        let steps_per_epoch = n.div_ceil(per_step);
        let total_steps = steps_per_epoch * hp.epochs;
        let mut rng = SplitMix64(hp.seed);
        let mut epochs = Vec::with_capacity(hp.epochs);
        let mut done = 0;
        for epoch in 1..=hp.epochs {
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            let mut stats = S::default();
            let mut seconds = 0.0;
            for chunk in order.chunks(per_step) {
                let t0 = Instant::now();
                optimizer.zero_grad();
                let loss = step(chunk, &mut stats)?;
                let (lr, grad_norm) =
                    self.update(&mut optimizer, vars, hp, done, total_steps, loss)?;
                done += 1;
                let dt = t0.elapsed().as_secs_f64();
                seconds += dt;
                on_step(&StepLog {
                    epoch,
                    step: done,
                    total_steps,
                    loss,
                    learning_rate: lr,
                    grad_norm,
                    seconds: dt,
                });
            }
            epochs.push(EpochLog {
                epoch,
                train: train_metrics(stats)?,
                held_out: held_out()?,
                steps: steps_per_epoch,
                seconds,
            });
        }
        Ok(epochs)
    }

    /// Clips, sets the step's learning rate and steps the optimizer; returns (lr, grad norm).
    pub(crate) fn update(
        &self,
        optimizer: &mut nn::Optimizer,
        vars: &nn::VarStore,
        hp: &Hyperparameters,
        step: usize,
        total_steps: usize,
        loss: f64,
    ) -> Result<(f64, f64)> {
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss,
            });
        }
        let grad_norm = tch::no_grad(|| -> Result<f64> {
            let grads: Vec<Tensor> = vars
                .trainable_variables()
                .iter()
                .map(Tensor::grad)
                .filter(Tensor::defined)
                .collect();
            let mut total = 0.0;
            for g in &grads {
                total += g.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
            }
            let norm = total.sqrt();
            if hp.max_grad_norm > 0.0 && norm > hp.max_grad_norm {
                let coef = hp.max_grad_norm / (norm + 1e-6);
                for g in &grads {
                    let _ = g.shallow_clone().f_mul_scalar_(coef)?;
                }
            }
            Ok(norm)
        })?;
        if !grad_norm.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss: grad_norm,
            });
        }
        let lr = hp.learning_rate_at(step, total_steps);
        optimizer.set_lr(lr);
        optimizer.step();
        Ok((lr, grad_norm))
    }

    /// Sums of answer log-probabilities of each pair's (chosen, rejected) under the reference
    /// policy: the base model with `reference` (an SFT adapter), or the base model alone.
    fn reference_log_probs(
        &self,
        pairs: &[Vec<Encoded>],
        batch_size: usize,
        reference: Option<&LoraAdapter>,
    ) -> Result<Vec<(f64, f64)>> {
        let mut out = Vec::with_capacity(pairs.len());
        tch::no_grad(|| -> Result<()> {
            for chunk in pairs.chunks(batch_size.max(1)) {
                let sums = self.pair_sums(chunk, reference)?;
                let sums: Vec<f64> = sums
                    .f_to_kind(Kind::Double)?
                    .f_to_device(Device::Cpu)?
                    .try_into()?;
                let k = chunk.len();
                out.extend((0..k).map(|i| (sums[i], sums[k + i])));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Answer log-probability sums `[2k]`: the k chosen answers, then the k rejected ones.
    fn pair_sums(&self, pairs: &[Vec<Encoded>], adapter: Option<&LoraAdapter>) -> Result<Tensor> {
        let seqs: Vec<&Encoded> = pairs
            .iter()
            .map(|p| &p[0])
            .chain(pairs.iter().map(|p| &p[1]))
            .collect();
        let batch = self.batch(&seqs)?;
        Ok(self.log_probs(&batch, adapter)?.1)
    }

    /// DPO loss terms of k pairs: (β·(chosen − ref), β·(rejected − ref)) rewards, each `[k]`.
    fn rewards(
        &self,
        pairs: &[Vec<Encoded>],
        refs: &[(f64, f64)],
        adapter: &LoraAdapter,
        beta: f64,
    ) -> Result<(Tensor, Tensor)> {
        let k = pairs.len() as i64;
        let sums = self.pair_sums(pairs, Some(adapter))?;
        let device = self.model.device();
        let ref_c: Vec<f32> = refs.iter().map(|r| r.0 as f32).collect();
        let ref_r: Vec<f32> = refs.iter().map(|r| r.1 as f32).collect();
        let chosen = sums
            .f_narrow(0, 0, k)?
            .f_sub(&Tensor::from_slice(&ref_c).f_to_device(device)?)?
            .f_mul_scalar(beta)?;
        let rejected = sums
            .f_narrow(0, k, k)?
            .f_sub(&Tensor::from_slice(&ref_r).f_to_device(device)?)?
            .f_mul_scalar(beta)?;
        Ok((chosen, rejected))
    }

    fn dpo_metrics(
        &self,
        pairs: &[Vec<Encoded>],
        refs: &[(f64, f64)],
        adapter: &LoraAdapter,
        hp: &Hyperparameters,
    ) -> Result<Metrics> {
        let mut acc = DpoAccumulator::default();
        tch::no_grad(|| -> Result<()> {
            for (chunk, refs) in pairs
                .chunks(hp.batch_size.max(1))
                .zip(refs.chunks(hp.batch_size.max(1)))
            {
                let (c, r) = self.rewards(chunk, refs, adapter, hp.beta)?;
                acc.add(&c, &r)?;
            }
            Ok(())
        })?;
        acc.metrics()
    }

    /// DPO on `train` pairs against the base model as reference, measured on `held_out` before
    /// training and after every epoch.
    pub fn dpo(
        &self,
        train: &[DpoPair],
        held_out: &[DpoPair],
        hp: &Hyperparameters,
        on_step: &mut dyn FnMut(&StepLog),
    ) -> Result<Trained> {
        self.dpo_from(train, held_out, hp, None, on_step)
    }

    /// [`Self::dpo`] with `reference` (an SFT adapter, with its label) as the reference policy,
    /// as the essay prescribes: the policy starts from it and the DPO reward is measured against
    /// it, so alignment moves the SFT model rather than the base. Held-out metrics are also
    /// reported per pair kind after training.
    pub fn dpo_from(
        &self,
        train: &[DpoPair],
        held_out: &[DpoPair],
        hp: &Hyperparameters,
        reference: Option<(&LoraAdapter, String)>,
        on_step: &mut dyn FnMut(&StepLog),
    ) -> Result<Trained> {
        let started = Instant::now();
        let reference_adapter = reference.as_ref().map(|r| r.0);
        let (adapter, vars) = self.new_adapter(hp, reference_adapter)?;
        let encode = |p: &DpoPair| {
            Ok(vec![
                self.encoder.encode(&p.messages, &p.chosen)?,
                self.encoder.encode(&p.messages, &p.rejected)?,
            ])
        };
        let train_all = self.encode_all(train, hp.max_seq_len, encode)?;
        let held_all = self.encode_all(held_out, hp.max_seq_len, encode)?;
        let (dropped_train, dropped_held) = (train_all.dropped, held_all.dropped);
        let (train_enc, held_enc, held_index) = (train_all.kept, held_all.kept, held_all.indices);
        if train_enc.is_empty() {
            return Err(TrainError::NotEnoughData(format!(
                "no training pair fits --max-seq-len {} ({} dropped)",
                hp.max_seq_len, dropped_train
            )));
        }
        let train_refs = self.reference_log_probs(&train_enc, hp.batch_size, reference_adapter)?;
        let held_refs = self.reference_log_probs(&held_enc, hp.batch_size, reference_adapter)?;
        let eval = |adapter: &LoraAdapter| -> Result<Option<Metrics>> {
            if held_enc.is_empty() {
                return Ok(None);
            }
            Ok(Some(self.dpo_metrics(&held_enc, &held_refs, adapter, hp)?))
        };
        let initial_held_out = eval(&adapter)?;
        let epochs = self.run_epochs(
            train_enc.len(),
            hp,
            &vars,
            on_step,
            |chunk, acc: &mut DpoAccumulator| {
                let mut step_loss = 0.0;
                for micro in chunk.chunks(hp.batch_size) {
                    let pairs: Vec<Vec<Encoded>> =
                        micro.iter().map(|&i| train_enc[i].clone()).collect();
                    let refs: Vec<(f64, f64)> = micro.iter().map(|&i| train_refs[i]).collect();
                    let (chosen, rejected) = self.rewards(&pairs, &refs, &adapter, hp.beta)?;
                    let loss = chosen
                        .f_sub(&rejected)?
                        .f_log_sigmoid()?
                        .f_sum(Kind::Float)?
                        .f_neg()?
                        .f_div_scalar(chunk.len() as f64)?;
                    step_loss += loss.f_double_value(&[])?;
                    loss.f_backward()?;
                    tch::no_grad(|| acc.add(&chosen.f_detach()?, &rejected.f_detach()?))?;
                }
                Ok(step_loss)
            },
            |acc| acc.metrics(),
            || eval(&adapter),
        )?;
        // Per kind: which preferences were learned (held-out pairs of each kind).
        let mut kinds: BTreeMap<&str, (usize, Vec<usize>)> = BTreeMap::new();
        for p in train {
            kinds.entry(p.kind.as_str()).or_default().0 += 1;
        }
        for (k, &i) in held_index.iter().enumerate() {
            kinds
                .entry(held_out[i].kind.as_str())
                .or_default()
                .1
                .push(k);
        }
        let mut pair_kinds = Vec::new();
        if kinds.len() > 1 || reference.is_some() {
            for (kind, (n_train, held)) in kinds {
                let held_out = if held.is_empty() {
                    None
                } else {
                    let pairs: Vec<Vec<Encoded>> =
                        held.iter().map(|&i| held_enc[i].clone()).collect();
                    let refs: Vec<(f64, f64)> = held.iter().map(|&i| held_refs[i]).collect();
                    Some(self.dpo_metrics(&pairs, &refs, &adapter, hp)?)
                };
                pair_kinds.push(KindReport {
                    kind: kind.to_owned(),
                    train_pairs: n_train,
                    held_out,
                });
            }
        }
        Ok(Trained {
            adapter,
            vars,
            log: TrainingLog {
                pair_kinds,
                grpo: None,
                method: "dpo".to_owned(),
                train_examples: train_enc.len(),
                held_out_examples: held_enc.len(),
                dropped_too_long: dropped_train + dropped_held,
                train_answer_tokens: train_enc.iter().flatten().map(Encoded::answer_len).sum(),
                initial_held_out,
                steps: epochs.iter().map(|e| e.steps).sum(),
                seconds_per_step: seconds_per_step(&epochs),
                epochs,
                seconds: started.elapsed().as_secs_f64(),
                started_from: reference.map(|r| r.1),
                sets: Vec::new(),
                anchor_regression: None,
                distance_from_start: None,
            },
        })
    }
}

/// Mean wall-clock seconds of an optimizer step over a run's epochs.
fn seconds_per_step(epochs: &[EpochLog]) -> f64 {
    let steps: usize = epochs.iter().map(|e| e.steps).sum();
    epochs.iter().map(|e| e.seconds).sum::<f64>() / steps.max(1) as f64
}

/// Sums of DPO statistics over batches.
#[derive(Default)]
struct DpoAccumulator {
    pairs: usize,
    loss: f64,
    correct: f64,
    margin: f64,
    chosen: f64,
    rejected: f64,
}

impl DpoAccumulator {
    fn add(&mut self, chosen: &Tensor, rejected: &Tensor) -> Result<()> {
        let diff = chosen.f_sub(rejected)?;
        let sum = |t: &Tensor| -> Result<f64> { Ok(t.f_sum(Kind::Double)?.f_double_value(&[])?) };
        self.pairs += diff.size()[0] as usize;
        self.loss -= sum(&diff.f_log_sigmoid()?)?;
        self.correct += sum(&diff.f_gt(0.0)?)?;
        self.margin += sum(&diff)?;
        self.chosen += sum(chosen)?;
        self.rejected += sum(rejected)?;
        Ok(())
    }

    fn metrics(&self) -> Result<Metrics> {
        let n = self.pairs.max(1) as f64;
        Ok(Metrics {
            loss: self.loss / n,
            examples: self.pairs,
            tokens: None,
            reward_accuracy: Some(self.correct / n),
            reward_margin: Some(self.margin / n),
            chosen_reward: Some(self.chosen / n),
            rejected_reward: Some(self.rejected / n),
        })
    }
}

/// A Hugging Face id among `names` (`HuggingFaceTB/SmolLM2-135M-Instruct`), else the last one
/// (a GGUF file's stem without its quantisation suffix, a directory's name).
pub fn default_base_model_name(names: &[String]) -> String {
    names
        .iter()
        .find(|n| n.contains('/') && !n.starts_with('/'))
        .or(names.last())
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_warms_up_then_decays_to_zero() {
        let hp = Hyperparameters {
            warmup_steps: 2,
            ..Hyperparameters::sft()
        };
        let lr = |s, sched| {
            Hyperparameters {
                schedule: sched,
                ..hp.clone()
            }
            .learning_rate_at(s, 10)
        };
        assert_eq!(lr(0, Schedule::Linear), 1e-4);
        assert_eq!(lr(1, Schedule::Linear), 2e-4);
        assert_eq!(lr(2, Schedule::Linear), 2e-4);
        assert!((lr(6, Schedule::Linear) - 1e-4).abs() < 1e-12);
        assert!(lr(9, Schedule::Linear) > 0.0);
        assert_eq!(lr(9, Schedule::Constant), 2e-4);
        assert!((lr(6, Schedule::Cosine) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let e = |hp: Hyperparameters| hp.validate().unwrap_err().to_string();
        let mut hp = Hyperparameters::sft();
        hp.lora.rank = 65;
        assert!(e(hp).contains("--rank"));
        assert!(
            e(Hyperparameters {
                learning_rate: 0.0,
                ..Hyperparameters::sft()
            })
            .contains("--lr")
        );
        assert!(
            e(Hyperparameters {
                batch_size: 0,
                ..Hyperparameters::sft()
            })
            .contains("--batch-size")
        );
        assert!(
            e(Hyperparameters {
                beta: -1.0,
                ..Hyperparameters::dpo()
            })
            .contains("--beta")
        );
        assert!(Hyperparameters::dpo().validate().is_ok());
    }

    #[test]
    fn base_model_name_prefers_a_hub_id() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            default_base_model_name(&names(&[
                "SmolLM2 135M Instruct",
                "HuggingFaceTB/SmolLM2-135M-Instruct",
                "x"
            ])),
            "HuggingFaceTB/SmolLM2-135M-Instruct"
        );
        assert_eq!(
            default_base_model_name(&names(&[
                "Smollm2 135M 8k Lc100K Mix1 Ep2",
                "SmolLM2-135M-Instruct"
            ])),
            "SmolLM2-135M-Instruct"
        );
        assert_eq!(
            default_base_model_name(&names(&["/models/x", "tiny"])),
            "tiny"
        );
    }
}
