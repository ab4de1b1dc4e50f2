//! Llama-family causal language model (Llama 2/3, SmolLM, Mistral-style GQA checkpoints without
//! sliding windows), loaded from a Hugging Face safetensors directory or a llama.cpp GGUF file.
//!
//! Follows Hugging Face `transformers/models/llama/modeling_llama.py` (`LlamaRMSNorm`,
//! `LlamaRotaryEmbedding` with the default rope type, `LlamaAttention` with `repeat_kv`, `LlamaMLP`)
//! in eval mode. Variables mirror the checkpoint keys (`model.layers.3.self_attn.q_proj.weight`), so
//! safetensors load by name; GGUF tensors are renamed to those keys, dequantised to f32, and the Q/K
//! projections un-permuted (see [`crate::gguf::unpermute_qk`]).
//!
//! The linear layers are plain weight tensors rather than `nn::Linear` so a LoRA adapter chosen per
//! request can add its low-rank term without touching (merging into) the base weights.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result, read_json};
use crate::gguf::{GgufFile, unpermute_qk};
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

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    /// Weights in `Proj::ALL` order, each `[out, in]`.
    proj: [Tensor; 7],
}

impl Layer {
    fn new(vs: nn::Path, cfg: &LlamaConfig) -> Self {
        let h = cfg.hidden_size;
        let input_norm = (&vs / "input_layernorm").ones_no_train("weight", &[h]);
        let post_attention_norm = (&vs / "post_attention_layernorm").ones_no_train("weight", &[h]);
        let proj = Proj::ALL.map(|p| {
            let (out, inp) = p.shape(cfg);
            let mut path = vs.clone();
            for part in p.path().split('.') {
                path = &path / part;
            }
            path.zeros_no_train("weight", &[out, inp])
        });
        Self {
            input_norm,
            post_attention_norm,
            proj,
        }
    }
}

/// Per-layer key/value cache of one sequence batch; grows by the tokens each forward call sees.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Number of positions already cached.
    pub fn len(&self) -> i64 {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.size()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the cached positions beyond `len` (e.g. to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: i64) {
        for entry in &mut self.layers {
            if let Some((k, v)) = entry {
                if len == 0 {
                    *entry = None;
                } else if k.size()[2] > len {
                    *entry = Some((k.narrow(2, 0, len), v.narrow(2, 0, len)));
                }
            }
        }
    }
}

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

/// A Llama-family causal LM ready for inference.
#[derive(Debug)]
pub struct LlamaModel {
    cfg: LlamaConfig,
    source: ModelSource,
    vs: VarStore,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    kind: Kind,
}

impl LlamaModel {
    /// Loads a GGUF file or a Hugging Face directory (`config.json` + `*.safetensors`), depending on
    /// what `path` is. Weights are f32 on the CPU; on CUDA pass `Kind::BFloat16` or `Kind::Half` to
    /// [`Self::load_with_kind`] to halve memory and time.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::load_with_kind(path, device, Kind::Float)
    }

    /// [`Self::load`] with the weights' floating-point kind.
    pub fn load_with_kind(path: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_hf_dir(path, device, kind)
        } else {
            Self::from_gguf(path, device, kind)
        }
    }

    /// Loads a GGUF file: dequantises every tensor to f32, renames it to the Hugging Face key and
    /// un-permutes Q/K.
    pub fn from_gguf(path: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self> {
        let gguf = GgufFile::open(path)?;
        let cfg = LlamaConfig::from_gguf(&gguf)?;
        cfg.validate()?;
        let mut tensors = HashMap::new();
        for (name, tensor) in gguf.tensors_f32(Device::Cpu)? {
            let Some(hf) = hf_name(&name) else {
                tracing::debug!(tensor = %name, "GGUF tensor not used by the model");
                continue;
            };
            let tensor = if hf.ends_with("self_attn.q_proj.weight") {
                unpermute_qk(&tensor, cfg.num_attention_heads)?
            } else if hf.ends_with("self_attn.k_proj.weight") {
                unpermute_qk(&tensor, cfg.kv_heads())?
            } else {
                tensor
            };
            tensors.insert(hf, tensor);
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
        Self::build(cfg, source, &tensors, device, kind)
    }

    /// Loads a Hugging Face directory: `config.json` and every `*.safetensors` file in it.
    pub fn from_hf_dir(dir: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self> {
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
        Self::build(cfg, source, &tensors, device, kind)
    }

    fn build(
        cfg: LlamaConfig,
        source: ModelSource,
        tensors: &HashMap<String, Tensor>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let mut vs = VarStore::new(device);
        let root = vs.root();
        let model = &root / "model";
        let embed =
            (&model / "embed_tokens").zeros_no_train("weight", &[cfg.vocab_size, cfg.hidden_size]);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(&model / "layers" / i, &cfg))
            .collect::<Vec<_>>();
        let norm = (&model / "norm").ones_no_train("weight", &[cfg.hidden_size]);
        let lm_head = if cfg.tie_word_embeddings {
            embed.shallow_clone()
        } else {
            (&root / "lm_head").zeros_no_train("weight", &[cfg.vocab_size, cfg.hidden_size])
        };
        load_strict(&vs, tensors, &source.path)?;
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        let (cos, sin) = rope_tables(&cfg, device)?;
        Ok(Self {
            cfg,
            source,
            vs,
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

    /// Floating-point kind of the weights.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The base weight of one projection (`[out, in]`), e.g. to merge an adapter in a test.
    pub fn projection_weight(&self, layer: usize, proj: Proj) -> Option<&Tensor> {
        self.layers.get(layer).map(|l| &l.proj[proj as usize])
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
        let mut tensors: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&tensors, dir.join("model.safetensors"))?;
        Ok(())
    }

    /// An empty cache for one sequence batch.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.layers.len()).map(|_| None).collect(),
        }
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
            let hidden = self.hidden_states(input_ids, cache, adapter)?;
            Ok(hidden
                .f_matmul(&self.lm_head.f_tr()?)?
                .f_to_kind(Kind::Float)?)
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
            let hidden = self.hidden_states(input_ids, cache, adapter)?;
            let last = hidden.f_select(1, -1)?;
            Ok(last
                .f_matmul(&self.lm_head.f_tr()?)?
                .f_to_kind(Kind::Float)?)
        })
    }

    fn hidden_states(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Tensor> {
        let size = input_ids.size();
        let [batch, seq] = size[..] else {
            return Err(ModelError::InvalidRequest(format!(
                "input ids must be [batch, seq], got {size:?}"
            )));
        };
        if seq == 0 {
            return Err(ModelError::InvalidRequest("empty input".to_owned()));
        }
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::InvalidRequest(format!(
                "cache has {} layers, the model {}",
                cache.layers.len(),
                self.layers.len()
            )));
        }
        let past = cache.len();
        if past + seq > self.cfg.max_position_embeddings {
            return Err(ModelError::InvalidRequest(format!(
                "{} positions exceed the context length {}",
                past + seq,
                self.cfg.max_position_embeddings
            )));
        }
        let input_ids = input_ids.f_to_device(self.device)?;
        let mut xs = Tensor::f_embedding(&self.embed, &input_ids, -1, false, false)?;
        let cos = self.cos.f_narrow(0, past, seq)?.f_to_kind(self.kind)?;
        let sin = self.sin.f_narrow(0, past, seq)?.f_to_kind(self.kind)?;
        // Causal mask over [past + seq] keys; `None` where SDPA's own flags suffice.
        let mask = if seq > 1 && past > 0 {
            let keys = Tensor::f_arange(past + seq, (Kind::Int64, self.device))?;
            let queries = Tensor::f_arange_start(past, past + seq, (Kind::Int64, self.device))?;
            Some(keys.f_unsqueeze(0)?.f_le_tensor(&queries.f_unsqueeze(1)?)?)
        } else {
            None
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let lin = |proj: Proj, x: &Tensor| -> Result<Tensor> {
                let mut y = x.f_matmul(&layer.proj[proj as usize].f_tr()?)?;
                if let Some(delta) = adapter.map(|a| a.delta(i, proj, x)).transpose()?.flatten() {
                    y = y.f_add(&delta)?;
                }
                Ok(y)
            };
            // Self-attention.
            let h = rms_norm(&xs, &layer.input_norm, self.cfg.rms_norm_eps)?;
            let (heads, kv_heads, dim) = (
                self.cfg.num_attention_heads,
                self.cfg.kv_heads(),
                self.cfg.head_dim(),
            );
            let q = lin(Proj::Q, &h)?
                .f_view([batch, seq, heads, dim])?
                .f_transpose(1, 2)?;
            let k = lin(Proj::K, &h)?
                .f_view([batch, seq, kv_heads, dim])?
                .f_transpose(1, 2)?;
            let v = lin(Proj::V, &h)?
                .f_view([batch, seq, kv_heads, dim])?
                .f_transpose(1, 2)?;
            let q = apply_rope(&q, &cos, &sin)?;
            let k = apply_rope(&k, &cos, &sin)?;
            let (k, v) = match cache.layers[i].take() {
                Some((pk, pv)) => (Tensor::f_cat(&[pk, k], 2)?, Tensor::f_cat(&[pv, v], 2)?),
                None => (k, v),
            };
            cache.layers[i] = Some((k.shallow_clone(), v.shallow_clone()));
            let attn = Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                mask.as_ref(),
                0.0,
                seq > 1 && past == 0,
                None,
                kv_heads != heads,
            )?;
            let attn = attn
                .f_transpose(1, 2)?
                .f_reshape([batch, seq, heads * dim])?;
            xs = xs.f_add(&lin(Proj::O, &attn)?)?;
            // SwiGLU MLP.
            let h = rms_norm(&xs, &layer.post_attention_norm, self.cfg.rms_norm_eps)?;
            let gated = lin(Proj::Gate, &h)?.f_silu()?.f_mul(&lin(Proj::Up, &h)?)?;
            xs = xs.f_add(&lin(Proj::Down, &gated)?)?;
        }
        rms_norm(&xs, &self.norm, self.cfg.rms_norm_eps)
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

/// Copies every variable of `vs` from the tensor of the same name, checking shapes.
fn load_strict(vs: &VarStore, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut var) in variables {
            let src = tensors
                .get(&name)
                .ok_or_else(|| ModelError::MissingTensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                })?;
            if src.size() != var.size() {
                return Err(ModelError::ShapeMismatch {
                    path: path.to_path_buf(),
                    name,
                    expected: var.size(),
                    found: src.size(),
                });
            }
            var.f_copy_(&src.f_to_kind(var.kind())?)?;
        }
        Ok(())
    })
}

/// `LlamaRMSNorm`: normalise in f32, scale by the weight in the model's kind.
fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let kind = xs.kind();
    let x32 = xs.f_to_kind(Kind::Float)?;
    let variance = x32
        .f_pow_tensor_scalar(2)?
        .f_mean_dim(-1, true, Kind::Float)?;
    let normed = x32.f_mul(&variance.f_add_scalar(eps)?.f_rsqrt()?)?;
    Ok(weight.f_mul(&normed.f_to_kind(kind)?)?)
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
