//! The tokenizer of a causal LM: read from `tokenizer.json` (Hugging Face directories) or rebuilt
//! from GGUF metadata, with the special tokens generation needs (BOS, end-of-turn ids) and the chat
//! template.
//!
//! The GGUF rebuild follows transformers' `GGUFLlamaConverter` (`integrations/ggml.py`) for the
//! byte-level BPE vocabularies llama.cpp labels `tokenizer.ggml.model = gpt2` (Llama 3, SmolLM,
//! Qwen-style): a BPE model over `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`, the GPT-2
//! byte-level pre-tokenizer (its regex, no prefix space), the byte-level decoder, and every token of
//! type 3 (control) registered as a special token so that `<|im_start|>` in a rendered chat prompt
//! is one id.
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, Tokenizer};

use crate::error::{ModelError, Result, read_json};
use crate::gguf::GgufFile;

/// llama.cpp's token type for control tokens (`LLAMA_TOKEN_TYPE_CONTROL`).
const TOKEN_TYPE_CONTROL: i64 = 3;

/// A causal LM's tokenizer plus what generation needs to know about its special tokens.
#[derive(Debug, Clone)]
pub struct LlmTokenizer {
    inner: Tokenizer,
    bos_token_id: Option<u32>,
    add_bos: bool,
    eos_token_ids: Vec<u32>,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl LlmTokenizer {
    /// Reads the tokenizer of a GGUF file or of a Hugging Face directory (`tokenizer.json`, with
    /// `tokenizer_config.json` for the chat template and special tokens when present).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_hf_dir(path)
        } else {
            Self::from_gguf(&GgufFile::open(path)?)
        }
    }

    /// Rebuilds the tokenizer from GGUF metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let context = || gguf.path().display().to_string();
        let err = |message: String| ModelError::Tokenizer {
            context: context(),
            message,
        };
        let model = gguf
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if model != "gpt2" {
            return Err(ModelError::Unsupported(format!(
                "{}: tokenizer.ggml.model `{model}` (only byte-level BPE, `gpt2`, is implemented)",
                context()
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            gguf.get(key)
                .and_then(|v| v.as_array())
                .ok_or_else(|| err(format!("metadata lacks `{key}`")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| err(format!("`{key}` holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| err(format!("merge `{m}` is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let id = |key: &str| {
            gguf.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
        };
        let token = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned();
        let mut bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .fuse_unk(true)
            .byte_fallback(true);
        if let Some(unk) = token(id("tokenizer.ggml.unknown_token_id")) {
            bpe = bpe.unk_token(unk);
        }
        let bpe = bpe.build().map_err(|e| err(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
        let decoders: Vec<DecoderWrapper> = vec![
            ByteFallback::new().into(),
            Fuse::new().into(),
            ByteLevelDecoder::new(false, false, true).into(),
        ];
        inner.with_decoder(Some(DecoderSequence::new(decoders)));
        if let Some(types) = gguf
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
        {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(ty, _)| ty.as_i64() == Some(TOKEN_TYPE_CONTROL))
                .map(|(_, t)| AddedToken::from(t.clone(), true).normalized(false))
                .collect();
            inner
                .add_special_tokens(special)
                .map_err(|e| err(e.to_string()))?;
        }
        let bos_token_id = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let mut eos_token_ids: Vec<u32> = eos.into_iter().collect();
        // Chat models end a turn with an end-of-turn token that GGUF files of this vintage do not
        // always name (`tokenizer.ggml.eot_token_id` is recent); stop on it too when it exists.
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            eos_token_ids.extend(id(key));
        }
        for name in [
            "<|im_end|>",
            "<|endoftext|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<end_of_turn>",
        ] {
            if let Some(i) = inner.token_to_id(name) {
                eos_token_ids.push(i);
            }
        }
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();
        Ok(Self {
            bos_token: token(bos_token_id),
            eos_token: token(eos),
            inner,
            bos_token_id,
            add_bos: gguf
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            eos_token_ids,
            chat_template: gguf
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        })
    }

    /// Reads `tokenizer.json` and, when present, `tokenizer_config.json` (chat template,
    /// `bos_token`, `eos_token`, `add_bos_token`) and `generation_config.json` (`eos_token_id`).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let file = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&file).map_err(|e| ModelError::Tokenizer {
            context: file.display().to_string(),
            message: e.to_string(),
        })?;
        let config: serde_json::Value = match dir.join("tokenizer_config.json") {
            p if p.is_file() => read_json(&p)?,
            _ => serde_json::Value::Null,
        };
        let token_str = |v: &serde_json::Value| -> Option<String> {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.get("content")?.as_str().map(str::to_owned))
        };
        let bos_token = config.get("bos_token").and_then(token_str);
        let eos_token = config.get("eos_token").and_then(token_str);
        let mut eos_token_ids: Vec<u32> = eos_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .into_iter()
            .collect();
        if let Some(generation) = Some(dir.join("generation_config.json")).filter(|p| p.is_file()) {
            let generation: serde_json::Value = read_json(&generation)?;
            match generation.get("eos_token_id") {
                Some(serde_json::Value::Array(ids)) => {
                    eos_token_ids.extend(ids.iter().filter_map(|v| v.as_u64()).map(|v| v as u32));
                }
                Some(v) => eos_token_ids.extend(v.as_u64().map(|v| v as u32)),
                None => {}
            }
        }
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();
        Ok(Self {
            bos_token_id: bos_token.as_deref().and_then(|t| inner.token_to_id(t)),
            add_bos: config
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            eos_token_ids,
            chat_template: config
                .get("chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            bos_token,
            eos_token,
            inner,
        })
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) map to their ids.
    /// With `add_bos`, prepends BOS when the checkpoint asks for it (`add_bos_token`).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                context: "encode".to_owned(),
                message: e.to_string(),
            })?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos_token_id);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Text of `ids`, optionally without special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer {
                context: "decode".to_owned(),
                message: e.to_string(),
            })
    }

    /// Ids that end generation (EOS and end-of-turn tokens).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Beginning-of-sequence id, if any.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// BOS token text (for chat templates).
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// EOS token text (for chat templates).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The checkpoint's Jinja chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
