//! BERT-family transformer encoder (BERT, MiniLM, and other `BertModel` checkpoints).
//!
//! Follows Hugging Face `transformers/models/bert/modeling_bert.py` (`BertEmbeddings`,
//! `BertSelfAttention`, `BertLayer`, `BertPooler`) in eval mode. Variable paths mirror the checkpoint
//! keys (`embeddings.word_embeddings.weight`, `encoder.layer.3.attention.self.query.weight`, ...) so
//! weights load by name.
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// The fields of a BERT `config.json` this implementation uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Rows of the word embedding table.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// Number of transformer layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// Width of the feed-forward block.
    pub intermediate_size: i64,
    /// Feed-forward activation.
    #[serde(default)]
    pub hidden_act: Activation,
    /// Longest sequence the position table covers.
    pub max_position_embeddings: i64,
    /// Rows of the token-type (segment) table.
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: i64,
    /// Epsilon of every LayerNorm.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: i64,
    /// Only absolute position embeddings are implemented.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// Labels of a sequence-classification head, when the checkpoint has one.
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
}

fn default_type_vocab_size() -> i64 {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_position_embedding_type() -> String {
    "absolute".to_owned()
}

impl BertConfig {
    /// Checks what this implementation supports, so a wrong checkpoint fails at load, not mid-request.
    pub fn validate(&self) -> Result<()> {
        if self.position_embedding_type != "absolute" {
            return Err(ModelError::Unsupported(format!(
                "position_embedding_type `{}` (only `absolute` is implemented)",
                self.position_embedding_type
            )));
        }
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(ModelError::Unsupported(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }

    /// Number of classification labels (`id2label`), 1 when absent.
    pub fn num_labels(&self) -> i64 {
        self.id2label
            .as_ref()
            .map_or(1, |labels| labels.len().max(1) as i64)
    }
}

/// Feed-forward activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU.
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// tanh approximation of GELU.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Self::Gelu => xs.gelu("none"),
            Self::GeluTanh => xs.gelu("tanh"),
            Self::Relu => xs.relu(),
        }
    }
}

#[derive(Debug)]
struct Embeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    norm: nn::LayerNorm,
}

impl Embeddings {
    fn new(vs: nn::Path, cfg: &BertConfig) -> Self {
        let emb = Default::default();
        let norm = nn::LayerNormConfig {
            eps: cfg.layer_norm_eps,
            ..Default::default()
        };
        Self {
            word: nn::embedding(
                &vs / "word_embeddings",
                cfg.vocab_size,
                cfg.hidden_size,
                emb,
            ),
            position: nn::embedding(
                &vs / "position_embeddings",
                cfg.max_position_embeddings,
                cfg.hidden_size,
                emb,
            ),
            token_type: nn::embedding(
                &vs / "token_type_embeddings",
                cfg.type_vocab_size,
                cfg.hidden_size,
                emb,
            ),
            norm: nn::layer_norm(&vs / "LayerNorm", vec![cfg.hidden_size], norm),
        }
    }

    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, dropout: f64) -> Tensor {
        let seq_len = input_ids.size()[1];
        let positions = Tensor::arange(seq_len, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let xs = self.word.forward(input_ids)
            + self.position.forward(&positions)
            + self.token_type.forward(token_type_ids);
        apply_dropout(self.norm.forward(&xs), dropout)
    }
}

#[derive(Debug)]
struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attention_out: nn::Linear,
    attention_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_norm: nn::LayerNorm,
    heads: i64,
    activation: Activation,
}

impl Layer {
    fn new(vs: nn::Path, cfg: &BertConfig) -> Self {
        let h = cfg.hidden_size;
        let lin = Default::default();
        let norm = nn::LayerNormConfig {
            eps: cfg.layer_norm_eps,
            ..Default::default()
        };
        let attention = &vs / "attention";
        let self_attention = &attention / "self";
        Self {
            query: nn::linear(&self_attention / "query", h, h, lin),
            key: nn::linear(&self_attention / "key", h, h, lin),
            value: nn::linear(&self_attention / "value", h, h, lin),
            attention_out: nn::linear(&attention / "output" / "dense", h, h, lin),
            attention_norm: nn::layer_norm(&attention / "output" / "LayerNorm", vec![h], norm),
            intermediate: nn::linear(
                &vs / "intermediate" / "dense",
                h,
                cfg.intermediate_size,
                lin,
            ),
            output: nn::linear(&vs / "output" / "dense", cfg.intermediate_size, h, lin),
            output_norm: nn::layer_norm(&vs / "output" / "LayerNorm", vec![h], norm),
            heads: cfg.num_attention_heads,
            activation: cfg.hidden_act,
        }
    }

    /// `mask`: boolean `[batch, 1, 1, seq]`, true where a key may be attended to. `dropout` > 0
    /// only while training (where `BertSelfAttention`, `BertSelfOutput` and `BertOutput` drop).
    fn forward(&self, xs: &Tensor, mask: &Tensor, dropout: f64) -> Tensor {
        let (batch, seq, hidden) = xs.size3().expect("hidden states are [batch, seq, hidden]");
        let head_dim = hidden / self.heads;
        let split = |t: Tensor| t.view([batch, seq, self.heads, head_dim]).transpose(1, 2);
        let q = split(self.query.forward(xs));
        let k = split(self.key.forward(xs));
        let v = split(self.value.forward(xs));
        let context = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(mask),
            dropout,
            false,
            None,
            false,
        )
        .transpose(1, 2)
        .reshape([batch, seq, hidden]);
        let attended = apply_dropout(self.attention_out.forward(&context), dropout);
        let xs = self.attention_norm.forward(&(attended + xs));
        let ff = self
            .output
            .forward(&self.activation.apply(&self.intermediate.forward(&xs)));
        self.output_norm.forward(&(apply_dropout(ff, dropout) + xs))
    }
}

/// Dropout with probability `p` in training mode; the identity (no copy) at `p = 0`.
fn apply_dropout(xs: Tensor, p: f64) -> Tensor {
    if p > 0.0 { xs.dropout(p, true) } else { xs }
}

/// A BERT encoder stack (`BertModel`), optionally with its pooler.
#[derive(Debug)]
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pooler: Option<nn::Linear>,
}

impl BertModel {
    /// Defines the variables under `vs` (which should point at the checkpoint's BERT root).
    pub fn new(vs: nn::Path, cfg: &BertConfig, with_pooler: bool) -> Self {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(&vs / "encoder" / "layer" / i, cfg))
            .collect();
        let pooler = with_pooler.then(|| {
            nn::linear(
                &vs / "pooler" / "dense",
                cfg.hidden_size,
                cfg.hidden_size,
                Default::default(),
            )
        });
        Self {
            embeddings: Embeddings::new(&vs / "embeddings", cfg),
            layers,
            pooler,
        }
    }

    /// Last hidden states `[batch, seq, hidden]` for `input_ids` and `attention_mask` (both
    /// `[batch, seq]`, int64; mask 1 for real tokens, 0 for padding).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
    ) -> Tensor {
        self.forward_t(input_ids, attention_mask, token_type_ids, 0.0)
    }

    /// [`forward`](Self::forward) with `dropout` (the checkpoint's `hidden_dropout_prob`, also
    /// used for attention probabilities) applied as `transformers` does in training mode; 0 is
    /// inference. Used by the reranker trainer ([`crate::rerank_train`]).
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        dropout: f64,
    ) -> Tensor {
        let zeros;
        let token_type_ids = match token_type_ids {
            Some(t) => t,
            None => {
                zeros = input_ids.zeros_like();
                &zeros
            }
        };
        let mask = attention_mask.ne(0).unsqueeze(1).unsqueeze(1);
        let mut xs = self.embeddings.forward(input_ids, token_type_ids, dropout);
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask, dropout);
        }
        xs
    }

    /// `BertPooler`: tanh(dense(hidden state of the first token)). `None` without a pooler.
    pub fn pool(&self, hidden: &Tensor) -> Option<Tensor> {
        self.pooler
            .as_ref()
            .map(|dense| dense.forward(&hidden.select(1, 0)).tanh())
    }
}
