//! `synth-answers`: SFT data for the grounded-answer adapter, made from the knowledge base
//! itself (seed sections 2 and 5: synthetic questions, targets from the evidence, negatives,
//! held out by document).
//!
//! For every evidence sentence of every section (the sentences the runtime's evidence step
//! would consider, `switchboard_policy::grounding::evidence_sentences`), the small model writes
//! customer questions the sentence answers (one greedy, `--samples` sampled, with two worked
//! examples from an invented product). Each question then goes through the runtime's own
//! evidence step over the served index — retrieval, sentence scoring, the facts a prompt would
//! get — and becomes:
//!
//! - a **positive** example when the evidence step ranks the source sentence among the facts
//!   (round-trip consistency: a question that does not lead back to its sentence is more often
//!   about something else than hard): the grounded prompt (`answer::grounded_messages`, exactly
//!   what the runtime renders), target = that sentence with its citation `[k]`
//!   (`--keep-unfound` keeps the others too, the sentence put in place of the weakest fact);
//! - for a `--negative-share` of questions, a **negative**: the facts with every sentence of the
//!   source document removed, target = `I don't know.` (the runtime then refuses).
//!
//! Documents are split by a hash of their id: `--held-out-share` of them only in
//! `heldout.jsonl`, so held-out loss measures questions about documents the adapter never saw.
//! Every generated question is written to `questions.jsonl` with the reason it was kept or not.
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use switchboard_model::chat::ChatMessage;
use switchboard_model::{GenerationConfig, Sampling};
use switchboard_policy::grounding::{Evidence, evidence_sentences, select_evidence};
use switchboard_policy::hash::unit_interval;

use crate::eval_answers::{AnswerArgs, harness};
use switchboard_serving::answer::{gather_evidence, grounded_messages, prompt_passages};

/// The instruction; `{fact}` is replaced by the sentence.
const PROMPT: &str = "Fact: {fact}\n\nWrite a question a customer might send to support that this fact answers. Reply with the question only.";

/// Worked examples (an invented product unrelated to any knowledge base here).
const EXAMPLES: [(&str, &str); 2] = [
    (
        "Card refunds appear on your statement within 5 to 10 business days.",
        "i got a refund approved, when will i actually see the money on my card?",
    ),
    (
        "Two-factor authentication can be turned on under Settings > Security.",
        "How do I enable 2FA for my account?",
    ),
];

/// An evidence sentence with the document it comes from.
type Sourced = (Evidence, String);

/// The target of a negative example: what the runtime treats as the model declining.
pub const DECLINE: &str = "I don't know.";

/// Arguments of `switchboard-runtime synth-answers`.
#[derive(Debug, Clone, clap::Args)]
pub struct SynthAnswersArgs {
    /// Manifests holding the KnowledgeBase and a Router that references it (the Router's
    /// grounding settings decide how many facts a prompt has).
    #[arg(long)]
    pub manifests: PathBuf,
    /// Which KnowledgeBase when the manifests hold several.
    #[arg(long)]
    pub knowledge_base: Option<String>,
    /// Output folder: `train.jsonl`, `heldout.jsonl` (SFT rows for `switchboard-train sft`),
    /// `questions.jsonl` (every generated question and what became of it), `stats.json`.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Sampled questions per sentence besides the greedy one.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Share of kept questions that also give a negative example.
    #[arg(long, default_value_t = 0.3)]
    pub negative_share: f64,
    /// Share of documents held out (by a hash of the document id).
    #[arg(long, default_value_t = 0.2)]
    pub held_out_share: f64,
    /// Seed of the sampled questions and of the fact placement.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Only the first N sentences (a quick look).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep questions whose source sentence the evidence step does not rank among the facts
    /// (it is then put in place of the weakest fact). Off by default: such questions are mostly
    /// about something else (the 135M model drifts), and training on them teaches the adapter
    /// to cite facts that do not answer.
    #[arg(long)]
    pub keep_unfound: bool,
    /// Sentences shorter than this many words get no question.
    #[arg(long, default_value_t = 6)]
    pub min_words: usize,
    /// Index generations of the KnowledgeBase (unchanged sources are reused).
    #[arg(long, default_value = ".cache/switchboard/eval-index")]
    pub index_data: PathBuf,
    /// Folder searched for the model files the Router names.
    #[arg(long, default_value = ".cache/models")]
    pub models: PathBuf,
}

/// One generated question and its fate.
#[derive(Debug, Serialize)]
struct Question {
    document: String,
    section: String,
    sentence: String,
    generated: String,
    question: Option<String>,
    outcome: &'static str,
    held_out: bool,
    /// 1-based position of the source sentence among the facts (positives).
    fact: Option<usize>,
    /// The evidence step ranked the source among the facts on its own.
    found_by_evidence: bool,
}

/// An SFT row.
#[derive(Debug, Serialize)]
struct Row {
    messages: Vec<Message>,
    completion: String,
}

#[derive(Debug, Serialize)]
struct Message {
    role: String,
    content: String,
}

fn row(messages: Vec<ChatMessage>, completion: String) -> Row {
    Row {
        messages: messages
            .into_iter()
            .map(|m| Message {
                role: m.role,
                content: m.content,
            })
            .collect(),
        completion,
    }
}

/// The question in a generation: its first line up to the first `?`, 4..=30 words, not a copy
/// of the fact (most of the fact's words would make it a lookup, not a question).
fn clean(generated: &str, fact: &str) -> Option<String> {
    let question = crate::synth_queries::clean_question(generated)?;
    let words = question.split_whitespace().count();
    if !(4..=30).contains(&words) {
        return None;
    }
    let fact_terms: HashSet<String> = switchboard_policy::grounding::terms(fact)
        .into_iter()
        .collect();
    let q_terms = switchboard_policy::grounding::terms(&question);
    let copied = q_terms.iter().filter(|t| fact_terms.contains(*t)).count();
    (q_terms.is_empty() || (copied as f64) < 0.9 * fact_terms.len() as f64).then_some(question)
}

/// `sentence [k].`
fn cited(sentence: &str, k: usize) -> String {
    let s = sentence.trim().trim_end_matches('…').trim_end();
    match s.strip_suffix(['.', '!', ';', ':']) {
        Some(body) => format!("{body} [{k}]."),
        None => format!("{s} [{k}]."),
    }
}

/// `switchboard-runtime synth-answers`.
pub fn run(args: &SynthAnswersArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.held_out_share) || !(0.0..=1.0).contains(&args.negative_share) {
        bail!("--held-out-share must be in [0, 1) and --negative-share in [0, 1]");
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: &SynthAnswersArgs) -> Result<()> {
    let eval_args = AnswerArgs {
        index_data: args.index_data.clone(),
        models: args.models.clone(),
        ..AnswerArgs::default()
    };
    let (h, _) = harness(
        &args.manifests,
        args.knowledge_base.as_deref(),
        None,
        &eval_args,
    )
    .await?;
    let engine = &h.engine;
    let active = engine.active().context("no config applied")?;
    let generation = Arc::clone(active.retriever.generation());
    let facts_per_prompt = usize::try_from(
        active
            .config
            .router_policy
            .grounding
            .evidence_sentences
            .max(1),
    )
    .unwrap_or(3);

    // The sentences, section by section, with their document.
    let mut breadcrumbs: HashMap<&str, &switchboard_index::Chunk> = HashMap::new();
    for c in generation.chunks() {
        breadcrumbs.entry(c.section_id.as_str()).or_insert(c);
    }
    let mut sentences: Vec<(String, String, String)> = Vec::new();
    for section in generation.sections() {
        let Some(chunk) = breadcrumbs.get(section.section_id.as_str()) else {
            continue;
        };
        for s in evidence_sentences(&section.text, &chunk.section_path) {
            if s.split_whitespace().count() >= args.min_words {
                sentences.push((section.doc_id.clone(), section.section_id.clone(), s));
            }
        }
    }
    if let Some(n) = args.limit {
        sentences.truncate(n);
    }
    if sentences.is_empty() {
        bail!("the knowledge base has no evidence sentences");
    }

    // Questions from the small model (the worker batches them).
    let mut examples = Vec::new();
    for (fact, question) in EXAMPLES {
        examples.push(ChatMessage::user(PROMPT.replace("{fact}", fact)));
        examples.push(ChatMessage::new("assistant", question));
    }
    let started = Instant::now();
    let per_sentence = 1 + args.samples;
    let mut requests = Vec::new();
    for (n, (_, _, sentence)) in sentences.iter().enumerate() {
        let mut messages = examples.clone();
        messages.push(ChatMessage::user(PROMPT.replace("{fact}", sentence)));
        for s in 0..per_sentence {
            let sampling = if s == 0 {
                Sampling::Greedy
            } else {
                Sampling::TopP {
                    temperature: 0.8,
                    top_p: 0.9,
                    seed: args.seed.wrapping_add((n * per_sentence + s) as u64),
                }
            };
            let worker = active.small.clone();
            let messages = messages.clone();
            requests.push(async move {
                worker
                    .chat(
                        messages,
                        GenerationConfig {
                            sampling,
                            max_new_tokens: 48,
                            stop_token_ids: Vec::new(),
                        },
                        None,
                    )
                    .await
            });
        }
    }
    tracing::info!(
        sentences = sentences.len(),
        generations = requests.len(),
        "generating questions"
    );
    // As many in flight as the worker decodes together; more would be shed at its queue limit.
    let generated: Vec<_> = {
        use futures::StreamExt;
        futures::stream::iter(requests).buffered(8).collect().await
    };
    let generation_seconds = started.elapsed().as_secs_f64();

    let mut questions = Vec::new();
    let mut train = Vec::new();
    let mut held_out = Vec::new();
    let mut seen = HashSet::new();
    for (i, g) in generated.into_iter().enumerate() {
        let (document, section, sentence) = &sentences[i / per_sentence];
        let text = match g {
            Ok(g) => g.text,
            Err(e) => {
                tracing::warn!(error = %e, "question generation failed");
                continue;
            }
        };
        let is_held_out = unit_interval(&["synth-answers", document]) < args.held_out_share;
        let mut q = Question {
            document: document.clone(),
            section: section.clone(),
            sentence: sentence.clone(),
            generated: text.clone(),
            question: None,
            outcome: "malformed",
            held_out: is_held_out,
            fact: None,
            found_by_evidence: false,
        };
        let Some(question) = clean(&text, sentence) else {
            questions.push(q);
            continue;
        };
        q.question = Some(question.clone());
        if !seen.insert(question.to_lowercase()) {
            q.outcome = "duplicate";
            questions.push(q);
            continue;
        }
        let passages = prompt_passages(&active, &question)
            .await
            .map_err(|e| anyhow::anyhow!("{question}: {e}"))?;
        let evidence = gather_evidence(&active, &engine.evidence_model(), &question, &passages)
            .await
            .map_err(|e| anyhow::anyhow!("{question}: {e}"))?;
        let documents: Vec<String> = evidence
            .iter()
            .map(|e| passages[e.passage].document_id.clone())
            .collect();
        let (of_doc, others): (Vec<Sourced>, Vec<Sourced>) = evidence
            .into_iter()
            .zip(documents)
            .partition(|(_, d)| d == document);
        let mut all: Vec<Evidence> = of_doc
            .iter()
            .chain(&others)
            .map(|(e, _)| e.clone())
            .collect();
        all.retain(|e| !e.text.is_empty());
        let mut facts = select_evidence(all, facts_per_prompt, 0.0);
        let position = facts.iter().position(|e| e.text == *sentence);
        q.found_by_evidence = position.is_some();
        if position.is_none() && !args.keep_unfound {
            q.outcome = "not found by the evidence step";
            questions.push(q);
            continue;
        }
        let k = match position {
            Some(k) => k,
            None => {
                // Put the source sentence where the weakest fact was, at a seeded position.
                if facts.len() >= facts_per_prompt {
                    facts.pop();
                }
                let slot = (unit_interval(&["synth-answers-slot", &question])
                    * (facts.len() + 1) as f64) as usize;
                let slot = slot.min(facts.len());
                facts.insert(
                    slot,
                    Evidence {
                        passage: 0,
                        text: sentence.clone(),
                        score: 0.0,
                        features: Default::default(),
                    },
                );
                slot
            }
        };
        q.fact = Some(k + 1);
        q.outcome = "positive";
        let target = if is_held_out {
            &mut held_out
        } else {
            &mut train
        };
        target.push(row(
            grounded_messages(&question, &facts),
            cited(sentence, k + 1),
        ));
        if unit_interval(&["synth-answers-negative", &question]) < args.negative_share {
            let negatives = select_evidence(
                others.into_iter().map(|(e, _)| e).collect(),
                facts_per_prompt,
                0.0,
            );
            if !negatives.is_empty() {
                target.push(row(
                    grounded_messages(&question, &negatives),
                    DECLINE.to_owned(),
                ));
                q.outcome = "positive+negative";
            }
        }
        questions.push(q);
    }

    write_jsonl(&args.out_dir.join("train.jsonl"), &train)?;
    write_jsonl(&args.out_dir.join("heldout.jsonl"), &held_out)?;
    write_jsonl(&args.out_dir.join("questions.jsonl"), &questions)?;
    let count = |o: &str| questions.iter().filter(|q| q.outcome == o).count();
    let stats = serde_json::json!({
        "sentences": sentences.len(),
        "generated": questions.len(),
        "malformed": count("malformed"),
        "duplicates": count("duplicate"),
        "positives": questions.iter().filter(|q| q.fact.is_some()).count(),
        "foundByEvidence": questions.iter().filter(|q| q.found_by_evidence).count(),
        "negatives": count("positive+negative"),
        "notFound": count("not found by the evidence step"),
        "trainRows": train.len(),
        "heldOutRows": held_out.len(),
        "heldOutDocuments": questions.iter().filter(|q| q.held_out).map(|q| q.document.as_str()).collect::<HashSet<_>>().len(),
        "generationSeconds": generation_seconds,
        "seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(
        args.out_dir.join("stats.json"),
        serde_json::to_string_pretty(&stats)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}

fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for r in rows {
        serde_json::to_writer(&mut file, r)?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_cleaned_and_copies_dropped() {
        let fact = "The reset link is valid for 60 minutes and can be used once.";
        assert_eq!(
            clean("Question: how long does the reset link work?\nmore", fact).as_deref(),
            Some("how long does the reset link work?")
        );
        assert_eq!(clean("The reset link is valid for 60 minutes.", fact), None);
        assert_eq!(
            clean(
                "Is the reset link valid for 60 minutes and can it be used once?",
                fact
            ),
            None
        );
        assert_eq!(
            cited("Links expire after 60 minutes.", 2),
            "Links expire after 60 minutes [2]."
        );
    }
}
