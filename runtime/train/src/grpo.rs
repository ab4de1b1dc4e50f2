//! GRPO, group relative policy optimisation (Shao et al. 2024; seed section 4): for each prompt,
//! `group` completions are sampled from the current policy (the adapter being trained, with
//! temperature and top-p), scored by a composite reward, and each completion's advantage is its
//! reward normalised within its group (no value model). The loss is PPO's clipped surrogate on
//! the per-token probability ratio against the policy that sampled, minus `β · KL` to the
//! reference policy (the base model, or `--reference-adapter`), with `β` adapted towards a KL
//! target. Monitors the essay asks for: within-group diversity, completion length drift, and
//! the training reward against a held-out metric (greedy answers to held-out prompts: their
//! reward and key-fact accuracy, before and after) — a reward that rises while the held-out
//! metric does not is reward hacking.
//!
//! **The reward** (weights in `--reward-weights`, each part in `[-1, 1]` or `[0, 1]`):
//! `citations` (+1 when the answer cites and every citation names a fact of the prompt, -1 when
//! one does not, 0 when it cites nothing), `groundedness` (mean MiniLM cosine of each cited
//! sentence to the fact it cites), `format` (1-3 sentences, at most 60 words, no bracketed
//! breadcrumb or fact list copied; 0 otherwise), `facts` (the prompt's `key_facts` all stated;
//! only for prompts that give them), `resolution` (where outcome data exists: the prompt's
//! `resolved_answers` and `escalated_answers`, e.g. the flywheel export's positive and negative
//! records of the question's cluster; the best cosine to a resolving answer minus the best to
//! an escalated one).
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use switchboard_model::chat::ChatMessage;
use switchboard_model::generate::{GenerationConfig, Sampling, generate_group, generate_with};
use switchboard_model::lora::LoraAdapter;
use switchboard_policy::grounding::{answer_sentences, strip_citations};
use switchboard_policy::parse_citations;
use switchboard_policy::text::has_key_facts;
use tch::{Kind, Tensor};

use crate::alignment::{bad, lines, prompt};
use crate::data::SplitMix64;
use crate::encode::Encoded;
use crate::error::{Result, TrainError};
use crate::train::{Hyperparameters, Trained, Trainer, TrainingLog};

/// Unit vectors of texts (MiniLM): the groundedness reward's similarity.
pub type Embed<'a> = dyn FnMut(&[String]) -> Result<Vec<Vec<f32>>> + 'a;

/// One GRPO prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoPrompt {
    /// The conversation to answer (the grounded prompt: facts as `[n] sentence` lines).
    pub messages: Vec<ChatMessage>,
    /// The numbered facts of the prompt (`facts`, else the `[n] ...` lines of the last user
    /// turn).
    pub facts: Vec<String>,
    /// Key facts a right answer states (optional).
    pub key_facts: Vec<Vec<String>>,
    /// Answers to this question that resolved it (outcome data: the flywheel export's positive
    /// records of its cluster), optional.
    pub resolved_answers: Vec<String>,
    /// Answers to it that were escalated or reopened (negative records), optional.
    pub escalated_answers: Vec<String>,
}

/// The `[n] text` lines of `text`, in order.
pub fn numbered_facts(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('[')?;
            let (n, fact) = rest.split_once(']')?;
            n.trim().parse::<usize>().ok()?;
            Some(fact.trim().to_owned())
        })
        .collect()
}

/// Reads GRPO prompts: `prompt` or `messages` (ending with a user turn), optional `facts` and
/// `key_facts`.
pub fn read_prompts(path: &Path) -> Result<Vec<GrpoPrompt>> {
    let mut out = Vec::new();
    for (n, v) in lines(path)? {
        let messages = prompt(path, n, &v)?;
        if messages.last().is_none_or(|m| m.role != "user") {
            return Err(bad(path, n, "the conversation must end with a user turn"));
        }
        let facts = match &v["facts"] {
            Value::Array(f) => f
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(path, n, "`facts` is a list of strings"))?,
            Value::Null => messages
                .last()
                .map(|m| numbered_facts(&m.content))
                .unwrap_or_default(),
            _ => return Err(bad(path, n, "`facts` is a list of strings")),
        };
        let key_facts = match &v["key_facts"] {
            Value::Array(f) => f
                .iter()
                .map(|x| match x {
                    Value::String(s) => Some(vec![s.clone()]),
                    Value::Array(a) => a.iter().map(|y| y.as_str().map(str::to_owned)).collect(),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(path, n, "`key_facts`: strings or lists of strings"))?,
            _ => Vec::new(),
        };
        let strings = |field: &str| -> Result<Vec<String>> {
            match &v[field] {
                Value::Null => Ok(Vec::new()),
                Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(path, n, format!("`{field}` is a list of strings"))),
                _ => Err(bad(path, n, format!("`{field}` is a list of strings"))),
            }
        };
        out.push(GrpoPrompt {
            messages,
            facts,
            key_facts,
            resolved_answers: strings("resolved_answers")?,
            escalated_answers: strings("escalated_answers")?,
        });
    }
    Ok(out)
}

/// The reward's weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RewardWeights {
    /// Citations valid against the prompt's facts.
    pub citations: f64,
    /// Cited sentences similar to their facts.
    pub groundedness: f64,
    /// One to three sentences, no copied fact list.
    pub format: f64,
    /// The key facts stated.
    pub facts: f64,
    /// Close to answers that resolved the question, far from escalated ones.
    pub resolution: f64,
}

impl Default for RewardWeights {
    fn default() -> Self {
        Self {
            citations: 1.0,
            groundedness: 1.0,
            format: 0.5,
            facts: 1.0,
            resolution: 1.0,
        }
    }
}

impl std::str::FromStr for RewardWeights {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut w = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=weight"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: {v:?} is not a number"))?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{part:?}: a weight >= 0"));
            }
            match k.trim() {
                "citations" => w.citations = v,
                "groundedness" => w.groundedness = v,
                "format" => w.format = v,
                "facts" => w.facts = v,
                "resolution" => w.resolution = v,
                other => {
                    return Err(format!(
                        "{other:?}: the parts are citations, groundedness, format, facts, resolution"
                    ));
                }
            }
        }
        Ok(w)
    }
}

/// One completion's reward, part by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reward {
    /// Citations part.
    pub citations: f64,
    /// Groundedness part.
    pub groundedness: f64,
    /// Format part.
    pub format: f64,
    /// Key facts part (0 for prompts without key facts).
    pub facts: f64,
    /// Resolution part: the best MiniLM cosine to an answer that resolved the question minus
    /// the best to one that was escalated (0 for prompts without outcome data).
    pub resolution: f64,
    /// Weighted sum.
    pub total: f64,
}

/// The reward of `answer` to `prompt`; `embed` gives unit vectors (MiniLM) for groundedness.
pub fn reward(
    answer: &str,
    prompt: &GrpoPrompt,
    weights: &RewardWeights,
    embed: &mut Embed<'_>,
) -> Result<Reward> {
    let cited = parse_citations(answer);
    let valid = |n: &usize| (1..=prompt.facts.len()).contains(n);
    let citations = if cited.is_empty() {
        0.0
    } else if cited.iter().all(valid) {
        1.0
    } else {
        -1.0
    };
    // Each cited sentence against the facts it cites.
    let mut pairs: Vec<(String, String)> = Vec::new();
    for s in answer_sentences(answer) {
        for n in parse_citations(&s).into_iter().filter(valid) {
            pairs.push((strip_citations(&s), prompt.facts[n - 1].clone()));
        }
    }
    let groundedness = if pairs.is_empty() {
        0.0
    } else {
        let texts: Vec<String> = pairs
            .iter()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect();
        let v = embed(&texts)?;
        let sims: Vec<f64> = v
            .chunks(2)
            .map(|p| {
                f64::from(
                    p[0].iter()
                        .zip(&p[1])
                        .map(|(x, y)| x * y)
                        .sum::<f32>()
                        .max(0.0),
                )
            })
            .collect();
        sims.iter().sum::<f64>() / sims.len() as f64
    };
    let words = answer.split_whitespace().count();
    let n_sentences = answer_sentences(answer).len();
    let copies_list = answer
        .lines()
        .filter(|l| l.trim_start().starts_with('['))
        .count()
        > 1
        || answer.contains(" > ");
    let format = if (1..=3).contains(&n_sentences) && (1..=60).contains(&words) && !copies_list {
        1.0
    } else {
        0.0
    };
    let facts = if prompt.key_facts.is_empty() {
        0.0
    } else {
        f64::from(u8::from(has_key_facts(answer, &prompt.key_facts)))
    };
    let resolution = if prompt.resolved_answers.is_empty() && prompt.escalated_answers.is_empty() {
        0.0
    } else {
        let mut texts = vec![strip_citations(answer)];
        texts.extend(prompt.resolved_answers.iter().map(|a| strip_citations(a)));
        texts.extend(prompt.escalated_answers.iter().map(|a| strip_citations(a)));
        let v = embed(&texts)?;
        let best = |range: std::ops::Range<usize>| {
            range
                .map(|i| f64::from(v[0].iter().zip(&v[i]).map(|(x, y)| x * y).sum::<f32>()))
                .fold(0.0f64, f64::max)
        };
        let r = prompt.resolved_answers.len();
        best(1..1 + r) - best(1 + r..texts.len())
    };
    let total = weights.citations * citations
        + weights.groundedness * groundedness
        + weights.format * format
        + weights.facts * facts
        + weights.resolution * resolution;
    Ok(Reward {
        citations,
        groundedness,
        format,
        facts,
        resolution,
        total,
    })
}

/// How a GRPO run samples and optimises.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpoSettings {
    /// Completions sampled per prompt (G).
    pub group: usize,
    /// Prompts per optimizer step.
    pub prompts_per_step: usize,
    /// Optimizer steps (each samples a fresh batch).
    pub steps: usize,
    /// Longest completion.
    pub max_new_tokens: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Sampling top-p.
    pub top_p: f64,
    /// PPO clip range ε.
    pub clip: f64,
    /// Initial KL coefficient β.
    pub kl_beta: f64,
    /// KL target per token; β is raised (x1.5) above 1.5x it and lowered below it / 1.5.
    /// 0: β stays fixed.
    pub kl_target: f64,
    /// Gradient steps on each sampled batch (1: on-policy).
    pub inner_steps: usize,
    /// The reward's weights.
    pub weights: RewardWeights,
}

impl Default for GrpoSettings {
    fn default() -> Self {
        Self {
            group: 4,
            prompts_per_step: 4,
            steps: 20,
            max_new_tokens: 48,
            temperature: 1.0,
            top_p: 0.95,
            clip: 0.2,
            kl_beta: 0.04,
            kl_target: 0.05,
            inner_steps: 1,
            weights: RewardWeights::default(),
        }
    }
}

impl GrpoSettings {
    /// Checks ranges, naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, m: &str| Err(TrainError::setting(name, m));
        if self.group < 2 {
            return bad(
                "--group",
                "at least 2: advantages are relative to the group",
            );
        }
        if self.prompts_per_step == 0 || self.steps == 0 || self.inner_steps == 0 {
            return bad(
                "--prompts-per-step/--steps/--inner-steps",
                "must be at least 1",
            );
        }
        if self.max_new_tokens == 0 {
            return bad("--max-new-tokens", "must be at least 1");
        }
        if !(self.temperature > 0.0 && self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("--temperature/--top-p", "temperature > 0, top-p in (0, 1]");
        }
        if !(self.clip > 0.0 && self.clip < 1.0) {
            return bad("--clip", "in (0, 1)");
        }
        if !(self.kl_beta >= 0.0 && self.kl_target >= 0.0) {
            return bad("--kl-beta/--kl-target", "must be >= 0");
        }
        Ok(())
    }
}

/// One GRPO step.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpoStep {
    /// 1-based.
    pub step: usize,
    /// Mean reward of the sampled completions.
    pub mean_reward: f64,
    /// Mean within-group standard deviation of the reward.
    pub reward_std: f64,
    /// Mean per-token KL to the reference (k3 estimator).
    pub kl: f64,
    /// β used.
    pub beta: f64,
    /// Share of tokens whose ratio was clipped (inner steps after the first).
    pub clip_fraction: f64,
    /// Mean share of distinct completions in a group.
    pub diversity: f64,
    /// Mean completion length (tokens).
    pub mean_length: f64,
    /// The surrogate loss.
    pub loss: f64,
    /// Seconds (sampling included).
    pub seconds: f64,
}

/// Greedy answers to the held-out prompts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldOutReward {
    /// Prompts.
    pub prompts: usize,
    /// Mean reward.
    pub mean_reward: f64,
    /// Mean of each part.
    pub parts: Reward,
    /// Share stating every key fact (prompts with key facts).
    pub key_fact_accuracy: Option<f64>,
    /// Mean answer length (tokens).
    pub mean_length: f64,
}

/// The GRPO part of a training log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpoLog {
    /// The settings.
    pub settings: GrpoSettings,
    /// Every step.
    pub steps: Vec<GrpoStep>,
    /// Held-out before training.
    pub held_out_before: Option<HeldOutReward>,
    /// Held-out after.
    pub held_out_after: Option<HeldOutReward>,
    /// Mean length of the last quarter of steps over the first quarter's (a drift far from 1
    /// is the length hacking the essay warns of).
    pub length_drift: f64,
    /// Mean reward of the last quarter of steps minus the first quarter's.
    pub train_reward_gain: f64,
    /// Held-out mean reward after minus before: with `train_reward_gain`, what to compare.
    pub held_out_reward_gain: Option<f64>,
}

fn quarter_mean(steps: &[GrpoStep], last: bool, f: impl Fn(&GrpoStep) -> f64) -> f64 {
    let k = steps.len().div_ceil(4).max(1);
    let part = if last {
        &steps[steps.len() - k.min(steps.len())..]
    } else {
        &steps[..k.min(steps.len())]
    };
    part.iter().map(&f).sum::<f64>() / part.len().max(1) as f64
}

impl Trainer {
    fn prompt_ids(&self, p: &GrpoPrompt) -> Result<Vec<u32>> {
        self.encoder().prompt_ids(&p.messages)
    }

    /// Greedy answers of `adapter` to `prompts`, scored.
    fn held_out_reward(
        &self,
        prompts: &[GrpoPrompt],
        adapter: Option<&LoraAdapter>,
        settings: &GrpoSettings,
        embed: &mut Embed<'_>,
    ) -> Result<Option<HeldOutReward>> {
        if prompts.is_empty() {
            return Ok(None);
        }
        let config = GenerationConfig {
            sampling: Sampling::Greedy,
            max_new_tokens: settings.max_new_tokens,
            stop_token_ids: Vec::new(),
        };
        let (mut sum, mut parts, mut keyed, mut right, mut len) =
            (0.0, Reward::default(), 0, 0, 0usize);
        for p in prompts {
            let ids = self.prompt_ids(p)?;
            let g = generate_with(
                self.model(),
                self.encoder().tokenizer(),
                &ids,
                &config,
                adapter,
            )?;
            let r = reward(&g.text, p, &settings.weights, embed)?;
            sum += r.total;
            parts.citations += r.citations;
            parts.groundedness += r.groundedness;
            parts.format += r.format;
            parts.facts += r.facts;
            parts.resolution += r.resolution;
            len += g.token_ids.len();
            if !p.key_facts.is_empty() {
                keyed += 1;
                right += usize::from(r.facts > 0.0);
            }
        }
        let n = prompts.len() as f64;
        parts.citations /= n;
        parts.groundedness /= n;
        parts.format /= n;
        parts.facts /= n;
        parts.resolution /= n;
        parts.total = sum / n;
        Ok(Some(HeldOutReward {
            prompts: prompts.len(),
            mean_reward: sum / n,
            parts,
            key_fact_accuracy: (keyed > 0).then(|| right as f64 / keyed as f64),
            mean_length: len as f64 / n,
        }))
    }

    /// GRPO on `train` prompts (module documentation), measured on `held_out` with greedy
    /// answers before and after. The policy starts from `start` (or fresh); the reference is
    /// `reference` (or the base model). `embed` gives unit vectors for the groundedness reward.
    #[allow(clippy::too_many_arguments)]
    pub fn grpo(
        &self,
        train: &[GrpoPrompt],
        held_out: &[GrpoPrompt],
        hp: &Hyperparameters,
        settings: &GrpoSettings,
        start: Option<(&LoraAdapter, String)>,
        reference: Option<&LoraAdapter>,
        embed: &mut Embed<'_>,
        on_step: &mut dyn FnMut(&GrpoStep),
    ) -> Result<Trained> {
        settings.validate()?;
        if train.is_empty() {
            return Err(TrainError::NotEnoughData("no training prompts".into()));
        }
        let started = Instant::now();
        let (adapter, vars) = self.new_adapter(hp, start.as_ref().map(|s| s.0))?;
        let held_out_before = self.held_out_reward(held_out, Some(&adapter), settings, embed)?;
        let mut optimizer = self.optimizer(&vars, hp)?;
        let eos = i64::from(self.encoder().tokenizer().eos_token_ids()[0]);
        let mut rng = SplitMix64(hp.seed);
        let mut order: Vec<usize> = (0..train.len()).collect();
        rng.shuffle(&mut order);
        let mut cursor = 0;
        let mut beta = settings.kl_beta;
        let total_updates = settings.steps * settings.inner_steps;
        let mut steps = Vec::with_capacity(settings.steps);
        for step in 1..=settings.steps {
            let t0 = Instant::now();
            // Sample: `group` completions of each prompt from the current policy.
            let mut seqs: Vec<Encoded> = Vec::new();
            let mut rewards: Vec<f64> = Vec::new();
            let mut diversity = 0.0;
            for _ in 0..settings.prompts_per_step {
                if cursor == order.len() {
                    rng.shuffle(&mut order);
                    cursor = 0;
                }
                let p = &train[order[cursor]];
                cursor += 1;
                let prompt = self.prompt_ids(p)?;
                let mut texts = Vec::with_capacity(settings.group);
                let config = GenerationConfig {
                    sampling: Sampling::TopP {
                        temperature: settings.temperature,
                        top_p: settings.top_p,
                        seed: 0,
                    },
                    max_new_tokens: settings.max_new_tokens,
                    stop_token_ids: Vec::new(),
                };
                let seeds: Vec<u64> = (0..settings.group).map(|_| rng.next_u64()).collect();
                let group = generate_group(
                    self.model(),
                    self.encoder().tokenizer(),
                    &prompt,
                    &config,
                    &seeds,
                    Some(&adapter),
                )?;
                for g in group {
                    let r = reward(&g.text, p, &settings.weights, embed)?;
                    rewards.push(r.total);
                    let mut ids: Vec<i64> = prompt.iter().map(|&i| i64::from(i)).collect();
                    let prompt_len = ids.len();
                    ids.extend(g.token_ids.iter().map(|&i| i64::from(i)));
                    if g.finish_reason == switchboard_model::generate::FinishReason::Stop {
                        // Learn to stop where it stopped.
                        ids.push(eos);
                    }
                    let end = ids.len();
                    seqs.push(Encoded {
                        ids,
                        prompt_len,
                        spans: if end > prompt_len {
                            vec![(prompt_len, end)]
                        } else {
                            Vec::new()
                        },
                    });
                    texts.push(g.text);
                }
                let mut distinct = texts.clone();
                distinct.sort();
                distinct.dedup();
                diversity += distinct.len() as f64 / settings.group as f64;
            }
            diversity /= settings.prompts_per_step as f64;
            // Group-normalised advantages.
            let mut advantages = vec![0.0f64; rewards.len()];
            let mut reward_std = 0.0;
            for (g, chunk) in rewards.chunks(settings.group).enumerate() {
                let mean = chunk.iter().sum::<f64>() / chunk.len() as f64;
                let std = (chunk.iter().map(|r| (r - mean).powi(2)).sum::<f64>()
                    / chunk.len() as f64)
                    .sqrt();
                reward_std += std;
                for (i, r) in chunk.iter().enumerate() {
                    advantages[g * settings.group + i] =
                        if std > 1e-6 { (r - mean) / std } else { 0.0 };
                }
            }
            reward_std /= (rewards.len() / settings.group).max(1) as f64;
            // Completions with no token carry nothing to learn; keep the rest.
            let keep: Vec<usize> = (0..seqs.len())
                .filter(|&i| !seqs[i].spans.is_empty())
                .collect();
            let mean_length = seqs
                .iter()
                .map(|s| s.ids.len() - s.prompt_len)
                .sum::<usize>() as f64
                / seqs.len() as f64;
            let (mut kl_mean, mut clip_fraction, mut loss_value) = (0.0, 0.0, 0.0);
            if !keep.is_empty() {
                let batch_seqs: Vec<&Encoded> = keep.iter().map(|&i| &seqs[i]).collect();
                let batch = self.batch(&batch_seqs)?;
                let device = self.model().device();
                let adv: Vec<f32> = keep.iter().map(|&i| advantages[i] as f32).collect();
                let adv = Tensor::from_slice(&adv)
                    .f_to_device(device)?
                    .f_index_select(0, &batch.rows)?;
                let (old, reference_logp) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
                    Ok((
                        self.log_probs(&batch, Some(&adapter))?.0,
                        self.log_probs(&batch, reference)?.0,
                    ))
                })?;
                let counts = Tensor::f_zeros([batch.n_rows], (Kind::Float, device))?.f_index_add(
                    0,
                    &batch.rows,
                    &old.f_ones_like()?,
                )?;
                for inner in 0..settings.inner_steps {
                    optimizer.zero_grad();
                    let (new, _) = self.log_probs(&batch, Some(&adapter))?;
                    let ratio = new.f_sub(&old)?.f_exp()?;
                    let clipped = ratio.f_clamp(1.0 - settings.clip, 1.0 + settings.clip)?;
                    let surrogate = ratio.f_mul(&adv)?.f_minimum(&clipped.f_mul(&adv)?)?;
                    // Clamped: one sampled token the reference finds far likelier must not
                    // overflow the estimator.
                    let d = reference_logp.f_sub(&new)?.f_clamp(-20.0, 20.0)?;
                    let kl = d.f_exp()?.f_sub(&d)?.f_sub_scalar(1.0)?;
                    let per_token = surrogate.f_sub(&kl.f_mul_scalar(beta)?)?;
                    let per_row = Tensor::f_zeros([batch.n_rows], (Kind::Float, device))?
                        .f_index_add(0, &batch.rows, &per_token)?
                        .f_div(&counts)?;
                    let loss = per_row.f_mean(Kind::Float)?.f_neg()?;
                    let value = loss.f_double_value(&[])?;
                    loss.f_backward()?;
                    self.update(
                        &mut optimizer,
                        &vars,
                        hp,
                        (step - 1) * settings.inner_steps + inner,
                        total_updates,
                        value,
                    )?;
                    if inner == 0 {
                        loss_value = value;
                        kl_mean = kl.f_mean(Kind::Double)?.f_double_value(&[])?;
                    } else {
                        clip_fraction = ratio
                            .f_sub_scalar(1.0)?
                            .f_abs()?
                            .f_gt(settings.clip)?
                            .f_to_kind(Kind::Double)?
                            .f_mean(Kind::Double)?
                            .f_double_value(&[])?;
                    }
                }
            }
            let used_beta = beta;
            if settings.kl_target > 0.0 {
                if kl_mean > 1.5 * settings.kl_target {
                    beta = (beta * 1.5).min(1.0);
                } else if kl_mean < settings.kl_target / 1.5 {
                    beta = (beta / 1.5).max(1e-4);
                }
            }
            let log = GrpoStep {
                step,
                mean_reward: rewards.iter().sum::<f64>() / rewards.len() as f64,
                reward_std,
                kl: kl_mean,
                beta: used_beta,
                clip_fraction,
                diversity,
                mean_length,
                loss: loss_value,
                seconds: t0.elapsed().as_secs_f64(),
            };
            on_step(&log);
            steps.push(log);
        }
        let held_out_after = self.held_out_reward(held_out, Some(&adapter), settings, embed)?;
        let first_len = quarter_mean(&steps, false, |s| s.mean_length);
        let grpo = GrpoLog {
            settings: settings.clone(),
            length_drift: quarter_mean(&steps, true, |s| s.mean_length) / first_len.max(1e-9),
            train_reward_gain: quarter_mean(&steps, true, |s| s.mean_reward)
                - quarter_mean(&steps, false, |s| s.mean_reward),
            held_out_reward_gain: match (&held_out_before, &held_out_after) {
                (Some(b), Some(a)) => Some(a.mean_reward - b.mean_reward),
                _ => None,
            },
            held_out_before,
            held_out_after,
            steps,
        };
        let seconds = started.elapsed().as_secs_f64();
        let n_steps = grpo.steps.len();
        Ok(Trained {
            adapter,
            vars,
            log: TrainingLog {
                method: "grpo".to_owned(),
                train_examples: train.len(),
                held_out_examples: held_out.len(),
                dropped_too_long: 0,
                train_answer_tokens: 0,
                initial_held_out: None,
                epochs: Vec::new(),
                steps: n_steps,
                seconds_per_step: seconds / n_steps.max(1) as f64,
                seconds,
                started_from: start.map(|s| s.1),
                sets: Vec::new(),
                anchor_regression: None,
                distance_from_start: None,
                pair_kinds: Vec::new(),
                grpo: Some(grpo),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(facts: &[&str], key: &[&str]) -> GrpoPrompt {
        GrpoPrompt {
            messages: vec![ChatMessage::user("q")],
            facts: facts.iter().map(|s| (*s).to_owned()).collect(),
            key_facts: key.iter().map(|k| vec![(*k).to_owned()]).collect(),
            resolved_answers: Vec::new(),
            escalated_answers: Vec::new(),
        }
    }

    /// Embeds by word overlap: enough to order similar and dissimilar sentences.
    fn embed(texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0.0f32; 64];
                for w in t.to_lowercase().split_whitespace() {
                    let h = w
                        .bytes()
                        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
                    v[(h % 64) as usize] += 1.0;
                }
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                v.iter().map(|x| x / n).collect()
            })
            .collect())
    }

    #[test]
    fn the_reward_prefers_a_short_cited_grounded_answer() {
        let p = prompt(
            &[
                "Refunds are paid within 14 days of the request.",
                "Invoices are in Settings.",
            ],
            &["14 days"],
        );
        let w = RewardWeights::default();
        let mut e = embed;
        let good = reward("Refunds are paid within 14 days [1].", &p, &w, &mut e).unwrap();
        assert_eq!((good.citations, good.format, good.facts), (1.0, 1.0, 1.0));
        assert!(good.groundedness > 0.5, "{good:?}");
        let invalid = reward("Refunds take 14 days [3].", &p, &w, &mut e).unwrap();
        assert_eq!(invalid.citations, -1.0);
        let uncited = reward("Refunds take 14 days.", &p, &w, &mut e).unwrap();
        assert_eq!((uncited.citations, uncited.groundedness), (0.0, 0.0));
        let copied = reward(
            "[1] Refunds are paid within 14 days.\n[2] Invoices are in Settings.",
            &p,
            &w,
            &mut e,
        )
        .unwrap();
        assert_eq!(copied.format, 0.0);
        assert!(good.total > uncited.total && uncited.total > invalid.total);
        assert!(good.total > copied.total);
        assert_eq!(good.resolution, 0.0, "no outcome data, no resolution part");
        // Outcome data: an answer like the one that resolved the question beats one like the
        // escalated answer.
        let with_outcomes = GrpoPrompt {
            resolved_answers: vec!["Refunds are paid within 14 days of the request [1].".into()],
            escalated_answers: vec!["Please contact our billing team by phone.".into()],
            ..p.clone()
        };
        let like_resolved = reward(
            "Refunds are paid within 14 days [1].",
            &with_outcomes,
            &w,
            &mut e,
        )
        .unwrap();
        let like_escalated = reward(
            "Please contact our billing team [1].",
            &with_outcomes,
            &w,
            &mut e,
        )
        .unwrap();
        assert!(like_resolved.resolution > 0.0, "{like_resolved:?}");
        assert!(like_escalated.resolution < 0.0, "{like_escalated:?}");
    }

    #[test]
    fn weights_and_prompts_parse_and_bad_input_is_named() {
        let w: RewardWeights = "citations=2, format=0".parse().unwrap();
        assert_eq!((w.citations, w.format, w.facts), (2.0, 0.0, 1.0));
        assert!(
            "style=1"
                .parse::<RewardWeights>()
                .unwrap_err()
                .contains("\"style\"")
        );
        assert!(
            "facts=-1"
                .parse::<RewardWeights>()
                .unwrap_err()
                .contains(">= 0")
        );
        assert_eq!(
            numbered_facts("Facts:\n[1] A is B.\n[2] C.\nQuestion: x"),
            ["A is B.", "C."]
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.jsonl");
        std::fs::write(
            &f,
            "{\"prompt\": \"[1] A.\\nQ?\", \"key_facts\": [\"A\"]}\n",
        )
        .unwrap();
        let p = read_prompts(&f).unwrap();
        assert_eq!((p[0].facts.len(), p[0].key_facts.len()), (1, 1));
        std::fs::write(
            &f,
            "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}\n",
        )
        .unwrap();
        assert!(
            read_prompts(&f)
                .unwrap_err()
                .to_string()
                .contains("user turn")
        );
        let s = GrpoSettings {
            group: 1,
            ..GrpoSettings::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("--group"));
    }
}
