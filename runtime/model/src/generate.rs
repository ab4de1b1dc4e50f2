//! Text generation with a [`LlamaModel`]: prompt prefill then token-by-token decoding through the KV
//! cache; greedy or temperature/top-p sampling (seeded, so a request is reproducible); stop tokens;
//! a cap on new tokens; chat prompts rendered with the checkpoint's template; an optional LoRA
//! adapter per request.
use std::path::Path;
use std::rc::Rc;

use tch::{Device, Kind, Tensor};

use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::{ModelError, Result};
use crate::llama::{LlamaModel, LoadOptions};
use crate::lora::{LoraAdapter, LoraRegistry};
use crate::tokenizer::LlmTokenizer;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Softmax of `logits / temperature`, restricted to the smallest set of most likely tokens whose
    /// probability reaches `top_p`, sampled with a generator seeded by `seed`.
    TopP {
        /// > 0.
        temperature: f64,
        /// In (0, 1].
        top_p: f64,
        /// Seed of the request's random stream.
        seed: u64,
    },
}

/// Limits and stopping rules of one request.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Extra stop tokens, in addition to the tokenizer's end-of-sequence / end-of-turn ids.
    pub stop_token_ids: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            sampling: Sampling::Greedy,
            max_new_tokens: 256,
            stop_token_ids: Vec::new(),
        }
    }
}

impl GenerationConfig {
    fn validate(&self) -> Result<()> {
        if let Sampling::TopP {
            temperature, top_p, ..
        } = self.sampling
        {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return Err(ModelError::InvalidRequest(format!(
                    "temperature {temperature} must be > 0"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(ModelError::InvalidRequest(format!(
                    "top_p {top_p} must be in (0, 1]"
                )));
            }
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced (it is not part of the output).
    Stop,
    /// `max_new_tokens` or the context length was reached.
    Length,
    /// The caller stopped it (closed its stream, e.g. on a stop sequence of its own).
    Cancelled,
}

/// The result of one request.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, without the stop token.
    pub token_ids: Vec<u32>,
    /// Decoded text of `token_ids`, special tokens skipped.
    pub text: String,
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
    /// Why generation ended.
    pub finish_reason: FinishReason,
}

/// A causal LM with its tokenizer, chat template and resident LoRA adapters.
///
/// Owns tch tensors (`Send`, not `Sync`): it lives on one thread, typically a model worker.
#[derive(Debug)]
pub struct Generator {
    model: LlamaModel,
    tokenizer: LlmTokenizer,
    template: ChatTemplate,
    adapters: LoraRegistry,
}

impl Generator {
    /// Loads model and tokenizer from a GGUF file or a Hugging Face directory (f32 dense weights).
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::load_with(path, LoadOptions::new(device))
    }

    /// [`Self::load`] with explicit model options (e.g. int4 weights for fast decoding).
    pub fn load_with(path: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let model = LlamaModel::load_with(path, options)?;
        let tokenizer = LlmTokenizer::load(path)?;
        Self::new(model, tokenizer)
    }

    /// Assembles a generator; the chat template is the tokenizer's, or ChatML.
    pub fn new(model: LlamaModel, tokenizer: LlmTokenizer) -> Result<Self> {
        let template = ChatTemplate::new(
            tokenizer.chat_template(),
            tokenizer.bos_token(),
            tokenizer.eos_token(),
        )?;
        Ok(Self {
            model,
            tokenizer,
            template,
            adapters: LoraRegistry::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &LlmTokenizer {
        &self.tokenizer
    }

    /// The resident adapters.
    pub fn adapters(&self) -> &LoraRegistry {
        &self.adapters
    }

    /// Loads (or replaces) the adapter `id` from a PEFT directory; in-flight requests keep theirs.
    pub fn load_adapter(&mut self, id: &str, dir: impl AsRef<Path>) -> Result<()> {
        let adapter = LoraAdapter::load(id, dir, &self.model)?;
        self.adapters.insert(adapter);
        Ok(())
    }

    /// Makes an adapter loaded elsewhere (e.g. on another thread) resident.
    pub fn insert_adapter(&mut self, adapter: LoraAdapter) {
        self.adapters.insert(adapter);
    }

    /// Unloads the adapter `id`; returns whether it was resident.
    pub fn unload_adapter(&mut self, id: &str) -> bool {
        self.adapters.remove(id).is_some()
    }

    /// The resident adapter `id`, or an error naming it.
    pub fn adapter(&self, id: &str) -> Result<Rc<LoraAdapter>> {
        self.adapters.get(id).ok_or_else(|| ModelError::Adapter {
            adapter: id.to_owned(),
            reason: format!("not loaded (resident: {:?})", self.adapters.ids()),
        })
    }

    /// Renders a conversation with the chat template, ready for the assistant's turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.template.render(messages, true)
    }

    /// Answers a conversation, optionally through the adapter `adapter_id`.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        config: &GenerationConfig,
        adapter_id: Option<&str>,
    ) -> Result<Generation> {
        let ids = self.chat_prompt_ids(messages)?;
        let adapter = adapter_id.map(|id| self.adapter(id)).transpose()?;
        self.generate_ids(&ids, config, adapter.as_deref())
    }

    /// Mean log-probability per token of `reply` as the assistant's answer to `messages` (through
    /// the adapter `adapter_id`): the model's likelihood of a given text, e.g. of a question
    /// given a passage (query-likelihood relevance). An empty reply scores 0.
    pub fn reply_logprob(
        &self,
        messages: &[ChatMessage],
        reply: &str,
        adapter_id: Option<&str>,
    ) -> Result<f64> {
        let prompt = self.chat_prompt_ids(messages)?;
        let continuation = self.tokenizer.encode(reply, false)?;
        if continuation.is_empty() || prompt.is_empty() {
            return Ok(0.0);
        }
        let adapter = adapter_id.map(|id| self.adapter(id)).transpose()?;
        let ids: Vec<i64> = prompt
            .iter()
            .chain(&continuation)
            .map(|&t| i64::from(t))
            .collect();
        let mut cache = self.model.new_cache();
        let logits = self.model.forward(
            &Tensor::from_slice(&ids).unsqueeze(0),
            &mut cache,
            adapter.as_deref(),
        )?;
        let n = continuation.len() as i64;
        let targets: Vec<i64> = continuation.iter().map(|&t| i64::from(t)).collect();
        let total = tch::no_grad(|| -> std::result::Result<f64, tch::TchError> {
            // Position i predicts token i + 1: the reply's tokens are predicted from the last
            // prompt position on.
            let predicted = logits
                .f_narrow(1, prompt.len() as i64 - 1, n)?
                .f_log_softmax(-1, Kind::Float)?;
            let index = Tensor::from_slice(&targets).view([1, n, 1]);
            predicted
                .f_gather(2, &index, false)?
                .f_sum(Kind::Double)?
                .f_double_value(&[])
        })?;
        Ok(total / n as f64)
    }

    /// The prompt token ids of a conversation, ready for the assistant's turn.
    pub fn chat_prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let prompt = self.render_chat(messages)?;
        // The template writes BOS itself where the model wants it.
        self.tokenizer.encode(&prompt, false)
    }

    /// Checks a request and gives its stop tokens and token budget (what fits the context).
    pub fn plan(&self, prompt_ids: &[u32], config: &GenerationConfig) -> Result<Plan> {
        plan(&self.model, &self.tokenizer, prompt_ids, config)
    }

    /// Continues raw text (no chat template).
    pub fn complete(
        &self,
        text: &str,
        config: &GenerationConfig,
        adapter_id: Option<&str>,
    ) -> Result<Generation> {
        let ids = self.tokenizer.encode(text, true)?;
        let adapter = adapter_id.map(|id| self.adapter(id)).transpose()?;
        self.generate_ids(&ids, config, adapter.as_deref())
    }

    /// Generates after `prompt_ids`.
    pub fn generate_ids(
        &self,
        prompt_ids: &[u32],
        config: &GenerationConfig,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Generation> {
        generate_with(&self.model, &self.tokenizer, prompt_ids, config, adapter)
    }
}

/// [`Generator::plan`] for any model and tokenizer.
pub fn plan(
    model: &LlamaModel,
    tokenizer: &LlmTokenizer,
    prompt_ids: &[u32],
    config: &GenerationConfig,
) -> Result<Plan> {
    config.validate()?;
    if prompt_ids.is_empty() {
        return Err(ModelError::InvalidRequest("empty prompt".to_owned()));
    }
    let context = model.config().max_position_embeddings as usize;
    if prompt_ids.len() >= context {
        return Err(ModelError::InvalidRequest(format!(
            "prompt of {} tokens leaves no room in the context of {context}",
            prompt_ids.len()
        )));
    }
    Ok(Plan {
        stops: tokenizer
            .eos_token_ids()
            .iter()
            .chain(&config.stop_token_ids)
            .copied()
            .collect(),
        budget: config.max_new_tokens.min(context - prompt_ids.len()),
    })
}

/// Generates after `prompt_ids` with `model` (and `adapter`): what [`Generator::generate_ids`]
/// does, for a model the caller owns (the trainer samples its policy this way).
pub fn generate_with(
    model: &LlamaModel,
    tokenizer: &LlmTokenizer,
    prompt_ids: &[u32],
    config: &GenerationConfig,
    adapter: Option<&LoraAdapter>,
) -> Result<Generation> {
    let Plan { stops, budget } = plan(model, tokenizer, prompt_ids, config)?;
    let mut sampler = Sampler::new(config.sampling);
    let mut cache = model.new_cache();
    let input: Vec<i64> = prompt_ids.iter().map(|&i| i64::from(i)).collect();
    let mut logits = model.forward_last(
        &Tensor::from_slice(&input).unsqueeze(0),
        &mut cache,
        adapter,
    )?;
    let mut out = Vec::with_capacity(budget);
    let mut finish_reason = FinishReason::Length;
    while out.len() < budget {
        let next = sampler.next(&logits.get(0))?;
        if stops.contains(&next) {
            finish_reason = FinishReason::Stop;
            break;
        }
        out.push(next);
        if out.len() == budget {
            break;
        }
        let step = Tensor::from_slice(&[i64::from(next)]).unsqueeze(0);
        logits = model.forward_last(&step, &mut cache, adapter)?;
    }
    Ok(Generation {
        text: tokenizer.decode(&out, true)?,
        token_ids: out,
        prompt_tokens: prompt_ids.len(),
        finish_reason,
    })
}

/// `seeds.len()` samples of the same prompt, decoded together as one batch (one forward pass
/// per token for the whole group: what GRPO's groups cost): row `i` samples with
/// `config.sampling`'s temperature and top-p and seed `seeds[i]` (greedy stays greedy). A row
/// that has stopped is fed its stop token until the others finish; its output ends where it
/// stopped.
pub fn generate_group(
    model: &LlamaModel,
    tokenizer: &LlmTokenizer,
    prompt_ids: &[u32],
    config: &GenerationConfig,
    seeds: &[u64],
    adapter: Option<&LoraAdapter>,
) -> Result<Vec<Generation>> {
    let Plan { stops, budget } = plan(model, tokenizer, prompt_ids, config)?;
    let rows = seeds.len();
    if rows == 0 {
        return Ok(Vec::new());
    }
    let mut samplers: Vec<Sampler> = seeds
        .iter()
        .map(|&seed| {
            Sampler::new(match config.sampling {
                Sampling::TopP {
                    temperature, top_p, ..
                } => Sampling::TopP {
                    temperature,
                    top_p,
                    seed,
                },
                Sampling::Greedy => Sampling::Greedy,
            })
        })
        .collect();
    let mut cache = model.new_cache();
    let input: Vec<i64> = prompt_ids.iter().map(|&i| i64::from(i)).collect();
    let prompt = Tensor::from_slice(&input)
        .unsqueeze(0)
        .f_expand([rows as i64, input.len() as i64], false)?
        .f_contiguous()?;
    let mut logits = model.forward_last(&prompt, &mut cache, adapter)?;
    let mut out: Vec<Vec<u32>> = vec![Vec::with_capacity(budget); rows];
    let mut done: Vec<Option<FinishReason>> = vec![None; rows];
    let pad = stops.first().copied().unwrap_or(0);
    for _ in 0..budget {
        let mut next = Vec::with_capacity(rows);
        for (i, sampler) in samplers.iter_mut().enumerate() {
            if done[i].is_some() {
                next.push(i64::from(pad));
                continue;
            }
            let t = sampler.next(&logits.get(i as i64))?;
            if stops.contains(&t) {
                done[i] = Some(FinishReason::Stop);
            } else {
                out[i].push(t);
                if out[i].len() == budget {
                    done[i] = Some(FinishReason::Length);
                }
            }
            next.push(i64::from(t));
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        let step = Tensor::from_slice(&next).unsqueeze(1);
        logits = model.forward_last(&step, &mut cache, adapter)?;
    }
    out.into_iter()
        .zip(done)
        .map(|(ids, reason)| {
            Ok(Generation {
                text: tokenizer.decode(&ids, true)?,
                token_ids: ids,
                prompt_tokens: prompt_ids.len(),
                finish_reason: reason.unwrap_or(FinishReason::Length),
            })
        })
        .collect()
}

/// Stop tokens and token budget of a request ([`Generator::plan`]).
#[derive(Debug, Clone)]
pub struct Plan {
    /// End-of-sequence / end-of-turn ids and the request's extra stop ids.
    pub stops: Vec<u32>,
    /// Most tokens it may generate (its limit, or what is left of the context).
    pub budget: usize,
}

/// Chooses tokens from logits.
#[derive(Debug)]
pub(crate) struct Sampler {
    sampling: Sampling,
    rng: SplitMix64,
}

impl Sampler {
    pub(crate) fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::TopP { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self {
            sampling,
            rng: SplitMix64(seed),
        }
    }

    pub(crate) fn is_greedy(&self) -> bool {
        self.sampling == Sampling::Greedy
    }

    pub(crate) fn next(&mut self, logits: &Tensor) -> Result<u32> {
        match self.sampling {
            Sampling::Greedy => Ok(logits.f_argmax(-1, false)?.int64_value(&[]) as u32),
            Sampling::TopP {
                temperature, top_p, ..
            } => {
                let logits: Vec<f32> = logits
                    .f_to_kind(Kind::Float)?
                    .f_to_device(Device::Cpu)?
                    .try_into()?;
                Ok(sample_top_p(
                    &logits,
                    temperature,
                    top_p,
                    self.rng.next_f64(),
                ))
            }
        }
    }
}

/// Nucleus sampling over `logits / temperature` with a uniform draw `u` in [0, 1).
fn sample_top_p(logits: &[f32], temperature: f64, top_p: f64, u: f64) -> u32 {
    let scaled: Vec<f64> = logits.iter().map(|&l| f64::from(l) / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut probs: Vec<(u32, f64)> = scaled
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (l - max).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    // Ties keep id order so the draw is deterministic.
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (n, (_, p)) in probs.iter().enumerate() {
        kept += p / total;
        if kept >= top_p {
            cut = n + 1;
            break;
        }
    }
    let nucleus = &probs[..cut];
    let mass: f64 = nucleus.iter().map(|p| p.1).sum();
    let mut target = u * mass;
    for &(id, p) in nucleus {
        if target < p {
            return id;
        }
        target -= p;
    }
    nucleus.last().map_or(0, |p| p.0)
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and identical on every platform, which is all
/// per-request reproducible sampling needs.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probs ~ [0.64, 0.24, 0.09, 0.03]
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        // top_p 0.5 keeps only the first token, whatever the draw.
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample_top_p(&logits, 1.0, 0.5, u), 0);
        }
        // top_p 0.8 keeps two: draws split at 0.64 / (0.64 + 0.24).
        assert_eq!(sample_top_p(&logits, 1.0, 0.8, 0.70), 0);
        assert_eq!(sample_top_p(&logits, 1.0, 0.8, 0.75), 1);
        assert_eq!(sample_top_p(&logits, 1.0, 0.8, 0.999), 1);
        // top_p 1 can reach the tail; a high temperature flattens it.
        assert_eq!(sample_top_p(&logits, 1.0, 1.0, 0.999), 3);
        assert_eq!(sample_top_p(&logits, 100.0, 1.0, 0.6), 2);
    }

    #[test]
    fn rng_is_reproducible_and_uniform() {
        let draw = |seed| {
            let mut r = SplitMix64(seed);
            (0..1000).map(|_| r.next_f64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let mean = draw(7).iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert!(draw(7).iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn invalid_sampling_is_rejected() {
        let bad = GenerationConfig {
            sampling: Sampling::TopP {
                temperature: 0.0,
                top_p: 0.9,
                seed: 1,
            },
            ..GenerationConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = GenerationConfig {
            sampling: Sampling::TopP {
                temperature: 0.7,
                top_p: 1.5,
                seed: 1,
            },
            ..GenerationConfig::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
    }
}
