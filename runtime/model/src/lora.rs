//! LoRA adapters in PEFT format, applied per request without merging into the base weights.
//!
//! An adapter directory holds `adapter_config.json` (`r`, `lora_alpha`, `target_modules`,
//! `base_model_name_or_path`, ...) and `adapter_model.safetensors` with keys like
//! `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (`[r, in]`) and `...lora_B.weight`
//! (`[out, r]`). A targeted projection computes `W x + s · B (A x)` with `s = lora_alpha / r`
//! (`lora_alpha / sqrt(r)` with `use_rslora`), as PEFT's `lora.Linear.forward` does in eval mode
//! (dropout is the identity).
//!
//! Adapters are validated against the base model when loaded, so a mismatch fails at load naming the
//! module and shapes, never mid-request. [`LoraRegistry`] holds the resident adapters; a request
//! takes its adapter's `Rc` once and keeps using it even if the adapter is replaced or unloaded
//! meanwhile.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use serde::Deserialize;
use tch::{Kind, Tensor, nn};

use crate::error::{ModelError, Result, read_json};
use crate::llama::{LlamaModel, Proj};

/// The fields of PEFT's `adapter_config.json` this implementation reads.
#[derive(Debug, Clone, Deserialize)]
pub struct LoraConfig {
    /// Must be `LORA` when present.
    #[serde(default)]
    pub peft_type: Option<String>,
    /// Rank.
    pub r: i64,
    /// Scaling numerator.
    pub lora_alpha: f64,
    /// Module names (`q_proj`, ...) or `all-linear`.
    pub target_modules: TargetModules,
    /// The model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Rank-stabilised scaling `alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA is not implemented.
    #[serde(default)]
    pub use_dora: bool,
    /// Transposed (Conv1D-style) weights are not implemented.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Only `none` is implemented.
    #[serde(default)]
    pub bias: Option<String>,
    /// Per-module rank overrides are not implemented.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    /// Per-module alpha overrides are not implemented.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    /// Fully trained extra modules are not implemented.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// A bias on lora_B is not implemented.
    #[serde(default)]
    pub lora_bias: bool,
    /// LoRA on raw parameters (MoE experts) is not implemented.
    #[serde(default)]
    pub target_parameters: Option<Vec<String>>,
    /// Layer replication changes the base model's structure: not implemented.
    #[serde(default)]
    pub layer_replication: Option<serde_json::Value>,
}

/// `target_modules`: a list of module names, or a single string (`all-linear`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names.
    List(Vec<String>),
    /// `all-linear` (a regular expression is not supported).
    One(String),
}

impl LoraConfig {
    /// The scaling factor `s` of `W x + s · B(A x)`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// A plain LoRA configuration (what a trainer writes): rank `r`, `lora_alpha`, the target
    /// module names (`q_proj`, ...) and the base model's name; every other field at PEFT's default.
    pub fn new(
        r: i64,
        lora_alpha: f64,
        target_modules: Vec<String>,
        base_model_name_or_path: Option<String>,
    ) -> Self {
        Self {
            peft_type: Some("LORA".to_owned()),
            r,
            lora_alpha,
            target_modules: TargetModules::List(target_modules),
            base_model_name_or_path,
            use_rslora: false,
            use_dora: false,
            fan_in_fan_out: false,
            bias: Some("none".to_owned()),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            modules_to_save: None,
            lora_bias: false,
            target_parameters: None,
            layer_replication: None,
        }
    }

    /// The projections this configuration targets, in [`Proj::ALL`] order, or why it can't say.
    pub fn target_projections(&self) -> std::result::Result<Vec<Proj>, String> {
        let mut targets = self.targets()?;
        targets.sort();
        targets.dedup();
        Ok(targets)
    }

    /// `adapter_config.json` as PEFT 0.17's `LoraConfig.save_pretrained` writes it for a causal
    /// LM (every field, keys sorted): what `PeftModel.from_pretrained` and this crate both read.
    pub fn to_peft_json(&self) -> serde_json::Value {
        let targets = match &self.target_modules {
            TargetModules::List(names) => serde_json::json!(names),
            TargetModules::One(one) => serde_json::json!(one),
        };
        // PEFT writes an integral alpha as an integer (`16`, not `16.0`).
        let alpha = if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 1e15 {
            serde_json::json!(self.lora_alpha as i64)
        } else {
            serde_json::json!(self.lora_alpha)
        };
        // serde_json's map is ordered by key, as PEFT's `json.dumps(..., sort_keys=True)`.
        serde_json::json!({
            "alpha_pattern": self.alpha_pattern,
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": self.bias.as_deref().unwrap_or("none"),
            "corda_config": null,
            "eva_config": null,
            "exclude_modules": null,
            "fan_in_fan_out": self.fan_in_fan_out,
            "inference_mode": true,
            "init_lora_weights": true,
            "layer_replication": self.layer_replication,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_alpha": alpha,
            "lora_bias": self.lora_bias,
            "lora_dropout": 0.0,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": self.modules_to_save,
            "peft_type": "LORA",
            "qalora_group_size": 16,
            "r": self.r,
            "rank_pattern": self.rank_pattern,
            "revision": null,
            "target_modules": targets,
            "target_parameters": self.target_parameters,
            "task_type": "CAUSAL_LM",
            "trainable_token_indices": null,
            "use_dora": self.use_dora,
            "use_qalora": false,
            "use_rslora": self.use_rslora,
        })
    }

    fn targets(&self) -> std::result::Result<Vec<Proj>, String> {
        match &self.target_modules {
            TargetModules::One(s) if s == "all-linear" => Ok(Proj::ALL.to_vec()),
            TargetModules::One(s) => Err(format!(
                "target_modules `{s}` is a regular expression; only a list of module names or `all-linear` is supported"
            )),
            TargetModules::List(names) => names
                .iter()
                .map(|n| {
                    Proj::from_name(n).ok_or_else(|| {
                        format!(
                            "target module `{n}` is not a Llama projection ({})",
                            Proj::ALL.map(Proj::name).join(", ")
                        )
                    })
                })
                .collect(),
        }
    }

    fn check_supported(&self) -> std::result::Result<(), String> {
        if self.peft_type.as_deref().is_some_and(|t| t != "LORA") {
            return Err(format!("peft_type {:?} is not LORA", self.peft_type));
        }
        if self.r <= 0 {
            return Err(format!("rank r = {} must be positive", self.r));
        }
        if self.use_dora {
            return Err("DoRA (use_dora) is not supported".to_owned());
        }
        if self.fan_in_fan_out {
            return Err("fan_in_fan_out is not supported".to_owned());
        }
        if self.bias.as_deref().is_some_and(|b| b != "none") {
            return Err(format!(
                "bias {:?} is not supported (only \"none\")",
                self.bias
            ));
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return Err("rank_pattern / alpha_pattern are not supported".to_owned());
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err("modules_to_save is not supported".to_owned());
        }
        if self.lora_bias {
            return Err("lora_bias is not supported".to_owned());
        }
        if self
            .target_parameters
            .as_ref()
            .is_some_and(|p| !p.is_empty())
        {
            return Err("target_parameters is not supported".to_owned());
        }
        if self
            .layer_replication
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return Err("layer_replication is not supported".to_owned());
        }
        Ok(())
    }
}

/// One LoRA pair: `A` (`[r, in]`) and `B` (`[out, r]`), on the model's device and kind.
#[derive(Debug)]
struct LoraPair {
    a_t: Tensor,
    b_t: Tensor,
}

/// Detached weights of an adapter at one moment ([`LoraAdapter::snapshot`]).
#[derive(Debug)]
pub struct LoraSnapshot {
    modules: HashMap<(usize, Proj), (Tensor, Tensor)>,
}

/// A validated adapter, resident on the base model's device.
#[derive(Debug)]
pub struct LoraAdapter {
    id: String,
    config: LoraConfig,
    scale: f64,
    modules: HashMap<(usize, Proj), LoraPair>,
}

impl LoraAdapter {
    /// Loads the PEFT adapter in `dir` under the name `id` and checks it against `model`: the base
    /// model's name (when the adapter names one), the target modules, and every tensor's shape.
    pub fn load(id: impl Into<String>, dir: impl AsRef<Path>, model: &LlamaModel) -> Result<Self> {
        let id = id.into();
        let dir = dir.as_ref();
        let reject = |reason: String| ModelError::Adapter {
            adapter: id.clone(),
            reason,
        };
        let config: LoraConfig = read_json(&dir.join("adapter_config.json"))?;
        config.check_supported().map_err(reject)?;
        if let Some(base) = config
            .base_model_name_or_path
            .as_deref()
            .filter(|b| !b.is_empty())
        {
            let wanted = normalize_name(base);
            let names = &model.source().names;
            if !names.iter().any(|n| normalize_name(n) == wanted) {
                return Err(reject(format!(
                    "trained on base model `{base}`, but the loaded model is {names:?} ({})",
                    model.source().path.display()
                )));
            }
        }
        let targets = config.targets().map_err(reject)?;
        let weights_path = dir.join("adapter_model.safetensors");
        if !weights_path.is_file() {
            return Err(ModelError::Io {
                path: weights_path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let cfg = model.config();
        let mut halves: HashMap<(usize, Proj), (Option<Tensor>, Option<Tensor>)> = HashMap::new();
        for (key, tensor) in Tensor::read_safetensors(&weights_path)? {
            let (layer, proj, is_a) = parse_key(&key).ok_or_else(|| {
                reject(format!(
                    "unexpected tensor `{key}` (not a LoRA A/B weight of a decoder projection)"
                ))
            })?;
            if layer >= cfg.num_hidden_layers as usize {
                return Err(reject(format!(
                    "`{key}`: layer {layer} does not exist (the model has {} layers)",
                    cfg.num_hidden_layers
                )));
            }
            if !targets.contains(&proj) {
                return Err(reject(format!(
                    "`{key}`: module `{}` is not in target_modules",
                    proj.name()
                )));
            }
            let (out, inp) = proj.shape(cfg);
            let expected = if is_a {
                vec![config.r, inp]
            } else {
                vec![out, config.r]
            };
            if tensor.size() != expected {
                return Err(reject(format!(
                    "layer {layer} {}: lora_{} has shape {:?}, the base model and r = {} imply {expected:?}",
                    proj.path(),
                    if is_a { "A" } else { "B" },
                    tensor.size(),
                    config.r
                )));
            }
            let tensor = tensor
                .f_to_device(model.device())?
                .f_to_kind(model.kind())?;
            let entry = halves.entry((layer, proj)).or_default();
            if is_a {
                entry.0 = Some(tensor)
            } else {
                entry.1 = Some(tensor)
            }
        }
        if halves.is_empty() {
            return Err(reject(format!(
                "{} holds no LoRA weights",
                weights_path.display()
            )));
        }
        let mut modules = HashMap::new();
        // Check in layer/projection order so the error names the same module every time.
        let mut halves: Vec<_> = halves.into_iter().collect();
        halves.sort_by_key(|(key, _)| *key);
        for ((layer, proj), pair) in halves {
            let (Some(a), Some(b)) = pair else {
                return Err(reject(format!(
                    "layer {layer} {}: has only one of lora_A / lora_B",
                    proj.path()
                )));
            };
            modules.insert(
                (layer, proj),
                LoraPair {
                    a_t: a.f_tr()?.f_contiguous()?,
                    b_t: b.f_tr()?.f_contiguous()?,
                },
            );
        }
        let scale = config.scale();
        Ok(Self {
            id,
            config,
            scale,
            modules,
        })
    }

    /// The adapter's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its configuration.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// `lora_alpha / r` (or the rsLoRA scale).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Number of adapted (layer, projection) pairs.
    pub fn num_modules(&self) -> usize {
        self.modules.len()
    }

    /// `scale · B(A x)` for the projection `proj` of `layer`, or `None` where the adapter does not
    /// touch it.
    pub fn delta(&self, layer: usize, proj: Proj, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(pair) = self.modules.get(&(layer, proj)) else {
            return Ok(None);
        };
        Ok(Some(
            x.f_matmul(&pair.a_t)?
                .f_matmul(&pair.b_t)?
                .f_mul_scalar(self.scale)?,
        ))
    }

    /// A new adapter to train: for every layer of `model` and every module of `config`, `A`
    /// initialised as PEFT does (`kaiming_uniform_(a=√5)`: uniform in ±1/√in) and `B` zeros, so
    /// the adapter starts as the identity. The tensors are variables of `vars` (f32, on its
    /// device; named `layer<i>.<module>.lora_a_t` `[in, r]` and `.lora_b_t` `[r, out]`, the
    /// transposes of PEFT's `lora_A` / `lora_B`), so an optimizer built on its `VarStore`
    /// trains them and [`LlamaModel::forward_train`] sees every update. The model must be f32
    /// with dense weights. Seed with `tch::manual_seed` first for a reproducible `A`.
    pub fn new_trainable(
        id: impl Into<String>,
        config: LoraConfig,
        vars: &nn::Path<'_>,
        model: &LlamaModel,
    ) -> Result<Self> {
        let id = id.into();
        let reject = |reason: String| ModelError::Adapter {
            adapter: id.clone(),
            reason,
        };
        config.check_supported().map_err(reject)?;
        if config.use_rslora {
            return Err(reject(
                "training with use_rslora is not supported".to_owned(),
            ));
        }
        if model.kind() != Kind::Float {
            return Err(reject(format!(
                "training needs an f32 base model, this one is {:?}",
                model.kind()
            )));
        }
        let targets = config.target_projections().map_err(reject)?;
        let cfg = model.config();
        let mut modules = HashMap::new();
        for layer in 0..cfg.num_hidden_layers as usize {
            let path = vars / format!("layer{layer}");
            for &proj in &targets {
                let (out, inp) = proj.shape(cfg);
                let path = &path / proj.name();
                let bound = 1.0 / (inp as f64).sqrt();
                let a_t = path.f_var(
                    "lora_a_t",
                    &[inp, config.r],
                    nn::Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                )?;
                let b_t = path.f_var("lora_b_t", &[config.r, out], nn::Init::Const(0.0))?;
                modules.insert((layer, proj), LoraPair { a_t, b_t });
            }
        }
        let scale = config.scale();
        Ok(Self {
            id,
            config,
            scale,
            modules,
        })
    }

    /// Sets this adapter's weights to `previous`'s, module by module (no gradient recorded): a
    /// hot-fix trained from the version it replaces starts where that version is. Both must
    /// adapt the same modules at the same rank.
    pub fn copy_weights_from(&self, previous: &LoraAdapter) -> Result<()> {
        let reject = |reason: String| ModelError::Adapter {
            adapter: previous.id.clone(),
            reason,
        };
        if previous.config.r != self.config.r {
            return Err(reject(format!(
                "has rank {}, the adapter being trained rank {}: train with --rank {}",
                previous.config.r, self.config.r, previous.config.r
            )));
        }
        let mut mine: Vec<_> = self.modules.keys().copied().collect();
        let mut theirs: Vec<_> = previous.modules.keys().copied().collect();
        mine.sort();
        theirs.sort();
        if mine != theirs {
            let names = |m: &[(usize, Proj)]| {
                let mut n: Vec<&str> = m.iter().map(|(_, p)| p.name()).collect();
                n.sort_unstable();
                n.dedup();
                n.join(",")
            };
            return Err(reject(format!(
                "adapts {} in {} layers, the adapter being trained {} in {}: train with --target-modules {}",
                names(&theirs),
                theirs.len(),
                names(&mine),
                mine.len(),
                names(&theirs)
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for (key, pair) in &self.modules {
                let from = &previous.modules[key];
                pair.a_t
                    .shallow_clone()
                    .f_copy_(&from.a_t.f_to_kind(pair.a_t.kind())?)?;
                pair.b_t
                    .shallow_clone()
                    .f_copy_(&from.b_t.f_to_kind(pair.b_t.kind())?)?;
            }
            Ok(())
        })
    }

    /// A detached copy of the weights as they are now: what [`Self::squared_distance`] pulls
    /// towards.
    pub fn snapshot(&self) -> Result<LoraSnapshot> {
        let mut modules = HashMap::new();
        for (key, pair) in &self.modules {
            modules.insert(
                *key,
                (pair.a_t.f_detach()?.copy(), pair.b_t.f_detach()?.copy()),
            );
        }
        Ok(LoraSnapshot { modules })
    }

    /// `Σ ‖A - A₀‖² + ‖B - B₀‖²` over the modules (differentiable): an L2 pull towards the
    /// snapshot, the previous version's weights or the initialisation (seed section 6: a hot-fix
    /// should be a small perturbation).
    pub fn squared_distance(&self, snapshot: &LoraSnapshot) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (key, pair) in &self.modules {
            let Some((a0, b0)) = snapshot.modules.get(key) else {
                continue;
            };
            let d = pair
                .a_t
                .f_sub(a0)?
                .f_square()?
                .f_sum(Kind::Float)?
                .f_add(&pair.b_t.f_sub(b0)?.f_square()?.f_sum(Kind::Float)?)?;
            total = Some(match total {
                Some(t) => t.f_add(&d)?,
                None => d,
            });
        }
        match total {
            Some(t) => Ok(t),
            None => Ok(Tensor::f_zeros([], (Kind::Float, tch::Device::Cpu))?),
        }
    }

    /// Writes the adapter as PEFT's `save_pretrained` does: `adapter_config.json`
    /// ([`LoraConfig::to_peft_json`]) and `adapter_model.safetensors` with f32 `lora_A` (`[r, in]`)
    /// and `lora_B` (`[out, r]`) under PEFT's keys
    /// (`base_model.model.model.layers.<i>.self_attn.q_proj.lora_A.weight`) and PEFT's metadata
    /// (`format: pt`). `dir` is created if needed; files in it are replaced.
    pub fn save_peft(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(ModelError::io(dir))?;
        let mut keys: Vec<&(usize, Proj)> = self.modules.keys().collect();
        keys.sort();
        let mut tensors = Vec::with_capacity(keys.len() * 2);
        tch::no_grad(|| -> Result<()> {
            for key in keys {
                let (layer, proj) = *key;
                let pair = &self.modules[key];
                let prefix = format!("base_model.model.model.layers.{layer}.{}", proj.path());
                for (half, t) in [("lora_A", &pair.a_t), ("lora_B", &pair.b_t)] {
                    let weight = t
                        .f_detach()?
                        .f_tr()?
                        .f_to_device(tch::Device::Cpu)?
                        .f_to_kind(Kind::Float)?
                        .f_contiguous()?;
                    tensors.push((format!("{prefix}.{half}.weight"), weight));
                }
            }
            Ok(())
        })?;
        let weights_path = dir.join("adapter_model.safetensors");
        let bytes = safetensors_f32(&tensors)?;
        std::fs::write(&weights_path, bytes).map_err(ModelError::io(&weights_path))?;
        let config_path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&self.config.to_peft_json()).map_err(|source| {
            ModelError::Config {
                path: config_path.clone(),
                source,
            }
        })?;
        std::fs::write(&config_path, text).map_err(ModelError::io(&config_path))?;
        Ok(())
    }

    /// `scale · B A` (`[out, in]`) for one module: what merging would add to the base weight.
    pub fn merged_delta(&self, layer: usize, proj: Proj) -> Result<Option<Tensor>> {
        let Some(pair) = self.modules.get(&(layer, proj)) else {
            return Ok(None);
        };
        Ok(Some(
            pair.a_t
                .f_matmul(&pair.b_t)?
                .f_tr()?
                .f_mul_scalar(self.scale)?,
        ))
    }
}

/// A safetensors file of f32 tensors with PEFT's metadata (`{"format": "pt"}`): an 8-byte
/// little-endian header length, the JSON header (padded with spaces to 8 bytes), the data.
fn safetensors_f32(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".to_owned(),
        serde_json::json!({"format": "pt"}),
    );
    let mut data = Vec::new();
    for (name, tensor) in tensors {
        let values: Vec<f32> = tensor.f_flatten(0, -1)?.try_into()?;
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": tensor.size(),
                "data_offsets": [start, data.len()],
            }),
        );
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    out.extend(data);
    Ok(out)
}

/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` -> (3, Q, true). Also accepts
/// PEFT's adapter-named form `...q_proj.lora_A.default.weight`.
fn parse_key(key: &str) -> Option<(usize, Proj, bool)> {
    let rest = key.strip_prefix("base_model.model.")?;
    let rest = rest.strip_prefix("model.").unwrap_or(rest);
    let rest = rest.strip_prefix("layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let rest = rest.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    let (module, is_a) = if let Some(m) = rest.strip_suffix(".lora_A") {
        (m, true)
    } else {
        (rest.strip_suffix(".lora_B")?, false)
    };
    let proj = Proj::ALL.into_iter().find(|p| p.path() == module)?;
    Some((layer, proj, is_a))
}

/// Whether an adapter recording `base_model_name_or_path` = `base` loads on a model known by
/// `names` (the check [`LoraAdapter::load`] makes).
pub fn base_model_matches(base: &str, names: &[String]) -> bool {
    let wanted = normalize_name(base);
    names.iter().any(|n| normalize_name(n) == wanted)
}

/// Compares model names loosely: last path segment, lowercase, letters and digits only
/// (`HuggingFaceTB/SmolLM2-135M-Instruct` == `smollm2-135m-instruct`).
fn normalize_name(name: &str) -> String {
    let last = name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(name);
    last.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The adapters resident for one base model, by id.
///
/// tch tensors are `Send` but not `Sync`, so the registry belongs to the thread that owns the model
/// (the generator's worker thread) and adapters are shared by `Rc`: a request takes its adapter's
/// `Rc` when it starts and keeps it to the end, so loading, replacing or unloading an adapter while
/// requests are being decoded never changes an answer mid-way. Loading the files can happen anywhere
/// ([`LoraAdapter`] is `Send`); only [`LoraRegistry::insert`] must run on the owning thread.
#[derive(Debug, Default)]
pub struct LoraRegistry {
    adapters: HashMap<String, Rc<LoraAdapter>>,
}

impl LoraRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The adapter `id`, if resident.
    pub fn get(&self, id: &str) -> Option<Rc<LoraAdapter>> {
        self.adapters.get(id).cloned()
    }

    /// Makes `adapter` resident under its id, returning the one it replaces.
    pub fn insert(&mut self, adapter: LoraAdapter) -> Option<Rc<LoraAdapter>> {
        self.adapters
            .insert(adapter.id().to_owned(), Rc::new(adapter))
    }

    /// Loads the adapter in `dir` against `model` and makes it resident (replacing one of the same
    /// id). On error the registry is unchanged.
    pub fn load(
        &mut self,
        id: &str,
        dir: impl AsRef<Path>,
        model: &LlamaModel,
    ) -> Result<Option<Rc<LoraAdapter>>> {
        let adapter = LoraAdapter::load(id, dir, model)?;
        Ok(self.insert(adapter))
    }

    /// Unloads `id`, returning it if it was resident.
    pub fn remove(&mut self, id: &str) -> Option<Rc<LoraAdapter>> {
        self.adapters.remove(id)
    }

    /// Ids of the resident adapters, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.adapters.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Number of resident adapters.
    pub fn len(&self) -> usize {
        self.adapters.len()
    }

    /// Whether no adapter is resident.
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_keys_parse() {
        assert_eq!(
            parse_key("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some((3, Proj::Q, true))
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.29.mlp.down_proj.lora_B.default.weight"),
            Some((29, Proj::Down, false))
        );
        assert_eq!(parse_key("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(
            parse_key("base_model.model.model.layers.1.self_attn.rotary.lora_A.weight"),
            None
        );
    }

    #[test]
    fn names_compare_loosely() {
        assert_eq!(
            normalize_name("HuggingFaceTB/SmolLM2-135M-Instruct"),
            normalize_name("SmolLM2-135M-Instruct")
        );
        assert_ne!(
            normalize_name("HuggingFaceTB/SmolLM2-360M-Instruct"),
            normalize_name("SmolLM2-135M-Instruct")
        );
    }

    #[test]
    fn scale_follows_peft() {
        let cfg: LoraConfig = serde_json::from_str(
            r#"{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}"#,
        )
        .unwrap();
        assert_eq!(cfg.scale(), 2.0);
        assert_eq!(cfg.targets().unwrap(), vec![Proj::Q, Proj::V]);
        let rs: LoraConfig = serde_json::from_str(
            r#"{"r": 4, "lora_alpha": 8, "use_rslora": true, "target_modules": "all-linear"}"#,
        )
        .unwrap();
        assert_eq!(rs.scale(), 4.0);
        assert_eq!(rs.targets().unwrap().len(), 7);
    }
}
