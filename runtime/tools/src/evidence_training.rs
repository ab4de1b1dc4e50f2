//! `train-evidence`: trains the evidence scorer, a cross-encoder that reads a question and one
//! evidence sentence (with its section heading, exactly as the answer path shows it,
//! [`switchboard_serving::answer::scorer_text`]) and scores whether the sentence *answers* the question.
//!
//! The bi-encoder's cosine measures whether a sentence is about the question; the answer needs
//! the sentence that answers it, which is most often a neighbour of the one that is merely
//! relevant (docs/evaluation.md). No pretrained cross-encoder or NLI model is available here,
//! so the scorer is trained in-project, from two sources that are not the golden sets:
//!
//! - **the knowledge base's own sentences** (`--questions`: `synth-answers`' `questions.jsonl`,
//!   a question the small model wrote for one sentence): the question goes through the
//!   runtime's own retrieval and evidence step; the positive is its source sentence, the
//!   negatives are the other candidates the evidence step put beside it (its neighbours in the
//!   same passage first: the confusion to unlearn). Documents marked `held_out` are left out
//!   unless `--include-held-out`.
//! - **a real FAQ** (`--faq`: JSONL with `q`, `a`, `category`, the Zaragoza construction FAQ
//!   the setup installs): the answer's first sentence is the positive, sentences of other
//!   answers of the same category (same topic, not the answer) the negatives. Another domain:
//!   it teaches "answers" rather than this knowledge base's vocabulary.
//!
//! - **a golden set's train half** (`--golden`), a sentence stating a key fact as the positive.
//!
//! Training is [`RerankerTrainer`]'s (listwise loss over each group, initialised from the
//! sentence encoder, optionally distilled from the encoder's cosine); the result is a
//! `BertForSequenceClassification` directory with a `training.json`. `eval --answers
//! --dump-evidence F --evidence-scorer DIR` scores every evidence candidate with it for offline
//! comparison. Measured so far it does not beat the cosine on held-out questions, so the runtime
//! does not use it (docs/evaluation.md, "A trained evidence scorer").
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchboard_model::rerank_train::{RerankerTrainer, TrainConfig, TrainingGroup};

use switchboard_policy::grounding::Evidence;

use crate::eval::{GoldenQuery, Split};
use crate::eval_answers::{AnswerArgs, harness, has_key_facts};
use crate::rerank_training::Rng;
use switchboard_serving::answer::{gather_evidence, prompt_passages, scorer_text};
use switchboard_serving::engine::{Active, Engine};

/// Arguments of `switchboard-runtime train-evidence`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainEvidenceArgs {
    /// Manifests holding the KnowledgeBase and a Router that references it.
    #[arg(long)]
    pub manifests: PathBuf,
    /// Which KnowledgeBase when the manifests hold several.
    #[arg(long)]
    pub knowledge_base: Option<String>,
    /// `synth-answers` question files (`questions.jsonl`): a question and the sentence it was
    /// written for.
    #[arg(long)]
    pub questions: Vec<PathBuf>,
    /// FAQ files (JSONL with `q`, `a` and optionally `category`).
    #[arg(long)]
    pub faq: Vec<PathBuf>,
    /// A golden set with key facts (`eval --answers` format): the questions of its `train` half
    /// (even positions, as `eval --split train`) also train, a sentence stating a key fact as
    /// the positive. `eval --answers --split test` then measures on the other half.
    #[arg(long)]
    pub golden: Option<PathBuf>,
    /// Times each golden question is seen per epoch.
    #[arg(long, default_value_t = 2)]
    pub golden_weight: usize,
    /// Weight of distillation from the encoder's cosine (the scorer learns the cosine's order of
    /// every candidate as well as which one answers; 0: labels only).
    #[arg(long, default_value_t = 0.0)]
    pub distill_weight: f64,
    /// Also train on questions about documents `synth-answers` held out.
    #[arg(long)]
    pub include_held_out: bool,
    /// The sentence encoder the scorer starts from.
    #[arg(long, default_value = ".cache/models/all-MiniLM-L6-v2")]
    pub init: PathBuf,
    /// Where to write the trained scorer (a directory).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the training groups.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Peak learning rate (AdamW; linear warm-up over 10% of the steps, then linear decay).
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// Sentences per question and step: the positive and `group-size - 1` negatives.
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// Questions per optimiser step.
    #[arg(long, default_value_t = 8)]
    pub batch_groups: usize,
    /// Longest (question, sentence) pair in tokens.
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Seed of the shuffles, the negatives drawn, the head and dropout.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    /// Index generations of the KnowledgeBase (unchanged sources are reused).
    #[arg(long, default_value = ".cache/switchboard/eval-index")]
    pub index_data: PathBuf,
    /// Folder searched for the model files the Router names.
    #[arg(long, default_value = ".cache/models")]
    pub models: PathBuf,
}

#[derive(Debug, Deserialize)]
struct QuestionLine {
    sentence: String,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    held_out: bool,
}

#[derive(Debug, Deserialize)]
struct FaqLine {
    q: String,
    a: String,
    #[serde(default)]
    category: String,
}

/// A question, its positive and the pool its negatives are drawn from.
#[derive(Debug, Clone)]
struct Example {
    query: String,
    positive: String,
    /// Hardest first (the first `group_size - 1` are always taken half of the time).
    pool: Vec<String>,
    /// The encoder's cosine of the positive and of each pool sentence (knowledge-base examples).
    teacher: Option<(f32, Vec<f32>)>,
}

#[derive(Debug, Serialize)]
struct TrainingRecord {
    init: String,
    question_files: Vec<String>,
    faq_files: Vec<String>,
    kb_examples: usize,
    kb_questions_skipped: usize,
    faq_examples: usize,
    epochs: usize,
    steps: usize,
    learning_rate: f64,
    group_size: usize,
    batch_groups: usize,
    max_len: usize,
    seed: u64,
    epoch_loss: Vec<f64>,
    seconds: f64,
}

/// A question written by the small model is usable when it is a question of a few words.
fn usable_question(q: &str) -> bool {
    let words = q.split_whitespace().count();
    (4..=40).contains(&words) && q.trim_end().ends_with('?') && !q.to_lowercase().contains("fact")
}

/// The sentences of an FAQ answer (split after `.`, `!`, `?` followed by a space).
fn faq_sentences(answer: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = answer.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        current.push(c);
        let boundary = matches!(c, '.' | '!' | '?')
            && chars.get(i + 1).is_some_and(|n| n.is_whitespace())
            && chars.get(i + 2).is_some_and(|n| n.is_uppercase());
        if boundary {
            let s = current.trim().to_owned();
            if s.split_whitespace().count() >= 4 {
                out.push(s);
            }
            current.clear();
        }
    }
    let s = current.trim().to_owned();
    if s.split_whitespace().count() >= 4 {
        out.push(s);
    }
    out
}

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// FAQ examples: the first sentence of each answer against sentences of the other answers of
/// its category (then of any category, when the category is small).
fn faq_examples(rows: &[FaqLine], pool_size: usize, rng: &mut Rng) -> Vec<Example> {
    let sentences: Vec<Vec<String>> = rows.iter().map(|r| faq_sentences(&r.a)).collect();
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let Some(positive) = sentences[i].first() else {
            continue;
        };
        let same: Vec<usize> = (0..rows.len())
            .filter(|&j| j != i && rows[j].category == row.category)
            .collect();
        let mut pool: Vec<String> = Vec::new();
        for j in rng.sample(&same, pool_size) {
            let s = &sentences[j];
            if !s.is_empty() {
                pool.push(s[rng.below(s.len())].clone());
            }
        }
        while pool.len() < pool_size && rows.len() > 1 {
            let j = rng.below(rows.len());
            if j != i && !sentences[j].is_empty() {
                pool.push(sentences[j][rng.below(sentences[j].len())].clone());
            }
        }
        out.push(Example {
            query: row.q.clone(),
            positive: positive.clone(),
            pool,
            teacher: None,
        });
    }
    out
}

/// The runtime's evidence candidates for `query` (its retrieval and evidence step), each with
/// the text a scorer reads.
async fn candidates(
    engine: &Engine,
    active: &Active,
    query: &str,
) -> Result<Vec<(Evidence, String)>> {
    let passages = prompt_passages(active, query)
        .await
        .map_err(|e| anyhow::anyhow!("{query}: {e}"))?;
    let evidence = gather_evidence(active, &engine.evidence_model(), query, &passages)
        .await
        .map_err(|e| anyhow::anyhow!("{query}: {e}"))?;
    Ok(evidence
        .into_iter()
        .map(|e| {
            let text = scorer_text(&passages[e.passage].breadcrumb, &e.text);
            (e, text)
        })
        .collect())
}

/// A training example from a positive and its negatives (hardest first; at most 24 kept), with
/// the encoder's cosines as the teacher; `None` without a negative.
fn example(
    query: &str,
    positive: &(Evidence, String),
    negatives: &[(Evidence, String)],
) -> Option<Example> {
    let pool = &negatives[..negatives.len().min(24)];
    (!pool.is_empty()).then(|| Example {
        query: query.to_owned(),
        positive: positive.1.clone(),
        pool: pool.iter().map(|(_, t)| t.clone()).collect(),
        teacher: Some((
            positive.0.features.cosine as f32,
            pool.iter().map(|(e, _)| e.features.cosine as f32).collect(),
        )),
    })
}

/// Runs `train-evidence`.
pub fn run(args: &TrainEvidenceArgs) -> Result<()> {
    if args.questions.is_empty() && args.faq.is_empty() && args.golden.is_none() {
        bail!("nothing to train on: give --questions (synth-answers), --faq or --golden files");
    }
    if args.group_size < 2 || args.batch_groups == 0 || args.epochs == 0 {
        bail!("--group-size must be at least 2, --batch-groups and --epochs at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut rng = Rng(args.seed);

    // Knowledge-base examples: the runtime's own evidence candidates for each question.
    let mut kb_examples = Vec::new();
    let mut skipped = 0usize;
    let golden: Vec<GoldenQuery> = match &args.golden {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            crate::eval::parse_golden(&text, &path.display().to_string())?
                .into_iter()
                .enumerate()
                .filter(|(i, q)| Split::Train.keeps(*i) && q.is_answerable())
                .map(|(_, q)| q)
                .collect()
        }
        None => Vec::new(),
    };
    if !args.questions.is_empty() || !golden.is_empty() {
        let mut lines = Vec::new();
        for path in &args.questions {
            lines.extend(read_jsonl::<QuestionLine>(path)?);
        }
        let eval_args = AnswerArgs {
            index_data: args.index_data.clone(),
            models: args.models.clone(),
            ..AnswerArgs::default()
        };
        kb_examples = rt.block_on(async {
            let (h, _) = harness(
                &args.manifests,
                args.knowledge_base.as_deref(),
                None,
                &eval_args,
            )
            .await?;
            let engine = &h.engine;
            let active = engine.active().context("no config applied")?;
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for line in &lines {
                let Some(question) = line.question.as_deref().map(str::trim) else {
                    continue;
                };
                if (line.held_out && !args.include_held_out)
                    || !usable_question(question)
                    || !seen.insert(question.to_lowercase())
                {
                    skipped += 1;
                    continue;
                }
                let mut evidence = candidates(engine, &active, question).await?;
                let Some(source) = evidence.iter().position(|(e, _)| e.text == line.sentence)
                else {
                    skipped += 1;
                    continue;
                };
                let positive = evidence.remove(source);
                // Hardest first: the source passage's other sentences, then by evidence score.
                let same = |e: &Evidence| e.passage == positive.0.passage;
                evidence.sort_by(|(a, _), (b, _)| {
                    same(b).cmp(&same(a)).then(b.score.total_cmp(&a.score))
                });
                evidence.retain(|(e, _)| e.text != positive.0.text);
                match example(question, &positive, &evidence) {
                    Some(e) => out.push(e),
                    None => skipped += 1,
                }
            }
            for q in &golden {
                let evidence = candidates(engine, &active, &q.query).await?;
                let (positives, mut negatives): (Vec<_>, Vec<_>) = evidence
                    .into_iter()
                    .partition(|(e, _)| has_key_facts(&e.text, &q.key_facts));
                // The best-scored stating sentence is the positive; others stating it are left out.
                let Some(positive) = positives
                    .into_iter()
                    .max_by(|(a, _), (b, _)| a.score.total_cmp(&b.score))
                else {
                    skipped += 1;
                    continue;
                };
                negatives.sort_by(|(a, _), (b, _)| b.score.total_cmp(&a.score));
                match example(&q.query, &positive, &negatives) {
                    Some(e) => out.extend(std::iter::repeat_n(e, args.golden_weight)),
                    None => skipped += 1,
                }
            }
            anyhow::Ok(out)
        })?;
    }

    let mut faq = Vec::new();
    for path in &args.faq {
        let rows = read_jsonl::<FaqLine>(path)?;
        faq.extend(faq_examples(&rows, 24, &mut rng));
    }
    let examples: Vec<Example> = kb_examples.iter().chain(&faq).cloned().collect();
    if examples.is_empty() {
        bail!("no training example: every question was skipped ({skipped})");
    }
    eprintln!(
        "[train-evidence] {} questions over the knowledge base (synthetic, golden; {skipped} skipped), {} FAQ questions",
        kb_examples.len(),
        faq.len()
    );

    let train = TrainConfig {
        learning_rate: args.lr,
        max_len: args.max_len,
        seed: i64::try_from(args.seed).unwrap_or(17),
        distill_weight: args.distill_weight,
        ..TrainConfig::default()
    };
    let mut trainer =
        RerankerTrainer::from_encoder(&args.init, switchboard_model::default_device(), train)
            .with_context(|| format!("loading {}", args.init.display()))?;
    let steps_per_epoch = examples.len().div_ceil(args.batch_groups);
    trainer.set_total_steps(steps_per_epoch * args.epochs);
    let mut epoch_loss = Vec::new();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    for epoch in 0..args.epochs {
        rng.shuffle(&mut order);
        let mut total = 0.0;
        for (step, batch) in order.chunks(args.batch_groups).enumerate() {
            let groups: Vec<TrainingGroup> = batch
                .iter()
                .map(|&i| {
                    let e = &examples[i];
                    let k = args.group_size - 1;
                    // Half the time the hardest negatives, otherwise a random draw of the pool.
                    let picked: Vec<usize> = if rng.below(2) == 0 {
                        (0..e.pool.len().min(k)).collect()
                    } else {
                        let idx: Vec<usize> = (0..e.pool.len()).collect();
                        rng.sample(&idx, k)
                    };
                    let teacher = e
                        .teacher
                        .as_ref()
                        .filter(|_| args.distill_weight > 0.0)
                        .map(|(p, pool)| {
                            std::iter::once(*p)
                                .chain(picked.iter().map(|&j| pool[j]))
                                .collect()
                        });
                    TrainingGroup {
                        query: e.query.clone(),
                        positive: e.positive.clone(),
                        negatives: picked.iter().map(|&j| e.pool[j].clone()).collect(),
                        teacher,
                    }
                })
                .collect();
            let loss = trainer.train_step(&groups)?;
            total += loss;
            if step % 20 == 0 {
                eprintln!(
                    "[train-evidence] epoch {} step {}/{} loss {loss:.4} ({:.0} s)",
                    epoch + 1,
                    step + 1,
                    steps_per_epoch,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        epoch_loss.push(total / steps_per_epoch as f64);
    }
    trainer
        .save(&args.out, &args.init)
        .with_context(|| format!("saving {}", args.out.display()))?;
    let record = TrainingRecord {
        init: args.init.display().to_string(),
        question_files: args
            .questions
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        faq_files: args.faq.iter().map(|p| p.display().to_string()).collect(),
        kb_examples: kb_examples.len(),
        kb_questions_skipped: skipped,
        faq_examples: faq.len(),
        epochs: args.epochs,
        steps: trainer.steps(),
        learning_rate: args.lr,
        group_size: args.group_size,
        batch_groups: args.batch_groups,
        max_len: args.max_len,
        seed: args.seed,
        epoch_loss,
        seconds: started.elapsed().as_secs_f64(),
    };
    std::fs::write(
        args.out.join("training.json"),
        serde_json::to_string_pretty(&record)?,
    )?;
    eprintln!(
        "[train-evidence] wrote {} ({:.0} s, loss per epoch {:?})",
        args.out.display(),
        record.seconds,
        record.epoch_loss
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faq_answers_split_into_sentences() {
        let s = faq_sentences(
            "The statutory time is 10 weeks, extendable. In practice: simple cases 4-6 weeks. Ok. Cases with deviation take 12-20 weeks.",
        );
        assert_eq!(
            s,
            vec![
                "The statutory time is 10 weeks, extendable.",
                "In practice: simple cases 4-6 weeks.",
                "Cases with deviation take 12-20 weeks."
            ]
        );
    }

    #[test]
    fn generated_questions_must_look_like_questions() {
        assert!(usable_question("How long is the refund window?"));
        assert!(!usable_question("What does the fact mean?"));
        assert!(!usable_question("Refund window"));
    }
}
