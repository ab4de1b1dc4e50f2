//! `train-reranker`: trains a cross-encoder reranker for a corpus from its golden queries (and
//! synthetic ones), with hard negatives mined by the project's own retriever.
//!
//! 1. The corpus is indexed as `eval` indexes it (same encoder, same chunking), so the passages
//!    the model learns from are exactly the texts it reranks at serving
//!    (`Chunk::embedding_text`: breadcrumb + text).
//! 2. For each training query (the `--split` half of the golden set, each `--synthetic` file's
//!    kept queries) the positive is its gold chunk (the best-ranked one when a gold document has
//!    several) and the negative pool is the union of the top `--negatives-depth` non-gold chunks
//!    of BM25, dense and the hybrid fusion: what the reranker will actually have to reorder.
//! 3. Each epoch shuffles the queries and draws `--group-size - 1` negatives per query from its
//!    pool; [`RerankerTrainer`] trains on groups of `--batch-groups` queries with the listwise
//!    loss, and the result is saved as a `BertForSequenceClassification` directory with a
//!    `training.json` describing the run.
//!
//! Held-out evaluation is `eval --split test --reranker <out>`; docs/evaluation.md has the method
//! and the numbers, docs/retrieval.md how to deploy the checkpoint.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchboard_index::{Chunk, Embedder, Generation, Retriever, SearchOptions};
use switchboard_model::SentenceEncoder;
use switchboard_model::rerank_train::{RerankerTrainer, TrainConfig, TrainingGroup};

use crate::eval::{Dataset, DatasetArgs, EvalIndex, Split, eval_options, fusion_name};

/// Arguments of `switchboard-runtime train-reranker`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainRerankerArgs {
    #[command(flatten)]
    /// The dataset: manifests and a golden set, or the Zaragoza FAQ.
    pub data: DatasetArgs,
    /// Which golden queries train: the `train` half of the fixed split (default; `eval --split
    /// test` then measures on queries never seen), `all`, or `test`.
    #[arg(long, value_enum, default_value_t = Split::Train)]
    pub split: Split,
    /// Synthetic queries (JSONL from `synth-queries`; lines with `"kept": false` are skipped).
    #[arg(long)]
    pub synthetic: Vec<PathBuf>,
    /// Use the synthetic queries whose source ranked within this rank when they were generated
    /// (their `rank` field), instead of their `kept` flag: another round-trip filter without
    /// generating again.
    #[arg(long)]
    pub synthetic_max_rank: Option<usize>,
    /// Train on the synthetic queries only (no golden query).
    #[arg(long)]
    pub synthetic_only: bool,
    /// Times each golden query is seen per epoch (its weight against the synthetic queries).
    #[arg(long, default_value_t = 1)]
    pub real_weight: usize,
    /// Checkpoint to start from: a sentence encoder (a fresh classification head is added) or a
    /// one-label cross-encoder (training continues). Default: the dataset's encoder.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Where to write the trained cross-encoder (a directory).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the training queries.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Peak learning rate (AdamW; linear warm-up over 10% of the steps, then linear decay).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// The fresh classification head's learning rate, as a multiple of `--lr`.
    #[arg(long, default_value_t = 10.0)]
    pub head_lr_multiplier: f64,
    /// Passages per query and step: the positive and `group-size - 1` hard negatives.
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// Queries per optimiser step.
    #[arg(long, default_value_t = 4)]
    pub batch_groups: usize,
    /// Non-gold passages taken from the top of each retriever's list (BM25, dense, hybrid) as the
    /// negative pool.
    #[arg(long, default_value_t = 20)]
    pub negatives_depth: usize,
    /// Which passages may be negatives: `positives` (default) only passages that answer some
    /// training query, so no passage is learned as "never relevant" merely because no training
    /// query asks for it (the held-out half's answers, or a KB's untrodden corners); `corpus`
    /// any passage the retrievers rank high.
    #[arg(long, value_enum, default_value_t = NegativesFrom::Positives)]
    pub negatives_from: NegativesFrom,
    /// Longest (query, passage) pair in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// Dropout while training (default: the checkpoint's `hidden_dropout_prob`).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Weight of distillation from the retrieval encoder: each group also teaches the model the
    /// encoder's cosine ordering of its passages (soft cross-entropy against
    /// `softmax(cosine / --distill-temperature)`), a relevance prior for questions no training
    /// query resembles. 0 (default): labels only.
    #[arg(long, default_value_t = 0.0)]
    pub distill_weight: f64,
    /// The teacher of distillation: a sentence-encoder directory (e.g. one fine-tuned in domain by
    /// `train-encoder`) instead of the retrieval encoder.
    #[arg(long)]
    pub distill_encoder: Option<PathBuf>,
    /// Temperature of the encoder's cosine similarities in the distillation target.
    #[arg(long, default_value_t = 0.05)]
    pub distill_temperature: f64,
    /// Seed of the head, dropout, shuffling and negative sampling.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
}

/// Where `train-reranker` draws negatives from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NegativesFrom {
    /// Passages that are the positive of some training query.
    Positives,
    /// Any passage of the corpus.
    Corpus,
}

/// A line of a synthetic query file (the golden-set format plus `kept`).
#[derive(Debug, Deserialize)]
struct SyntheticLine {
    query: String,
    #[serde(default)]
    gold_docs: Vec<String>,
    #[serde(default)]
    gold_sections: Vec<String>,
    #[serde(default = "yes")]
    kept: bool,
    #[serde(default)]
    rank: Option<usize>,
}

fn yes() -> bool {
    true
}

/// A training query with its positive passage and its pool of hard negatives (chunk rows).
#[derive(Debug, Clone)]
pub struct Mined {
    /// The query text.
    pub query: String,
    /// Row of its gold chunk.
    pub positive: usize,
    /// Rows of its hard negatives.
    pub pool: Vec<usize>,
    /// Whether the query is synthetic (not from the golden set).
    pub synthetic: bool,
}

/// What `training.json` records about the run.
#[derive(Debug, Serialize)]
struct TrainingRecord {
    dataset: String,
    split: Split,
    init: String,
    fusion: String,
    golden_queries: usize,
    synthetic_files: Vec<String>,
    synthetic_queries: usize,
    synthetic_max_rank: Option<usize>,
    skipped_queries: usize,
    negatives_from: NegativesFrom,
    mean_pool: f64,
    epochs: usize,
    steps: usize,
    learning_rate: f64,
    head_lr_multiplier: f64,
    group_size: usize,
    batch_groups: usize,
    negatives_depth: usize,
    real_weight: usize,
    max_len: usize,
    distill_weight: f64,
    distill_encoder: Option<String>,
    distill_temperature: f64,
    seed: u64,
    epoch_loss: Vec<f64>,
    seconds: f64,
}

/// SplitMix64: a small seeded generator for shuffling and sampling (reproducible runs).
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// `k` distinct items of `pool` (all of them when it is smaller), in random order.
    pub fn sample(&mut self, pool: &[usize], k: usize) -> Vec<usize> {
        let mut copy = pool.to_vec();
        self.shuffle(&mut copy);
        copy.truncate(k);
        copy
    }
}

/// A training query: its text, gold documents, gold sections and whether it is synthetic.
type TrainingQuery = (String, Vec<String>, Vec<String>, bool);

/// A synthetic query: its text, gold documents and gold sections.
type SyntheticQuery = (String, Vec<String>, Vec<String>);

/// Reads the kept queries of a synthetic file (with `max_rank`: those whose source ranked within
/// it).
fn read_synthetic(path: &Path, max_rank: Option<usize>) -> Result<Vec<SyntheticQuery>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: SyntheticLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a synthetic query", path.display(), n + 1))?;
        let kept = match max_rank {
            Some(k) => row.rank.is_some_and(|r| r <= k),
            None => row.kept,
        };
        if kept && !row.query.trim().is_empty() {
            out.push((row.query, row.gold_docs, row.gold_sections));
        }
    }
    Ok(out)
}

/// Mines positives and hard negatives on one loaded generation.
struct Miner<'a> {
    retriever: &'a Retriever,
    generation: &'a Generation,
    /// Chunk id -> row.
    rows: HashMap<&'a str, usize>,
    base: SearchOptions,
    depth: usize,
    /// Documents negatives may come from (`None`: any).
    eligible: Option<HashSet<String>>,
}

impl Miner<'_> {
    /// Finds the positive and the negative pool of one query; `None` when no chunk of the corpus is
    /// gold for it.
    fn mine(
        &self,
        query: &str,
        gold_docs: &[String],
        gold_sections: &[String],
    ) -> Result<Option<(usize, Vec<usize>)>> {
        let (retriever, rows, base, depth) = (self.retriever, &self.rows, &self.base, self.depth);
        let chunks = self.generation.chunks();
        let is_gold = |row: usize| is_gold(&chunks[row], gold_docs, gold_sections);
        let eligible = |row: usize| {
            self.eligible
                .as_ref()
                .is_none_or(|docs| docs.contains(&chunks[row].doc_id))
        };
        let lists = [
            SearchOptions {
                dense: false,
                ..base.clone()
            },
            SearchOptions {
                bm25: false,
                ..base.clone()
            },
            base.clone(),
        ];
        let mut ranked: Vec<Vec<usize>> = Vec::with_capacity(lists.len());
        for options in &lists {
            let response = retriever
                .search(query, options)
                .with_context(|| format!("mining negatives for {query:?}"))?;
            ranked.push(
                response
                    .passages
                    .iter()
                    .filter_map(|p| rows.get(p.chunk_id.as_str()).copied())
                    .collect(),
            );
        }
        // The positive: the gold chunk the hybrid ranks best (then dense, BM25), else the first gold
        // chunk of the corpus (a gold the retrievers all miss is the most useful lesson).
        let positive = [2, 1, 0]
            .iter()
            .find_map(|&l| ranked[l].iter().copied().find(|&r| is_gold(r)))
            .or_else(|| (0..chunks.len()).find(|&r| is_gold(r)));
        let Some(positive) = positive else {
            return Ok(None);
        };
        // Interleave the three lists' non-gold heads so every retriever's confusions are in the pool.
        let heads: Vec<Vec<usize>> = ranked
            .iter()
            .map(|l| {
                l.iter()
                    .copied()
                    .filter(|&r| !is_gold(r) && eligible(r))
                    .take(depth)
                    .collect()
            })
            .collect();
        let mut seen = HashSet::new();
        let mut pool = Vec::new();
        for i in 0..depth {
            for head in &heads {
                if let Some(&row) = head.get(i)
                    && seen.insert(row)
                {
                    pool.push(row);
                }
            }
        }
        Ok(Some((positive, pool)))
    }
}

/// The documents that answer some training query (have a chunk that is gold for it): with
/// `--negatives-from positives` the only documents negatives are drawn from. Without the
/// restriction a passage no training query asks for appears only ever as a negative, and the model
/// learns to push it down whatever the question: on a split golden set that is every held-out
/// answer, which the held-out evaluation then measures as a reranker worse than no reranker.
fn answering_documents(generation: &Generation, queries: &[TrainingQuery]) -> HashSet<String> {
    let mut out = HashSet::new();
    for c in generation.chunks() {
        if queries
            .iter()
            .any(|(_, docs, sections, _)| is_gold(c, docs, sections))
        {
            out.insert(c.doc_id.clone());
        }
    }
    out
}

/// Whether a chunk answers a query: sections, when given, are the precise answer (a synthetic
/// query's source paragraph); otherwise any chunk of a gold document is.
fn is_gold(chunk: &Chunk, gold_docs: &[String], gold_sections: &[String]) -> bool {
    if gold_sections.is_empty() {
        gold_docs.contains(&chunk.doc_id)
    } else {
        gold_sections.contains(&chunk.section_id)
    }
}

/// Where the training queries come from and how their negatives are mined (shared by
/// `train-reranker` and `train-encoder`).
#[derive(Debug)]
pub struct QuerySources<'a> {
    /// The half of the golden set trained on (`--split`).
    pub split: Split,
    /// Synthetic query files (`--synthetic`).
    pub synthetic: &'a [PathBuf],
    /// Keep a synthetic query only if its passage ranks at most this deep (`--synthetic-max-rank`).
    pub synthetic_max_rank: Option<usize>,
    /// Train on the synthetic queries alone (`--synthetic-only`).
    pub synthetic_only: bool,
    /// Where negatives are drawn from (`--negatives-from`).
    pub negatives_from: NegativesFrom,
    /// Non-gold candidates mined per retriever (`--negatives-depth`).
    pub negatives_depth: usize,
}

impl QuerySources<'_> {
    /// The golden half, then the synthetic files' kept queries, each with its positive chunk and
    /// its pool of hard negatives; also how many golden queries there were and how many queries
    /// were skipped (no gold chunk, or no negative).
    pub fn mine(
        &self,
        dataset: &Dataset,
        index: &EvalIndex,
        retriever: &Retriever,
    ) -> Result<(Vec<Mined>, usize, usize)> {
        let mut queries: Vec<TrainingQuery> = Vec::new();
        if !self.synthetic_only {
            for (_, q) in dataset.queries(self.split) {
                queries.push((
                    q.query.clone(),
                    q.gold_docs.clone(),
                    q.gold_sections.clone(),
                    false,
                ));
            }
        }
        let golden_queries = queries.len();
        for path in self.synthetic {
            for (q, d, s) in read_synthetic(path, self.synthetic_max_rank)? {
                queries.push((q, d, s, true));
            }
        }
        if queries.is_empty() {
            bail!("no training queries (check --split, --synthetic and --synthetic-only)");
        }
        let generation = &index.generation;
        let eligible = (self.negatives_from == NegativesFrom::Positives)
            .then(|| answering_documents(generation, &queries));
        if let Some(docs) = &eligible {
            tracing::info!(
                documents = docs.len(),
                "negatives drawn from the documents that answer a training query"
            );
        }
        let miner = Miner {
            retriever,
            generation,
            rows: generation
                .chunks()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.chunk_id.as_str(), i))
                .collect(),
            base: eval_options(&dataset.base),
            depth: self.negatives_depth,
            eligible,
        };
        let t = Instant::now();
        let mut mined = Vec::with_capacity(queries.len());
        let mut skipped = 0;
        for (i, (query, docs, sections, synthetic)) in queries.iter().enumerate() {
            match miner.mine(query, docs, sections)? {
                Some((positive, pool)) if !pool.is_empty() => mined.push(Mined {
                    query: query.clone(),
                    positive,
                    pool,
                    synthetic: *synthetic,
                }),
                _ => {
                    skipped += 1;
                    tracing::warn!(%query, "no gold chunk or no negative in the corpus; skipped");
                }
            }
            if (i + 1) % 200 == 0 {
                tracing::info!(done = i + 1, total = queries.len(), "mining hard negatives");
            }
        }
        let synthetic_queries = mined.iter().filter(|m| m.synthetic).count();
        tracing::info!(
            golden = mined.len() - synthetic_queries,
            synthetic = synthetic_queries,
            skipped,
            seconds = t.elapsed().as_secs_f64(),
            "training queries mined"
        );
        Ok((mined, golden_queries, skipped))
    }
}

/// `switchboard-runtime train-reranker`.
pub fn run(args: &TrainRerankerArgs) -> Result<()> {
    if args.group_size < 2 {
        bail!("--group-size must be at least 2 (a positive and a negative)");
    }
    if args.batch_groups == 0 || args.epochs == 0 || args.negatives_depth == 0 {
        bail!("--batch-groups, --epochs and --negatives-depth must be at least 1");
    }
    if args.distill_weight < 0.0 || !args.distill_weight.is_finite() {
        bail!(
            "--distill-weight must be >= 0 (got {})",
            args.distill_weight
        );
    }
    if args.distill_encoder.is_some() && args.distill_weight == 0.0 {
        bail!("--distill-encoder needs --distill-weight > 0");
    }
    if args.distill_temperature <= 0.0 || !args.distill_temperature.is_finite() {
        bail!(
            "--distill-temperature must be > 0 (got {})",
            args.distill_temperature
        );
    }
    let started = Instant::now();
    let dataset = Dataset::load(&args.data)?;
    let init = args.init.clone().unwrap_or_else(|| dataset.encoder.clone());
    let index = EvalIndex::build(&dataset)?;
    let retriever = index.retriever(None)?;
    let sources = QuerySources {
        split: args.split,
        synthetic: &args.synthetic,
        synthetic_max_rank: args.synthetic_max_rank,
        synthetic_only: args.synthetic_only,
        negatives_from: args.negatives_from,
        negatives_depth: args.negatives_depth,
    };
    let (mined, golden_queries, skipped) = sources.mine(&dataset, &index, &retriever)?;
    let generation = &index.generation;
    let synthetic_queries = mined.iter().filter(|m| m.synthetic).count();
    let mean_pool =
        mined.iter().map(|m| m.pool.len()).sum::<usize>() as f64 / mined.len().max(1) as f64;
    if mined.is_empty() {
        bail!("no training query has a gold passage and a negative in the corpus");
    }

    // The epoch's order: every synthetic query once, every golden one `real_weight` times.
    let schedule: Vec<usize> = mined
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            let times = if m.synthetic { 1 } else { args.real_weight };
            std::iter::repeat_n(i, times)
        })
        .collect();
    let steps_per_epoch = schedule.len().div_ceil(args.batch_groups);
    let total_steps = steps_per_epoch * args.epochs;
    let config = TrainConfig {
        learning_rate: args.lr,
        head_lr_multiplier: args.head_lr_multiplier,
        dropout: args.dropout,
        max_len: args.max_len,
        seed: args.seed as i64,
        distill_weight: args.distill_weight,
        distill_temperature: args.distill_temperature,
        ..TrainConfig::default()
    };
    let device = switchboard_model::default_device();
    let is_cross_encoder = std::fs::read_to_string(init.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|c| c.get("architectures")?.as_array().cloned())
        .is_some_and(|a| {
            a.iter().any(|x| {
                x.as_str()
                    .is_some_and(|s| s.ends_with("ForSequenceClassification"))
            })
        });
    let mut trainer = if is_cross_encoder {
        RerankerTrainer::from_cross_encoder(&init, device, config)
    } else {
        RerankerTrainer::from_encoder(&init, device, config)
    }
    .with_context(|| format!("initialising the reranker from {}", init.display()))?;
    trainer.set_total_steps(total_steps);
    tracing::info!(
        init = %init.display(),
        queries = schedule.len(),
        total_steps,
        "training"
    );

    let texts: Vec<String> = generation
        .chunks()
        .iter()
        .map(|c| c.embedding_text())
        .collect();
    // The teacher: the retrieval encoder (its chunk vectors are in the generation), or
    // `--distill-encoder` (a fine-tuned one: `train-encoder`), which embeds the chunks here.
    let (query_vectors, passage_vectors) = if args.distill_weight > 0.0 {
        let queries: Vec<String> = mined.iter().map(|m| m.query.clone()).collect();
        match &args.distill_encoder {
            Some(dir) => {
                let encoder = SentenceEncoder::load(dir, device).with_context(|| {
                    format!("loading the distillation encoder {}", dir.display())
                })?;
                let q = encoder
                    .embed(&queries, 32)
                    .context("embedding the queries")?;
                let p = encoder
                    .embed(&texts, 32)
                    .context("embedding the passages")?;
                (Some(q), Some(p))
            }
            None => (
                Some(
                    index
                        .embedder
                        .embed(&queries)
                        .context("embedding the training queries for distillation")?,
                ),
                None,
            ),
        }
    } else {
        (None, None)
    };
    let teacher = |i: usize, rows: &[usize]| -> Option<Vec<f32>> {
        let q = &query_vectors.as_ref()?[i];
        Some(
            rows.iter()
                .map(|&r| {
                    let v = match &passage_vectors {
                        Some(p) => p[r].as_slice(),
                        None => generation.vector(r),
                    };
                    q.iter().zip(v).map(|(a, b)| a * b).sum()
                })
                .collect(),
        )
    };
    let mut rng = Rng(args.seed);
    let mut epoch_loss = Vec::with_capacity(args.epochs);
    let t = Instant::now();
    for epoch in 0..args.epochs {
        let mut order = schedule.clone();
        rng.shuffle(&mut order);
        let (mut sum, mut n, mut window, mut window_n) = (0.0, 0usize, 0.0, 0usize);
        for batch in order.chunks(args.batch_groups) {
            let groups: Vec<TrainingGroup> = batch
                .iter()
                .map(|&i| {
                    let m = &mined[i];
                    let negatives = rng.sample(&m.pool, args.group_size - 1);
                    let rows: Vec<usize> = std::iter::once(m.positive)
                        .chain(negatives.iter().copied())
                        .collect();
                    TrainingGroup {
                        query: m.query.clone(),
                        positive: texts[m.positive].clone(),
                        negatives: negatives.into_iter().map(|r| texts[r].clone()).collect(),
                        teacher: teacher(i, &rows),
                    }
                })
                .collect();
            let loss = trainer.train_step(&groups).context("training step")?;
            sum += loss;
            n += 1;
            window += loss;
            window_n += 1;
            let step = trainer.steps();
            if step % 20 == 0 || step == total_steps {
                let per_step = t.elapsed().as_secs_f64() / step as f64;
                tracing::info!(
                    epoch = epoch + 1,
                    step,
                    total_steps,
                    loss = window / window_n as f64,
                    lr = trainer.learning_rate(),
                    eta_minutes = per_step * (total_steps - step) as f64 / 60.0,
                    "training"
                );
                (window, window_n) = (0.0, 0);
            }
        }
        let mean = sum / n.max(1) as f64;
        tracing::info!(epoch = epoch + 1, loss = mean, "epoch done");
        epoch_loss.push(mean);
    }
    trainer
        .save(&args.out, &init)
        .with_context(|| format!("saving the reranker to {}", args.out.display()))?;
    let record = TrainingRecord {
        dataset: dataset.name.clone(),
        split: args.split,
        init: init.display().to_string(),
        fusion: fusion_name(&dataset.base.fusion),
        golden_queries: if args.synthetic_only {
            0
        } else {
            golden_queries
        },
        synthetic_files: args
            .synthetic
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        synthetic_queries,
        synthetic_max_rank: args.synthetic_max_rank,
        skipped_queries: skipped,
        negatives_from: args.negatives_from,
        mean_pool,
        epochs: args.epochs,
        steps: trainer.steps(),
        learning_rate: args.lr,
        head_lr_multiplier: args.head_lr_multiplier,
        group_size: args.group_size,
        batch_groups: args.batch_groups,
        negatives_depth: args.negatives_depth,
        real_weight: args.real_weight,
        max_len: args.max_len,
        distill_weight: args.distill_weight,
        distill_encoder: args
            .distill_encoder
            .as_ref()
            .map(|p| p.display().to_string()),
        distill_temperature: args.distill_temperature,
        seed: args.seed,
        epoch_loss,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_record(&args.out, &record)
}

/// Writes a run's record as `training.json` next to the trained model and prints it.
pub fn write_record(dir: &Path, record: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(record)?;
    let path = dir.join("training.json");
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_seeded_and_distinct() {
        let pool: Vec<usize> = (0..10).collect();
        let a = Rng(5).sample(&pool, 4);
        assert_eq!(a, Rng(5).sample(&pool, 4));
        assert_eq!(a.len(), 4);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 4);
        assert_eq!(Rng(1).sample(&pool[..2], 7).len(), 2);
    }
}
