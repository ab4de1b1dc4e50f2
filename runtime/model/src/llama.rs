//! Llama-family causal language model (Llama 2/3, SmolLM, Mistral-style GQA checkpoints without
//! sliding windows), loaded from a Hugging Face safetensors directory or a llama.cpp GGUF file.
//!
//! Follows Hugging Face `transformers/models/llama/modeling_llama.py` (`LlamaRMSNorm`,
//! `LlamaRotaryEmbedding` with the default rope type, `LlamaAttention` with `repeat_kv`, `LlamaMLP`)
//! in eval mode. Weights load by their checkpoint keys (`model.layers.3.self_attn.q_proj.weight`,
//! each checked for presence and shape); GGUF tensors are renamed to those keys, dequantised, and
//! the Q/K projections un-permuted (see [`crate::gguf::unpermute_qk`]).
//!
//! Built for decoding speed on a CPU, where every generated token reads every weight once:
//! Q/K/V and gate/up are fused into one matrix each and kept transposed (`x @ W`, no copy per
//! step); with [`WeightFormat::Int4`] the projections stay in 4 bits for decoding steps
//! ([`crate::linear`]); keys and values are written in place into a [`KvPool`] (no concatenation
//! per token). One [`LlamaModel::step`] advances several sequences at different lengths with one
//! weight read (continuous batching), each through its own LoRA adapter: adapters are applied
//! unmerged, as `scale · B(A x)` added to the base output of the rows that use them.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result, read_json};
use crate::gguf::{GgufFile, unpermute_qk};
use crate::linear::{Linear, Q4Parts};
use crate::lora::LoraAdapter;

/// The fields of a Llama `config.json` this implementation uses.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LlamaConfig {
    /// Rows of the token embedding table.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// Width of the SwiGLU feed-forward block.
    pub intermediate_size: i64,
    /// Number of decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads per layer.
    pub num_attention_heads: i64,
    /// Key/value heads per layer (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<i64>,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest sequence (prompt + generated tokens) the model accepts.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: i64,
    /// Whether the output projection is the token embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    /// End-of-sequence token(s): an id or a list of ids in `config.json`.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// Only `null` (plain RoPE) is implemented.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Biases on the attention projections are not implemented.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP projections are not implemented.
    #[serde(default)]
    pub mlp_bias: bool,
    /// `hidden_act`; only `silu` (SwiGLU) is implemented.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> i64 {
    2048
}
fn default_hidden_act() -> String {
    "silu".to_owned()
}

impl LlamaConfig {
    /// Builds the configuration from GGUF metadata (`llama.*` keys, as llama.cpp writes them).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let invalid = |reason: String| ModelError::Gguf {
            path: gguf.path().to_path_buf(),
            reason,
        };
        let arch = gguf
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid("metadata lacks `general.architecture`".to_owned()))?;
        if arch != "llama" {
            return Err(ModelError::Unsupported(format!(
                "{}: architecture `{arch}` (only `llama` is implemented)",
                gguf.path().display()
            )));
        }
        let int = |key: &str| -> Result<i64> {
            gguf.get(&format!("llama.{key}"))
                .and_then(|v| v.as_i64())
                .ok_or_else(|| invalid(format!("metadata lacks integer `llama.{key}`")))
        };
        let opt_int = |key: &str| gguf.get(key).and_then(|v| v.as_i64());
        let vocab_size = match opt_int("llama.vocab_size") {
            Some(v) => v,
            None => gguf
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|t| t.len() as i64)
                .ok_or_else(|| invalid("metadata gives no vocabulary size".to_owned()))?,
        };
        let num_attention_heads = int("attention.head_count")?;
        let hidden_size = int("embedding_length")?;
        let rope_dim = opt_int("llama.rope.dimension_count");
        let head_dim = hidden_size / num_attention_heads.max(1);
        if rope_dim.is_some_and(|d| d != head_dim) {
            return Err(ModelError::Unsupported(format!(
                "{}: partial rotary embedding (rope.dimension_count {rope_dim:?}, head dim {head_dim})",
                gguf.path().display()
            )));
        }
        if gguf
            .get("llama.rope.scaling.type")
            .and_then(|v| v.as_str())
            .is_some_and(|t| t != "none")
        {
            return Err(ModelError::Unsupported(format!(
                "{}: RoPE scaling (`llama.rope.scaling.type`)",
                gguf.path().display()
            )));
        }
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads,
            num_key_value_heads: opt_int("llama.attention.head_count_kv"),
            head_dim: None,
            rms_norm_eps: gguf
                .get("llama.attention.layer_norm_rms_epsilon")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5),
            rope_theta: gguf
                .get("llama.rope.freq_base")
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0),
            max_position_embeddings: opt_int("llama.context_length").unwrap_or(2048),
            tie_word_embeddings: gguf.tensor_info("output.weight").is_none(),
            bos_token_id: opt_int("tokenizer.ggml.bos_token_id"),
            eos_token_id: opt_int("tokenizer.ggml.eos_token_id").map(serde_json::Value::from),
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: default_hidden_act(),
        })
    }

    /// Checks what this implementation supports, so a wrong checkpoint fails at load.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |what: String| Err(ModelError::Unsupported(what));
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return unsupported(format!("rope_scaling {:?}", self.rope_scaling));
        }
        if self.attention_bias || self.mlp_bias {
            return unsupported("attention_bias / mlp_bias".to_owned());
        }
        if self.hidden_act != "silu" {
            return unsupported(format!("hidden_act `{}` (only `silu`)", self.hidden_act));
        }
        let kv = self.kv_heads();
        if self.num_attention_heads <= 0 || kv <= 0 || self.num_attention_heads % kv != 0 {
            return unsupported(format!(
                "{} query heads are not a multiple of {kv} key/value heads",
                self.num_attention_heads
            ));
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return unsupported(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return unsupported(format!("odd head dimension {}", self.head_dim()));
        }
        Ok(())
    }

    /// Key/value heads per layer.
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// End-of-sequence ids named by the configuration.
    pub fn eos_token_ids(&self) -> Vec<i64> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
            Some(serde_json::Value::Array(ids)) => ids.iter().filter_map(|v| v.as_i64()).collect(),
            _ => Vec::new(),
        }
    }
}

/// The projections of a decoder layer, by their Hugging Face / PEFT module names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    /// `self_attn.q_proj`.
    Q,
    /// `self_attn.k_proj`.
    K,
    /// `self_attn.v_proj`.
    V,
    /// `self_attn.o_proj`.
    O,
    /// `mlp.gate_proj`.
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

impl Proj {
    /// Every projection.
    pub const ALL: [Proj; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// Module name (`q_proj`, ...), as PEFT's `target_modules` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// Path inside a layer (`self_attn.q_proj`).
    pub fn path(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    /// Parses a module name (`q_proj`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// (out features, in features) of this projection's weight.
    pub fn shape(self, cfg: &LlamaConfig) -> (i64, i64) {
        let (h, q, kv, ffn) = (
            cfg.hidden_size,
            cfg.num_attention_heads * cfg.head_dim(),
            cfg.kv_heads() * cfg.head_dim(),
            cfg.intermediate_size,
        );
        match self {
            Self::Q => (q, h),
            Self::K | Self::V => (kv, h),
            Self::O => (h, q),
            Self::Gate | Self::Up => (ffn, h),
            Self::Down => (h, ffn),
        }
    }

    fn gguf_name(self) -> &'static str {
        match self {
            Self::Q => "attn_q",
            Self::K => "attn_k",
            Self::V => "attn_v",
            Self::O => "attn_output",
            Self::Gate => "ffn_gate",
            Self::Up => "ffn_up",
            Self::Down => "ffn_down",
        }
    }
}

/// How the decoder keeps its linear layers' weights (see [`crate::linear`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Dense weights in the model's kind: the reference's numbers (f32 on the CPU).
    #[default]
    Dense,
    /// 4-bit groups of 32 for the decoder projections, multiplied by libtorch's CPU int4 kernel
    /// for decoding steps (a few rows): GGUF Q4_0/Q4_1 tensors are kept exactly as stored, dense
    /// checkpoints are quantised on load (Q4_1 scheme). Prompt prefill multiplies with the dense
    /// weights those 4-bit weights encode. The embedding and output head stay dense.
    Int4,
}

impl std::str::FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "dense" | "f32" => Ok(Self::Dense),
            "int4" | "q4" => Ok(Self::Int4),
            other => Err(format!("weight format `{other}`: expected dense or int4")),
        }
    }
}

/// Options of [`LlamaModel::load_with`].
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Device of the weights.
    pub device: Device,
    /// Floating-point kind of the dense weights and activations.
    pub kind: Kind,
    /// Form of the decoder projections.
    pub weights: WeightFormat,
}

impl LoadOptions {
    /// f32 dense weights on `device`.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            kind: Kind::Float,
            weights: WeightFormat::Dense,
        }
    }
}

/// Offsets of the fused projections: `qkv` holds Q, K, V; `gate_up` holds gate, up.
#[derive(Debug, Clone, Copy)]
struct FusedLayout {
    q: i64,
    kv: i64,
    ffn: i64,
}

impl FusedLayout {
    fn of(cfg: &LlamaConfig) -> Self {
        Self {
            q: cfg.num_attention_heads * cfg.head_dim(),
            kv: cfg.kv_heads() * cfg.head_dim(),
            ffn: cfg.intermediate_size,
        }
    }

    /// (fused layer, offset, length) of a projection's output.
    fn place(&self, proj: Proj) -> (FusedPart, i64, i64) {
        match proj {
            Proj::Q => (FusedPart::Qkv, 0, self.q),
            Proj::K => (FusedPart::Qkv, self.q, self.kv),
            Proj::V => (FusedPart::Qkv, self.q + self.kv, self.kv),
            Proj::O => (FusedPart::O, 0, 0),
            Proj::Gate => (FusedPart::GateUp, 0, self.ffn),
            Proj::Up => (FusedPart::GateUp, self.ffn, self.ffn),
            Proj::Down => (FusedPart::Down, 0, 0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FusedPart {
    Qkv,
    O,
    GateUp,
    Down,
}

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    /// Q, K and V projections in one matrix (one weight read per step instead of three).
    qkv: Linear,
    o: Linear,
    /// Gate and up projections in one matrix.
    gate_up: Linear,
    down: Linear,
}

impl Layer {
    fn linear(&self, part: FusedPart) -> &Linear {
        match part {
            FusedPart::Qkv => &self.qkv,
            FusedPart::O => &self.o,
            FusedPart::GateUp => &self.gate_up,
            FusedPart::Down => &self.down,
        }
    }
}

pub use crate::kv::{KvCache, KvPool};

/// Where a checkpoint came from, and the names it goes by (for matching LoRA adapters' base model).
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// File or directory loaded.
    pub path: PathBuf,
    /// Names this model is known by: `_name_or_path` of `config.json`, GGUF `general.name`,
    /// `general.basename`-`general.size_label`, the file or directory stem without a quantisation
    /// suffix.
    pub names: Vec<String>,
}

/// The adapters of the rows of a step: none, one for every row, or groups of rows.
enum RowAdapters<'a> {
    None,
    All(&'a LoraAdapter),
    Groups(Vec<(&'a LoraAdapter, Tensor)>),
}

impl<'a> RowAdapters<'a> {
    fn of(adapters: &[Option<&'a LoraAdapter>], device: Device) -> Result<Self> {
        let first = adapters.first().copied().flatten();
        if adapters.iter().all(|a| same_adapter(a.as_deref(), first)) {
            return Ok(first.map_or(Self::None, Self::All));
        }
        let mut groups: Vec<(&LoraAdapter, Vec<i64>)> = Vec::new();
        for (row, adapter) in adapters.iter().enumerate() {
            let Some(adapter) = adapter else { continue };
            match groups.iter_mut().find(|(a, _)| std::ptr::eq(*a, *adapter)) {
                Some((_, rows)) => rows.push(row as i64),
                None => groups.push((adapter, vec![row as i64])),
            }
        }
        Ok(Self::Groups(
            groups
                .into_iter()
                .map(|(a, rows)| Ok((a, Tensor::from_slice(&rows).f_to_device(device)?)))
                .collect::<Result<_>>()?,
        ))
    }
}

fn same_adapter(a: Option<&LoraAdapter>, b: Option<&LoraAdapter>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        _ => false,
    }
}

/// A Llama-family causal LM ready for inference.
#[derive(Debug)]
pub struct LlamaModel {
    cfg: LlamaConfig,
    source: ModelSource,
    layout: FusedLayout,
    weights: WeightFormat,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `[hidden, vocab]` (tied checkpoints: the embedding's transpose).
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    kind: Kind,
}

/// Checkpoint tensors by Hugging Face key, taken out once each with a shape check.
struct Tensors<'a> {
    map: HashMap<String, Tensor>,
    path: &'a Path,
}

impl Tensors<'_> {
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let tensor = self
            .map
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.to_path_buf(),
                name: name.to_owned(),
            })?;
        if tensor.size() != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.path.to_path_buf(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: tensor.size(),
            });
        }
        Ok(tensor)
    }
}

impl LlamaModel {
    /// Loads a GGUF file or a Hugging Face directory (`config.json` + `*.safetensors`), depending on
    /// what `path` is, with f32 dense weights (the reference's numbers). [`Self::load_with`] keeps
    /// the decoder projections in 4 bits for fast decoding.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::load_with(path, LoadOptions::new(device))
    }

    /// [`Self::load`] with the weights' floating-point kind (e.g. `Kind::BFloat16` on CUDA).
    pub fn load_with_kind(path: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self> {
        Self::load_with(
            path,
            LoadOptions {
                kind,
                ..LoadOptions::new(device)
            },
        )
    }

    /// Loads with explicit options.
    pub fn load_with(path: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        if options.weights == WeightFormat::Int4 && options.kind != Kind::Float {
            return Err(ModelError::Unsupported(format!(
                "int4 weights with {:?} activations (int4 decodes with f32 activations)",
                options.kind
            )));
        }
        if path.is_dir() {
            Self::from_hf_dir(path, options)
        } else {
            Self::from_gguf(path, options)
        }
    }

    /// Loads a GGUF file: dequantises every tensor to f32, renames it to the Hugging Face key and
    /// un-permutes Q/K. With int4 weights, Q4 projections keep their stored 4-bit values.
    pub fn from_gguf(path: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let gguf = GgufFile::open(path)?;
        let cfg = LlamaConfig::from_gguf(&gguf)?;
        cfg.validate()?;
        let unpermute = |hf: &str, t: &Tensor| -> Result<Tensor> {
            if hf.ends_with("self_attn.q_proj.weight") {
                unpermute_qk(t, cfg.num_attention_heads)
            } else if hf.ends_with("self_attn.k_proj.weight") {
                unpermute_qk(t, cfg.kv_heads())
            } else {
                Ok(t.shallow_clone())
            }
        };
        let mut tensors = HashMap::new();
        let mut q4 = HashMap::new();
        for (name, tensor) in gguf.tensors_f32(Device::Cpu)? {
            let Some(hf) = hf_name(&name) else {
                tracing::debug!(tensor = %name, "GGUF tensor not used by the model");
                continue;
            };
            if options.weights == WeightFormat::Int4
                && Proj::ALL.iter().any(|p| hf.contains(p.path()))
                && let Some(blocks) = gguf.q4_blocks(&name)?
            {
                let shape = tensor.size();
                let (out, inp) = (shape[0], shape[1]);
                let parts = Q4Parts {
                    values: Tensor::from_slice(&blocks.values)
                        .f_to_kind(Kind::Int)?
                        .f_reshape([out, inp])?,
                    scales: Tensor::from_slice(&blocks.scales).f_reshape([out, inp / 32])?,
                    offsets: Tensor::from_slice(&blocks.offsets).f_reshape([out, inp / 32])?,
                }
                .map_rows(|t| unpermute(&hf, t))?;
                q4.insert(hf.clone(), parts);
            }
            tensors.insert(hf.clone(), unpermute(&hf, &tensor)?);
        }
        let mut names = Vec::new();
        let meta = |k: &str| gguf.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        names.extend(meta("general.name"));
        if let (Some(base), Some(size)) = (meta("general.basename"), meta("general.size_label")) {
            names.push(format!("{base}-{size}"));
        }
        if let Some(stem) = gguf.path().file_name().and_then(|s| s.to_str()) {
            let stem = stem.strip_suffix(".gguf").unwrap_or(stem);
            // `SmolLM2-135M-Instruct.Q4_1` -> `SmolLM2-135M-Instruct`
            names.push(
                stem.split_once('.')
                    .map_or(stem, |(head, _)| head)
                    .to_owned(),
            );
        }
        let source = ModelSource {
            path: gguf.path().to_path_buf(),
            names,
        };
        Self::build(cfg, source, tensors, q4, options)
    }

    /// Loads a Hugging Face directory: `config.json` and every `*.safetensors` file in it.
    pub fn from_hf_dir(dir: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let cfg: LlamaConfig = read_json(&config_path)?;
        cfg.validate()?;
        let raw: serde_json::Value = read_json(&config_path)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(ModelError::io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ModelError::Io {
                path: dir.join("model.safetensors"),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no *.safetensors file"),
            });
        }
        let mut tensors = HashMap::new();
        for file in &files {
            tensors.extend(Tensor::read_safetensors(file)?);
        }
        let mut names: Vec<String> = raw
            .get("_name_or_path")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .into_iter()
            .collect();
        names.extend(dir.file_name().and_then(|s| s.to_str()).map(str::to_owned));
        let source = ModelSource {
            path: dir.to_path_buf(),
            names,
        };
        Self::build(cfg, source, tensors, HashMap::new(), options)
    }

    fn build(
        cfg: LlamaConfig,
        source: ModelSource,
        tensors: HashMap<String, Tensor>,
        mut q4: HashMap<String, Q4Parts>,
        options: LoadOptions,
    ) -> Result<Self> {
        let LoadOptions {
            device,
            kind,
            weights,
        } = options;
        let mut t = Tensors {
            map: tensors,
            path: &source.path,
        };
        let h = cfg.hidden_size;
        let on = |x: Tensor| -> Result<Tensor> { Ok(x.f_to_device(device)?.f_to_kind(kind)?) };
        let embed = on(t.take("model.embed_tokens.weight", &[cfg.vocab_size, h])?)?;
        let layout = FusedLayout::of(&cfg);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for i in 0..cfg.num_hidden_layers {
            let prefix = format!("model.layers.{i}");
            let mut fused = |projs: &[Proj]| -> Result<Linear> {
                let mut dense = Vec::new();
                let mut parts = Vec::new();
                for &p in projs {
                    let (out, inp) = p.shape(&cfg);
                    let name = format!("{prefix}.{}.weight", p.path());
                    let w = t.take(&name, &[out, inp])?;
                    if weights == WeightFormat::Int4 {
                        parts.push(match q4.remove(&name) {
                            Some(parts) => parts,
                            None => Q4Parts::quantize(&w)?,
                        });
                    }
                    dense.push(w);
                }
                if weights == WeightFormat::Int4 {
                    Linear::int4(&Q4Parts::cat(&parts)?, kind, device)
                } else {
                    Linear::dense(&Tensor::f_cat(&dense, 0)?.f_to_device(device)?, kind)
                }
            };
            let qkv = fused(&[Proj::Q, Proj::K, Proj::V])?;
            let o = fused(&[Proj::O])?;
            let gate_up = fused(&[Proj::Gate, Proj::Up])?;
            let down = fused(&[Proj::Down])?;
            layers.push(Layer {
                input_norm: on(t.take(&format!("{prefix}.input_layernorm.weight"), &[h])?)?,
                post_attention_norm: on(
                    t.take(&format!("{prefix}.post_attention_layernorm.weight"), &[h])?
                )?,
                qkv,
                o,
                gate_up,
                down,
            });
        }
        let norm = on(t.take("model.norm.weight", &[h])?)?;
        let head = if cfg.tie_word_embeddings {
            embed.shallow_clone()
        } else {
            on(t.take("lm_head.weight", &[cfg.vocab_size, h])?)?
        };
        let lm_head = if weights == WeightFormat::Int4 {
            // The output head reads as many bytes as the rest of a small model: 8 bits per weight
            // (one scale per output row) keep the GGUF's Q8_0 precision at a quarter of f32.
            Linear::int8(&head, kind, device)?
        } else {
            Linear::dense(&head, kind)?
        };
        let (cos, sin) = rope_tables(&cfg, device)?;
        Ok(Self {
            layout,
            weights,
            cfg,
            source,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            device,
            kind,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Where the weights came from and the names the model goes by.
    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Floating-point kind of the weights and activations.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Form of the decoder projections.
    pub fn weight_format(&self) -> WeightFormat {
        self.weights
    }

    /// The dense weight of one projection as the checkpoint spells it (`[out, in]`, a view of the
    /// model's storage: writing into it changes the model, e.g. to merge an adapter in a test).
    pub fn projection_weight(&self, layer: usize, proj: Proj) -> Option<Tensor> {
        let layer = self.layers.get(layer)?;
        let (part, offset, len) = self.layout.place(proj);
        let linear = layer.linear(part);
        let len = if len == 0 { linear.out_features() } else { len };
        linear.weight_rows(offset, len).ok()
    }

    /// Writes the model as a Hugging Face directory (`config.json`, `model.safetensors`; tied
    /// embeddings are stored once), e.g. to keep a dequantised GGUF for faster loading.
    pub fn save_hf_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(ModelError::io(dir))?;
        let mut config = serde_json::to_value(&self.cfg).map_err(|source| ModelError::Config {
            path: dir.join("config.json"),
            source,
        })?;
        config["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        config["model_type"] = "llama".into();
        config["_name_or_path"] = self.source.names.last().cloned().unwrap_or_default().into();
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config.to_string()).map_err(ModelError::io(&config_path))?;
        let mut tensors: Vec<(String, Tensor)> = vec![
            (
                "model.embed_tokens.weight".into(),
                self.embed.shallow_clone(),
            ),
            ("model.norm.weight".into(), self.norm.shallow_clone()),
        ];
        if !self.cfg.tie_word_embeddings {
            tensors.push((
                "lm_head.weight".into(),
                self.lm_head.weight_rows(0, self.cfg.vocab_size)?,
            ));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let prefix = format!("model.layers.{i}");
            tensors.push((
                format!("{prefix}.input_layernorm.weight"),
                layer.input_norm.shallow_clone(),
            ));
            tensors.push((
                format!("{prefix}.post_attention_layernorm.weight"),
                layer.post_attention_norm.shallow_clone(),
            ));
            for proj in Proj::ALL {
                if let Some(w) = self.projection_weight(i, proj) {
                    tensors.push((
                        format!("{prefix}.{}.weight", proj.path()),
                        w.f_contiguous()?,
                    ));
                }
            }
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&tensors, dir.join("model.safetensors"))?;
        Ok(())
    }

    /// An empty cache for one batch of sequences that advance together.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new()
    }

    /// A pool of `slots` sequences that advance independently ([`Self::step`]).
    pub fn new_pool(&self, slots: usize) -> KvPool {
        KvPool::new(
            self.layers.len(),
            slots,
            (
                self.cfg.kv_heads(),
                self.cfg.head_dim(),
                self.cfg.max_position_embeddings,
            ),
            self.kv_kind(),
            self.device,
        )
    }

    /// Kind of cached keys and values: the model's. (Measured on the CPU: decoding attention
    /// over 600 bf16 keys takes 7x as long as over f32 ones in libtorch 2.11's SDPA, more than
    /// the halved cache reads save.)
    fn kv_kind(&self) -> Kind {
        self.kind
    }

    /// Runs `input_ids` (`[batch, seq]`, int64) after what `cache` holds and returns the logits of
    /// every position (`[batch, seq, vocab]`, f32). With `adapter`, each targeted projection adds
    /// `scale · B(A x)` to the base output.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            let hidden = self.cached_hidden(input_ids, cache, adapter, false)?;
            Ok(self.lm_head.forward(&hidden)?.f_to_kind(Kind::Float)?)
        })
    }

    /// Like [`Self::forward`], returning only the last position's logits (`[batch, vocab]`, f32):
    /// what decoding needs, without projecting every prompt position onto the vocabulary.
    pub fn forward_last(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            let hidden = self.cached_hidden(input_ids, cache, adapter, true)?;
            Ok(self
                .lm_head
                .forward(&hidden.f_select(1, 0)?)?
                .f_to_kind(Kind::Float)?)
        })
    }

    /// One step of independent sequences: row `i` of `input_ids` (`[rows, seq]`) continues the
    /// sequence in slot `first_slot + i` of `pool` (its tokens sit at positions after what the
    /// slot holds), through `adapters[i]`. Returns the last position's logits per row
    /// (`[rows, vocab]`, f32). Rows of different lengths decode together (one token each): one
    /// weight read serves every row. A row may also take many tokens at once (prompt prefill)
    /// when it is the only row.
    pub fn step(
        &self,
        input_ids: &Tensor,
        pool: &mut KvPool,
        first_slot: usize,
        adapters: &[Option<&LoraAdapter>],
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            let rows = input_ids.size().first().copied().unwrap_or(0);
            let starts: Vec<i64> = (0..rows as usize)
                .map(|i| pool.len(first_slot + i))
                .collect();
            let adapters = RowAdapters::of(adapters, self.device)?;
            let hidden =
                self.hidden_states(input_ids, pool, first_slot, &starts, &adapters, true)?;
            Ok(self
                .lm_head
                .forward(&hidden.f_select(1, 0)?)?
                .f_to_kind(Kind::Float)?)
        })
    }

    /// A forward pass **with autograd**, for training an adapter: every row of `input_ids`
    /// (`[batch, seq]`, right-padded) starts at position 0 in a fresh cache, causal attention (so
    /// padding after a row's tokens never reaches them). The base weights are plain tensors and
    /// get no gradient; `adapter`'s tensors do when they require it (see
    /// [`LoraAdapter::new_trainable`]). Returns f32 logits `[batch, seq, vocab]`, or with
    /// `positions` (flat indices into `batch · seq`) only those rows, `[positions, vocab]`: a
    /// loss over completion tokens need not project the prompt onto the vocabulary.
    ///
    /// Call it inside `tch::no_grad` for evaluation. Needs dense weights ([`Self::load`]): the
    /// int4 decoding kernel has no backward.
    pub fn forward_train(
        &self,
        input_ids: &Tensor,
        adapter: Option<&LoraAdapter>,
        positions: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.weights != WeightFormat::Dense {
            return Err(ModelError::Unsupported(
                "training with int4 weights: load the model with dense weights (LlamaModel::load)"
                    .to_owned(),
            ));
        }
        let rows = input_ids.size().first().copied().unwrap_or(0).max(1);
        let mut pool = self.new_pool(rows as usize);
        let starts = vec![0; rows as usize];
        let adapters = adapter.map_or(RowAdapters::None, RowAdapters::All);
        let hidden = self.hidden_states(input_ids, &mut pool, 0, &starts, &adapters, false)?;
        let hidden = match positions {
            Some(positions) => hidden
                .f_reshape([-1, self.cfg.hidden_size])?
                .f_index_select(0, &positions.f_to_device(self.device)?)?,
            None => hidden,
        };
        Ok(self.lm_head.forward(&hidden)?.f_to_kind(Kind::Float)?)
    }

    fn cached_hidden(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        adapter: Option<&LoraAdapter>,
        last_only: bool,
    ) -> Result<Tensor> {
        let rows = input_ids.size().first().copied().unwrap_or(0);
        let pool = match &mut cache.pool {
            Some(pool) if pool.slots() == rows as usize => pool,
            Some(pool) => {
                return Err(ModelError::InvalidRequest(format!(
                    "the cache holds {} sequences, the input {rows}",
                    pool.slots()
                )));
            }
            None => cache.pool.insert(self.new_pool(rows.max(1) as usize)),
        };
        let starts = vec![pool.len(0); rows.max(0) as usize];
        let adapters = adapter.map_or(RowAdapters::None, RowAdapters::All);
        self.hidden_states(input_ids, pool, 0, &starts, &adapters, last_only)
    }

    /// Adds the LoRA deltas of `proj` (rows' adapters) to its slice of the fused output `y`.
    fn add_lora(
        &self,
        y: &Tensor,
        x: &Tensor,
        layer: usize,
        proj: Proj,
        adapters: &RowAdapters<'_>,
    ) -> Result<()> {
        let (_, offset, len) = self.layout.place(proj);
        let slice = |y: &Tensor| -> Result<Tensor> {
            Ok(if len == 0 {
                y.shallow_clone()
            } else {
                y.f_narrow(-1, offset, len)?
            })
        };
        match adapters {
            RowAdapters::None => {}
            RowAdapters::All(adapter) => {
                if let Some(delta) = adapter.delta(layer, proj, x)? {
                    let _ = slice(y)?.f_add_(&delta)?;
                }
            }
            RowAdapters::Groups(groups) => {
                for (adapter, rows) in groups {
                    let xs = x.f_index_select(0, rows)?;
                    if let Some(delta) = adapter.delta(layer, proj, &xs)? {
                        let _ = slice(y)?.f_index_add_(0, rows, &delta)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn hidden_states(
        &self,
        input_ids: &Tensor,
        pool: &mut KvPool,
        first_slot: usize,
        starts: &[i64],
        adapters: &RowAdapters<'_>,
        last_only: bool,
    ) -> Result<Tensor> {
        let size = input_ids.size();
        let [rows, seq] = size[..] else {
            return Err(ModelError::InvalidRequest(format!(
                "input ids must be [batch, seq], got {size:?}"
            )));
        };
        if seq == 0 || rows == 0 {
            return Err(ModelError::InvalidRequest("empty input".to_owned()));
        }
        if first_slot + rows as usize > pool.slots() || starts.len() != rows as usize {
            return Err(ModelError::InvalidRequest(format!(
                "{rows} rows from slot {first_slot} for a pool of {} sequences",
                pool.slots()
            )));
        }
        if pool.layers() != self.layers.len() {
            return Err(ModelError::InvalidRequest(format!(
                "cache has {} layers, the model {}",
                pool.layers(),
                self.layers.len()
            )));
        }
        let longest = starts.iter().copied().max().unwrap_or(0);
        let total = longest + seq;
        if total > self.cfg.max_position_embeddings {
            return Err(ModelError::InvalidRequest(format!(
                "{total} positions exceed the context length {}",
                self.cfg.max_position_embeddings
            )));
        }
        pool.ensure_capacity(total)?;
        let uniform = starts.iter().all(|&s| s == starts[0]);
        let (heads, kv_heads, dim) = (
            self.cfg.num_attention_heads,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
        );
        let input_ids = input_ids.f_to_device(self.device)?;
        let mut xs = Tensor::f_embedding(&self.embed, &input_ids, -1, false, false)?;
        // Positions of every (row, token); RoPE angles gathered per row.
        let positions: Vec<i64> = starts
            .iter()
            .flat_map(|&s| (s..s + seq).collect::<Vec<_>>())
            .collect();
        let positions = Tensor::from_slice(&positions).f_to_device(self.device)?;
        let rope = |table: &Tensor| -> Result<Tensor> {
            Ok(table
                .f_index_select(0, &positions)?
                .f_view([rows, 1, seq, dim])?
                .f_to_kind(self.kind)?)
        };
        let (cos, sin) = (rope(&self.cos)?, rope(&self.sin)?);
        // Which cached keys each query sees: positions up to its own. `None` where SDPA's causal
        // flag (prefill from an empty cache) or no mask at all (one query per row, every row
        // equally long) is exact.
        let causal = uniform && starts[0] == 0 && seq > 1;
        let mask = if causal || (uniform && seq == 1) {
            None
        } else {
            let keys =
                Tensor::f_arange(total, (Kind::Int64, self.device))?.f_view([1, 1, 1, total])?;
            Some(keys.f_le_tensor(&positions.f_view([rows, 1, seq, 1])?)?)
        };
        // Where this step's keys and values go: contiguous ranges, or one position per row.
        let first = first_slot as i64;
        let slots = Tensor::f_arange_start(first, first + rows, (Kind::Int64, self.device))?;
        let kv_kind = pool.kind();
        let write_positions = if uniform {
            None
        } else if seq == 1 {
            Some(Tensor::from_slice(starts).f_to_device(self.device)?)
        } else {
            return Err(ModelError::InvalidRequest(
                "rows at different positions advance one token at a time".to_owned(),
            ));
        };
        let eps = self.cfg.rms_norm_eps;
        let FusedLayout {
            q: qd,
            kv: kvd,
            ffn,
        } = self.layout;
        for (i, layer) in self.layers.iter().enumerate() {
            // Self-attention.
            let h = xs.f_rms_norm([self.cfg.hidden_size], Some(&layer.input_norm), eps)?;
            let qkv = layer.qkv.forward(&h)?;
            for proj in [Proj::Q, Proj::K, Proj::V] {
                self.add_lora(&qkv, &h, i, proj, adapters)?;
            }
            let split = |offset: i64, len: i64, n: i64| -> Result<Tensor> {
                Ok(qkv
                    .f_narrow(2, offset, len)?
                    .f_reshape([rows, seq, n, dim])?
                    .f_transpose(1, 2)?)
            };
            let q = apply_rope(&split(0, qd, heads)?, &cos, &sin)?.f_to_kind(kv_kind)?;
            let k = apply_rope(&split(qd, kvd, kv_heads)?, &cos, &sin)?;
            let v = split(qd + kvd, kvd, kv_heads)?;
            let (key_cache, value_cache) = pool.layer(i);
            match &write_positions {
                None => {
                    for (cache, new) in [(key_cache, &k), (value_cache, &v)] {
                        cache
                            .f_narrow(0, first, rows)?
                            .f_narrow(2, starts[0], seq)?
                            .f_copy_(new)?;
                    }
                }
                Some(at) => {
                    for (cache, new) in [(key_cache, &k), (value_cache, &v)] {
                        let mut cache = cache.shallow_clone();
                        let _ = cache.f_index_put_(
                            &[Some(&slots), None, Some(at)],
                            &new.f_select(2, 0)?.f_to_kind(kv_kind)?,
                            false,
                        )?;
                    }
                }
            }
            let keys = key_cache.f_narrow(0, first, rows)?.f_narrow(2, 0, total)?;
            let values = value_cache
                .f_narrow(0, first, rows)?
                .f_narrow(2, 0, total)?;
            let attn = Tensor::f_scaled_dot_product_attention(
                &q,
                &keys,
                &values,
                mask.as_ref(),
                0.0,
                causal,
                None,
                kv_heads != heads,
            )?
            .f_transpose(1, 2)?
            .f_reshape([rows, seq, heads * dim])?
            .f_to_kind(self.kind)?;
            let out = layer.o.forward(&attn)?;
            self.add_lora(&out, &attn, i, Proj::O, adapters)?;
            xs = xs.f_add(&out)?;
            // SwiGLU MLP.
            let h = xs.f_rms_norm(
                [self.cfg.hidden_size],
                Some(&layer.post_attention_norm),
                eps,
            )?;
            let gate_up = layer.gate_up.forward(&h)?;
            for proj in [Proj::Gate, Proj::Up] {
                self.add_lora(&gate_up, &h, i, proj, adapters)?;
            }
            let gated = gate_up
                .f_narrow(2, 0, ffn)?
                .f_silu()?
                .f_mul(&gate_up.f_narrow(2, ffn, ffn)?)?;
            let out = layer.down.forward(&gated)?;
            self.add_lora(&out, &gated, i, Proj::Down, adapters)?;
            xs = xs.f_add(&out)?;
        }
        for (row, &start) in starts.iter().enumerate() {
            pool.record_len(first_slot + row, start + seq);
        }
        if last_only {
            xs = xs.f_narrow(1, seq - 1, 1)?;
        }
        Ok(xs.f_rms_norm([self.cfg.hidden_size], Some(&self.norm), eps)?)
    }
}

/// Maps a llama.cpp tensor name to the Hugging Face key.
fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".to_owned()),
        "output_norm.weight" => return Some("model.norm.weight".to_owned()),
        "output.weight" => return Some("lm_head.weight".to_owned()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let module = tail.strip_suffix(".weight")?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        other => Proj::ALL
            .into_iter()
            .find(|p| p.gguf_name() == other)?
            .path(),
    };
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

/// cos/sin tables (`[max_positions, head_dim]`, f32) of `LlamaRotaryEmbedding` (default rope type):
/// `inv_freq = 1 / theta^(2i/d)`, angles `pos · inv_freq`, duplicated across both halves.
fn rope_tables(cfg: &LlamaConfig, device: Device) -> Result<(Tensor, Tensor)> {
    let dim = cfg.head_dim();
    let exponents = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, device))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(dim as f64)?;
    let inv_freq = Tensor::f_pow_scalar(cfg.rope_theta, &exponents)?.f_reciprocal()?;
    let positions = Tensor::f_arange(cfg.max_position_embeddings, (Kind::Int64, device))?
        .f_to_kind(Kind::Float)?;
    let freqs = positions.f_unsqueeze(1)?.f_mul(&inv_freq.f_unsqueeze(0)?)?;
    let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
    Ok((emb.f_cos()?, emb.f_sin()?))
}

/// `q · cos + rotate_half(q) · sin` with `rotate_half(x) = [-x2, x1]`; `x` is `[b, heads, seq, d]`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.size()[3] / 2;
    let x1 = x.f_narrow(3, 0, half)?;
    let x2 = x.f_narrow(3, half, half)?;
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], 3)?;
    Ok(x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf_keys() {
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").as_deref(),
            Some("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
