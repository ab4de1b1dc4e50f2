//! `train-encoder`: fine-tunes the retrieval encoder (the bi-encoder behind dense search) on a
//! corpus's golden queries (and synthetic ones), with the negatives `train-reranker` mines.
//!
//! Each step takes `--batch-size` queries; every query must score its answer above the batch's
//! other answers and above `--hard-negatives` passages drawn from its mined pool
//! ([`EncoderTrainer`]: multiple-negatives ranking loss on the encoder's own pooling and
//! normalisation). The output is a sentence-encoder directory in the source's layout: `eval
//! --encoder <out>` measures it, and a KnowledgeBase serves it as its embedding model (a new
//! generation re-embeds the corpus with it). docs/evaluation.md has the method and numbers.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use switchboard_model::encoder_train::{EncoderPair, EncoderTrainConfig, EncoderTrainer};

use crate::eval::{Dataset, DatasetArgs, EvalIndex, Split};
use crate::rerank_training::{Mined, NegativesFrom, QuerySources, Rng, write_record};

/// Arguments of `switchboard-runtime train-encoder`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainEncoderArgs {
    #[command(flatten)]
    /// The dataset: manifests and a golden set, or the Zaragoza FAQ.
    pub data: DatasetArgs,
    /// Which golden queries train (`train` by default; `eval --split test --encoder <out>` then
    /// measures on queries never seen).
    #[arg(long, value_enum, default_value_t = Split::Train)]
    pub split: Split,
    /// Synthetic queries (JSONL from `synth-queries`; lines with `"kept": false` are skipped).
    #[arg(long)]
    pub synthetic: Vec<PathBuf>,
    /// Where to write the fine-tuned encoder (a directory; not the source).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the training queries.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Peak learning rate (AdamW; linear warm-up over 10% of the steps, then linear decay).
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Queries per optimiser step (each one's answer is a negative for the others).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Hard negatives drawn per query and step from its mined pool.
    #[arg(long, default_value_t = 1)]
    pub hard_negatives: usize,
    /// Non-gold passages taken from the top of each retriever's list as the negative pool.
    #[arg(long, default_value_t = 5)]
    pub negatives_depth: usize,
    /// Which passages may be negatives (see `train-reranker --negatives-from`).
    #[arg(long, value_enum, default_value_t = NegativesFrom::Positives)]
    pub negatives_from: NegativesFrom,
    /// Cosine-similarity scale of the loss.
    #[arg(long, default_value_t = 20.0)]
    pub scale: f64,
    /// Longest text in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// Dropout while training (default: the checkpoint's `hidden_dropout_prob`).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Seed of dropout, shuffling and negative sampling.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
}

/// What `training.json` records about the run.
#[derive(Debug, Serialize)]
struct EncoderTrainingRecord {
    dataset: String,
    split: Split,
    init: String,
    golden_queries: usize,
    synthetic_files: Vec<String>,
    synthetic_queries: usize,
    skipped_queries: usize,
    negatives_from: NegativesFrom,
    epochs: usize,
    steps: usize,
    learning_rate: f64,
    batch_size: usize,
    hard_negatives: usize,
    negatives_depth: usize,
    scale: f64,
    max_len: usize,
    seed: u64,
    epoch_loss: Vec<f64>,
    seconds: f64,
}

/// Batches of at most `size` queries in `order`, no two with the same answer (a second question
/// about an answer would otherwise be trained to reject it as another query's in-batch negative).
fn batches(order: &[usize], mined: &[Mined], size: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut deferred: Vec<usize> = order.to_vec();
    while !deferred.is_empty() {
        let mut rest = Vec::new();
        for i in deferred {
            if open.iter().any(|&j| mined[j].positive == mined[i].positive) {
                rest.push(i);
                continue;
            }
            open.push(i);
            if open.len() == size {
                out.push(std::mem::take(&mut open));
            }
        }
        if !open.is_empty() {
            out.push(std::mem::take(&mut open));
        }
        deferred = rest;
    }
    out
}

/// `switchboard-runtime train-encoder`.
pub fn run(args: &TrainEncoderArgs) -> Result<()> {
    if args.batch_size == 0 || args.epochs == 0 || args.negatives_depth == 0 {
        bail!("--batch-size, --epochs and --negatives-depth must be at least 1");
    }
    let started = Instant::now();
    let dataset = Dataset::load(&args.data)?;
    let init = dataset.encoder.clone();
    if args.out.canonicalize().ok() == init.canonicalize().ok() && args.out.exists() {
        bail!(
            "--out {} is the encoder being trained; write the fine-tuned one elsewhere",
            args.out.display()
        );
    }
    let id = switchboard_model::encoder::model_id(&init);
    if switchboard_model::encoder::model_id(&args.out) == id {
        bail!(
            "--out {} would load under the source encoder's model id {id:?}: index builds would \
             reuse the source's vectors for it; give the fine-tuned encoder its own directory name",
            args.out.display()
        );
    }
    let index = EvalIndex::build(&dataset)?;
    let retriever = index.retriever(None)?;
    let sources = QuerySources {
        split: args.split,
        synthetic: &args.synthetic,
        synthetic_max_rank: None,
        synthetic_only: false,
        negatives_from: args.negatives_from,
        negatives_depth: args.negatives_depth,
    };
    let (mined, golden_queries, skipped) = sources.mine(&dataset, &index, &retriever)?;
    if mined.len() < 2 && args.hard_negatives == 0 {
        bail!("one training query and no hard negative: nothing to contrast its answer with");
    }
    if mined.is_empty() {
        bail!("no training query has a gold passage in the corpus");
    }
    let texts: Vec<String> = index
        .generation
        .chunks()
        .iter()
        .map(|c| c.embedding_text())
        .collect();

    let mut trainer = EncoderTrainer::from_encoder(
        &init,
        switchboard_model::default_device(),
        EncoderTrainConfig {
            learning_rate: args.lr,
            scale: args.scale,
            dropout: args.dropout,
            max_len: args.max_len,
            seed: args.seed as i64,
            ..EncoderTrainConfig::default()
        },
    )
    .with_context(|| format!("loading the encoder {}", init.display()))?;
    let mut rng = Rng(args.seed);
    let all: Vec<usize> = (0..mined.len()).collect();
    let steps_per_epoch = batches(&all, &mined, args.batch_size).len();
    trainer.set_total_steps(steps_per_epoch * args.epochs);
    tracing::info!(
        init = %init.display(),
        queries = mined.len(),
        total_steps = steps_per_epoch * args.epochs,
        "training the encoder"
    );
    let mut epoch_loss = Vec::with_capacity(args.epochs);
    for epoch in 0..args.epochs {
        let mut order = all.clone();
        rng.shuffle(&mut order);
        let (mut sum, mut n) = (0.0, 0usize);
        for batch in batches(&order, &mined, args.batch_size) {
            let pairs: Vec<EncoderPair> = batch
                .iter()
                .map(|&i| {
                    let m = &mined[i];
                    EncoderPair {
                        query: m.query.clone(),
                        positive: texts[m.positive].clone(),
                        negatives: rng
                            .sample(&m.pool, args.hard_negatives)
                            .into_iter()
                            .map(|r| texts[r].clone())
                            .collect(),
                    }
                })
                .collect();
            if pairs.len() < 2 && args.hard_negatives == 0 {
                continue; // a lone query with nothing to contrast (the last, deferred batch)
            }
            let loss = trainer.train_step(&pairs).context("training step")?;
            sum += loss;
            n += 1;
        }
        let mean = sum / n.max(1) as f64;
        tracing::info!(
            epoch = epoch + 1,
            loss = mean,
            lr = trainer.learning_rate(),
            seconds = started.elapsed().as_secs_f64(),
            "epoch done"
        );
        epoch_loss.push(mean);
    }
    trainer
        .save(&args.out, &init)
        .with_context(|| format!("saving the encoder to {}", args.out.display()))?;
    let record = EncoderTrainingRecord {
        dataset: dataset.name.clone(),
        split: args.split,
        init: init.display().to_string(),
        golden_queries,
        synthetic_files: args
            .synthetic
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        synthetic_queries: mined.iter().filter(|m| m.synthetic).count(),
        skipped_queries: skipped,
        negatives_from: args.negatives_from,
        epochs: args.epochs,
        steps: trainer.steps(),
        learning_rate: args.lr,
        batch_size: args.batch_size,
        hard_negatives: args.hard_negatives,
        negatives_depth: args.negatives_depth,
        scale: args.scale,
        max_len: args.max_len,
        seed: args.seed,
        epoch_loss,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_record(&args.out, &record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mined(positives: &[usize]) -> Vec<Mined> {
        positives
            .iter()
            .map(|&p| Mined {
                query: format!("q{p}"),
                positive: p,
                pool: Vec::new(),
                synthetic: false,
            })
            .collect()
    }

    #[test]
    fn batches_never_hold_two_questions_about_one_answer() {
        // Queries 0 and 1 share answer 7; 2 and 3 have their own.
        let m = mined(&[7, 7, 8, 9]);
        let b = batches(&[0, 1, 2, 3], &m, 2);
        assert_eq!(b, vec![vec![0, 2], vec![3], vec![1]]);
        let all: Vec<usize> = b.concat();
        assert_eq!(all.len(), 4);
        assert_eq!(batches(&[0, 2, 3], &m, 8), vec![vec![0, 2, 3]]);
    }
}
