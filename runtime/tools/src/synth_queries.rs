//! `synth-queries`: synthetic training queries generated from the knowledge base's own passages
//! by the small model, kept only when they find their passage again (round-trip consistency).
//!
//! The seed essay's synthetic-data recipe for a low-resource task: a KB has passages but few
//! labelled queries. For every chunk the small model (SmolLM2-135M-Instruct, the runtime's
//! generator worker with int4 weights) is asked for a question the passage answers: one greedy
//! and `--samples` sampled (top-p) generations. Outputs that are not a single question of
//! 3..=40 words are dropped; duplicates too. Each remaining question is searched with the
//! dataset's hybrid retriever and **kept** when its source document ranks within `--keep-top`
//! (a question the retriever cannot connect to its passage is more likely off-topic than hard;
//! the reranker only ever sees the top N anyway). Every candidate is written (JSONL, golden-set
//! format plus `source_chunk`, `rank`, `kept`), so the filter can be audited and changed;
//! `train-reranker --synthetic FILE` reads the kept lines.
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;
use switchboard_model::chat::ChatMessage;
use switchboard_model::{GenerationConfig, Sampling};

use crate::eval::{Dataset, DatasetArgs, EvalIndex, Level, Split, eval_options, ranked_ids};
use crate::eval_rewrite::{DEFAULT_SMALL_MODEL, generate_all, write_jsonl};

/// The default instruction; `{passage}` is replaced by the chunk's text (breadcrumb included).
/// The passage comes first and the instruction last: SmolLM2-135M follows what it read last.
pub const DEFAULT_PROMPT: &str = "Passage: {passage}\n\nWrite a question a customer might ask that this passage answers. Reply with the question only.";

/// Worked examples sent before the passage (user turn, assistant turn), from an invented
/// invoicing product unrelated to any evaluation corpus: without them the 135M model answers,
/// summarises or chats in about half of its outputs instead of asking.
const EXAMPLES: [(&str, &str); 2] = [
    (
        "[Billing > Refunds] Refunds are paid to the card used for the purchase and appear on the statement within 5 to 10 business days.",
        "How long does it take for a refund to show up on my card?",
    ),
    (
        "[Account > Security] Two-factor authentication can be turned on under Settings > Security. Once enabled, every sign-in asks for a six-digit code from your authenticator app.",
        "How do I turn on two-factor authentication for my account?",
    ),
];

/// Arguments of `switchboard-runtime synth-queries`.
#[derive(Debug, Clone, clap::Args)]
pub struct SynthArgs {
    #[command(flatten)]
    /// The dataset: manifests and a golden set, or the Zaragoza FAQ.
    pub data: DatasetArgs,
    /// Passages to generate for: `all` chunks, or the chunks of the documents that are gold for
    /// the `train` (or `test`) half of the golden set.
    #[arg(long, value_enum, default_value_t = Split::All)]
    pub split: Split,
    /// The small model (GGUF file or Hugging Face directory).
    #[arg(long, env = "SWITCHBOARD_SMALL_MODEL", default_value = DEFAULT_SMALL_MODEL)]
    pub small_model: PathBuf,
    /// Instruction sent as the user turn; `{passage}` is replaced by the passage.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Send the prompt alone, without the two worked examples before it.
    #[arg(long)]
    pub no_examples: bool,
    /// Sampled questions per passage (top-p 0.9, temperature 0.8) besides the greedy one.
    #[arg(long, default_value_t = 2)]
    pub samples: usize,
    /// Keep a question when its source document is within this rank of the hybrid retriever
    /// (0 keeps every well-formed question).
    #[arg(long, default_value_t = 10)]
    pub keep_top: usize,
    /// Tokens generated per question at most.
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// Seed of the sampled generations.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Only the first N passages (a quick look at the prompt's output).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output JSONL.
    #[arg(long)]
    pub out: PathBuf,
}

/// One generated question.
#[derive(Debug, Serialize)]
struct Synthetic {
    id: String,
    query: String,
    gold_docs: Vec<String>,
    gold_sections: Vec<String>,
    source_chunk: String,
    /// Rank of the source document for the question (hybrid), `None` beyond the 50 retrieved.
    rank: Option<usize>,
    kept: bool,
}

/// The question in a generation, or `None` when it is not one question of 3..=40 words.
pub fn clean_question(generated: &str) -> Option<String> {
    let mut text = generated.trim();
    for prefix in [
        "Question:",
        "question:",
        "Q:",
        "Customer:",
        "Customer question:",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.trim_start();
        }
    }
    let line = text
        .lines()
        .next()?
        .trim()
        .trim_matches(['"', '*', '\''])
        .trim();
    let end = line.find('?')?;
    let question = line[..=end].trim();
    let words = question.split_whitespace().count();
    ((3..=40).contains(&words)).then(|| question.to_owned())
}

/// `switchboard-runtime synth-queries`.
pub fn run(args: &SynthArgs) -> Result<()> {
    if !args.prompt.contains("{passage}") {
        bail!("--prompt must contain {{passage}}");
    }
    let dataset = Dataset::load(&args.data)?;
    let index = EvalIndex::build(&dataset)?;
    let retriever = index.retriever(None)?;
    let chunks = index.generation.chunks();
    let wanted: Option<HashSet<&str>> = match args.split {
        Split::All => None,
        split => Some(
            dataset
                .queries(split)
                .into_iter()
                .flat_map(|(_, q)| q.gold_docs.iter().map(String::as_str))
                .collect(),
        ),
    };
    let mut passages: Vec<usize> = (0..chunks.len())
        .filter(|&i| {
            wanted
                .as_ref()
                .is_none_or(|w| w.contains(chunks[i].doc_id.as_str()))
        })
        .collect();
    if let Some(limit) = args.limit {
        passages.truncate(limit);
    }
    if passages.is_empty() {
        bail!("no passage to generate questions for");
    }
    let per_passage = 1 + args.samples;
    let mut requests = Vec::with_capacity(passages.len() * per_passage);
    let mut examples = Vec::new();
    if !args.no_examples {
        for (passage, question) in EXAMPLES {
            examples.push(ChatMessage::user(args.prompt.replace("{passage}", passage)));
            examples.push(ChatMessage::new("assistant", question));
        }
    }
    for (n, &row) in passages.iter().enumerate() {
        let mut messages = examples.clone();
        messages.push(ChatMessage::user(
            args.prompt
                .replace("{passage}", &chunks[row].embedding_text()),
        ));
        for s in 0..per_passage {
            let sampling = if s == 0 {
                Sampling::Greedy
            } else {
                Sampling::TopP {
                    temperature: 0.8,
                    top_p: 0.9,
                    seed: args.seed.wrapping_add((n * per_passage + s) as u64),
                }
            };
            requests.push((
                messages.clone(),
                GenerationConfig {
                    sampling,
                    max_new_tokens: args.max_new_tokens,
                    stop_token_ids: Vec::new(),
                },
            ));
        }
    }
    let started = Instant::now();
    tracing::info!(
        passages = passages.len(),
        generations = requests.len(),
        "generating questions"
    );
    let generated = generate_all(&args.small_model, None, requests)?;
    let generation_seconds = started.elapsed().as_secs_f64();

    let options = eval_options(&dataset.base);
    let mut out = Vec::new();
    let (mut malformed, mut duplicates, mut failed) = (0, 0, 0);
    for (n, &row) in passages.iter().enumerate() {
        let chunk = &chunks[row];
        let mut seen = HashSet::new();
        for g in &generated[n * per_passage..(n + 1) * per_passage] {
            let text = match g {
                Ok(g) => &g.text,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(chunk = %chunk.chunk_id, error = %e, "generation failed");
                    continue;
                }
            };
            let Some(question) = clean_question(text) else {
                malformed += 1;
                tracing::debug!(chunk = %chunk.chunk_id, %text, "not a question");
                continue;
            };
            if !seen.insert(question.to_lowercase()) {
                duplicates += 1;
                continue;
            }
            let response = retriever.search(&question, &options)?;
            let ranked = ranked_ids(&response.passages, Level::Doc);
            let rank = ranked
                .iter()
                .position(|d| *d == chunk.doc_id)
                .map(|i| i + 1);
            let kept = args.keep_top == 0 || rank.is_some_and(|r| r <= args.keep_top);
            out.push(Synthetic {
                id: format!("synth-{}-{}", chunk.chunk_id, seen.len()),
                query: question,
                gold_docs: vec![chunk.doc_id.clone()],
                gold_sections: vec![chunk.section_id.clone()],
                source_chunk: chunk.chunk_id.clone(),
                rank,
                kept,
            });
        }
    }
    write_jsonl(&args.out, out.iter())?;
    let kept = out.iter().filter(|s| s.kept).count();
    let top1 = out.iter().filter(|s| s.rank == Some(1)).count();
    let summary = serde_json::json!({
        "passages": passages.len(),
        "generations": passages.len() * per_passage,
        "failed": failed,
        "malformed": malformed,
        "duplicates": duplicates,
        "questions": out.len(),
        "kept": kept,
        "source_ranked_first": top1,
        "keep_top": args.keep_top,
        "generation_seconds": generation_seconds,
        "out": args.out.display().to_string(),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_cleaned_or_refused() {
        assert_eq!(
            clean_question("Question: How long does a permit take? It depends.").as_deref(),
            Some("How long does a permit take?")
        );
        assert_eq!(
            clean_question("\"What does a building permit cost?\"\nMore text").as_deref(),
            Some("What does a building permit cost?")
        );
        assert_eq!(clean_question("The permit takes ten weeks."), None);
        assert_eq!(clean_question("Why?"), None);
        assert_eq!(clean_question(""), None);
    }
}
