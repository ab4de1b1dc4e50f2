//! Retrieval over a loaded generation: BM25 + dense -> fusion -> recency decay -> rerank under a
//! deadline -> relevance floor. Every stage can be switched off for evaluation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::embed::{Embedder, Reranker, normalise};
use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::spec::FieldBoosts;

/// Default [`SearchOptions::recency_floor`]; see docs/retrieval.md for how it was chosen.
pub const DEFAULT_RECENCY_FLOOR: f32 = 0.5;

/// How ranked lists are combined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Fusion {
    /// Reciprocal-rank fusion: `sum 1 / (k + rank)`. Scale-free; `k = 60` is the usual choice.
    Rrf {
        /// Damping constant.
        k: f32,
    },
    /// Weighted sum of min-max normalised scores (each list scaled to [0, 1] over its candidates).
    #[serde(rename_all = "camelCase")]
    Weighted {
        /// Weight of BM25.
        bm25: f32,
        /// Weight of dense similarity.
        dense: f32,
    },
}

/// Reranking settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RerankOptions {
    /// How many of the fused candidates are rescored.
    pub top_n: usize,
    /// Budget; when exceeded the fused order is served and the response says so.
    pub deadline: Duration,
    /// Share of the reranked head's order taken by the cross-encoder, in [0, 1]. 1 orders the
    /// head by the cross-encoder alone (`sigmoid(rerank) x decay`); below 1 the final score is
    /// `weight x sigmoid(rerank) x decay + (1 - weight) x fused'`, where `fused'` is the fused
    /// score min-max normalised over the head (it already carries the decay). A reranker trained
    /// on a few hundred in-domain queries is a useful second opinion but a poor sole judge; the
    /// blend keeps what the first stage got right (docs/evaluation.md, "Reranker training").
    #[serde(default = "full_weight")]
    pub weight: f32,
}

fn full_weight() -> f32 {
    1.0
}

/// A minimum relevance below which a passage is not served; when no passage clears it the
/// response reports a retrieval failure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RelevanceFloor {
    /// Cosine similarity of query and chunk (needs dense retrieval on).
    Dense(f32),
    /// Raw BM25 score (passages without a BM25 match fail it).
    Bm25(f32),
    /// Sigmoid of the reranker score, in (0, 1) (only applied when the rerank completed).
    Rerank(f32),
}

/// Per-query settings. `Default` is the production pipeline minus the reranker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchOptions {
    /// Passages returned.
    pub top_k: usize,
    /// Candidates taken from each retriever before fusion.
    pub candidates: usize,
    /// BM25 on/off.
    pub bm25: bool,
    /// BM25 field weights.
    pub boosts: FieldBoosts,
    /// Dense retrieval on/off.
    pub dense: bool,
    /// Fusion method.
    pub fusion: Fusion,
    /// Recency decay per freshness class on/off.
    pub recency: bool,
    /// Smallest recency factor: the applied factor is `floor + (1 - floor) * 0.5^(age/half_life)`,
    /// so age alone can cost a passage at most `1 - floor` of its score. 0 = the pure exponential.
    pub recency_floor: f32,
    /// Cross-encoder rerank (needs a reranker on the retriever); `None` = off.
    pub rerank: Option<RerankOptions>,
    /// Minimum relevance; `None` = serve whatever ranks.
    pub floor: Option<RelevanceFloor>,
    /// "Now" for recency decay, Unix seconds; `None` = the system clock. Set it in tests and
    /// evaluations for reproducible results.
    pub now: Option<i64>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            top_k: 5,
            candidates: 50,
            bm25: true,
            boosts: FieldBoosts::default(),
            dense: true,
            fusion: Fusion::Rrf { k: 60.0 },
            recency: true,
            recency_floor: DEFAULT_RECENCY_FLOOR,
            rerank: None,
            floor: None,
            now: None,
        }
    }
}

/// Scores a passage got at each stage (absent = stage off or passage not in that list).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageScores {
    /// BM25 score.
    pub bm25: Option<f32>,
    /// 1-based rank in the BM25 list (after recency decay).
    pub bm25_rank: Option<usize>,
    /// Cosine similarity (computed for every candidate when dense is on).
    pub dense: Option<f32>,
    /// 1-based rank in the dense list (after recency decay).
    pub dense_rank: Option<usize>,
    /// Fused score (of the decayed lists when recency is on).
    pub fused: f32,
    /// Recency factor applied (1 = none).
    pub decay: f32,
    /// Raw reranker score.
    pub rerank: Option<f32>,
    /// Score that ordered the final list. Reranked passages (sigmoid(rerank) x decay, blended
    /// with the normalised fused score when [`RerankOptions::weight`] < 1) precede the rest
    /// (fused score), so compare it only within one response.
    pub final_score: f32,
}

/// A retrieved passage with its provenance.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Passage {
    /// Chunk id (for hit counting).
    pub chunk_id: String,
    /// Document id.
    pub doc_id: String,
    /// Section id.
    pub section_id: String,
    /// Source name.
    pub source: String,
    /// Document title.
    pub title: String,
    /// `[Doc > Section > Subsection]`.
    pub breadcrumb: String,
    /// Chunk text.
    pub text: String,
    /// Full text of the parent section (expansion for generation).
    pub section_text: String,
    /// Last modification, Unix seconds.
    pub last_modified: Option<i64>,
    /// Freshness class.
    pub freshness_class: String,
    /// Per-stage scores.
    pub scores: StageScores,
}

/// What happened to the rerank stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum RerankStatus {
    /// Not requested, or no reranker configured.
    Off,
    /// Reranked this many candidates.
    Completed {
        /// Candidates rescored.
        candidates: usize,
    },
    /// Deadline passed; the fused order was served.
    TimedOut {
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The reranker failed; the fused order was served.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Wall time per stage (absent = stage off).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageTimings {
    /// BM25 query.
    pub bm25: Option<Duration>,
    /// Query embedding.
    pub embed: Option<Duration>,
    /// Exact dense scan.
    pub dense: Option<Duration>,
    /// Fusion + decay.
    pub fusion: Duration,
    /// Rerank (up to the deadline).
    pub rerank: Option<Duration>,
    /// Whole query.
    pub total: Duration,
}

/// Why nothing was served.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RetrievalFailure {
    /// No candidate at all (no term matched and dense is off, or an empty index).
    NoCandidates,
    /// Candidates existed but none cleared the relevance floor.
    BelowFloor {
        /// The floor.
        floor: RelevanceFloor,
        /// Best score seen at the floor's stage.
        best: Option<f32>,
    },
}

/// The answer to one query.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResponse {
    /// Generation that answered.
    pub generation: String,
    /// Passages, best first (at most `top_k`).
    pub passages: Vec<Passage>,
    /// Set when no passage is served.
    pub failure: Option<RetrievalFailure>,
    /// Rerank outcome.
    pub rerank: RerankStatus,
    /// Stage timings.
    pub timings: StageTimings,
}

/// Searches one loaded generation. Cheap to clone; share one per generation and swap it
/// atomically when a new generation is published.
#[derive(Clone)]
pub struct Retriever {
    generation: Arc<Generation>,
    embedder: Option<Arc<dyn Embedder>>,
    reranker: Option<Arc<dyn Reranker>>,
}

impl std::fmt::Debug for Retriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retriever")
            .field("generation", &self.generation.id)
            .field("embedder", &self.embedder.as_ref().map(|e| e.model_id()))
            .field("reranker", &self.reranker.as_ref().map(|r| r.model_id()))
            .finish()
    }
}

#[derive(Debug, Clone, Default)]
struct Candidate {
    row: usize,
    scores: StageScores,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Retriever {
    /// A retriever over `generation`. The embedder (needed for dense retrieval) must be the
    /// model the generation was built with.
    pub fn new(generation: Arc<Generation>, embedder: Option<Arc<dyn Embedder>>) -> Result<Self> {
        if let Some(e) = &embedder {
            let built = &generation.manifest.embedding;
            if e.model_id() != built.model_id || e.dim() != built.dim {
                return Err(Error::EmbedderMismatch {
                    built: built.model_id.clone(),
                    built_dim: built.dim,
                    query: e.model_id(),
                    query_dim: e.dim(),
                });
            }
        }
        Ok(Retriever {
            generation,
            embedder,
            reranker: None,
        })
    }

    /// Adds a reranker.
    pub fn with_reranker(mut self, reranker: Arc<dyn Reranker>) -> Self {
        self.reranker = Some(reranker);
        self
    }

    /// The generation searched.
    pub fn generation(&self) -> &Arc<Generation> {
        &self.generation
    }

    /// Runs the pipeline for `query`. Input validation (empty, huge, binary) is the caller's;
    /// an empty query simply matches nothing.
    pub fn search(&self, query: &str, opts: &SearchOptions) -> Result<SearchResponse> {
        let started = Instant::now();
        let g = &*self.generation;
        let mut timings = StageTimings::default();
        let candidates_per_list = opts.candidates.max(opts.top_k);

        // BM25.
        let bm25_hits = if opts.bm25 {
            let t = Instant::now();
            let hits = g.bm25.search(query, &opts.boosts, candidates_per_list)?;
            timings.bm25 = Some(t.elapsed());
            hits
        } else {
            Vec::new()
        };

        // Dense.
        let mut query_vec = None;
        let dense_hits = match (&self.embedder, opts.dense) {
            (Some(embedder), true) => {
                let t = Instant::now();
                let mut v = embedder
                    .embed(&[query.to_string()])?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Embedding {
                        model: embedder.model_id(),
                        message: "no vector for the query".into(),
                    })?;
                if v.len() != g.dim() {
                    return Err(Error::Embedding {
                        model: embedder.model_id(),
                        message: format!("query vector of dim {} (index dim {})", v.len(), g.dim()),
                    });
                }
                normalise(&mut v, &embedder.model_id())?;
                timings.embed = Some(t.elapsed());
                let t = Instant::now();
                let hits = exact_top_k(&g.vectors, g.dim(), &v, candidates_per_list);
                timings.dense = Some(t.elapsed());
                query_vec = Some(v);
                hits
            }
            _ => Vec::new(),
        };

        // Recency decay, then fusion. Decay multiplies each retriever's own scores (cosines
        // clamped at 0) and the lists are re-ranked before fusing: the factor then competes with
        // real score gaps. Multiplying the fused score instead would let decay swamp relevance
        // under RRF, whose scores differ by a few percent between neighbouring ranks (measured on
        // the golden set: docs/retrieval.md).
        let t = Instant::now();
        let now = opts.now.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
        let floor = opts.recency_floor.clamp(0.0, 1.0);
        let decay_of = |row: usize| {
            let chunk = &g.chunks[row];
            match (
                opts.recency,
                chunk.last_modified,
                g.manifest.freshness_classes.get(&chunk.freshness_class),
            ) {
                (true, Some(modified), Some(class)) => {
                    floor + (1.0 - floor) * class.decay((now - modified) as f64)
                }
                _ => 1.0,
            }
        };
        let rerank_list = |hits: &[(usize, f32)]| {
            let mut list: Vec<(usize, f32, f32)> = hits
                .iter()
                .map(|&(row, score)| (row, score, score.max(0.0) * decay_of(row)))
                .collect();
            list.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
            list
        };
        let bm25_list = rerank_list(&bm25_hits);
        let dense_list = rerank_list(&dense_hits);
        let mut by_row: HashMap<usize, Candidate> = HashMap::new();
        for (rank, &(row, score, _)) in bm25_list.iter().enumerate() {
            let c = by_row.entry(row).or_insert_with(|| Candidate {
                row,
                ..Default::default()
            });
            c.scores.bm25 = Some(score);
            c.scores.bm25_rank = Some(rank + 1);
        }
        for (rank, &(row, score, _)) in dense_list.iter().enumerate() {
            let c = by_row.entry(row).or_insert_with(|| Candidate {
                row,
                ..Default::default()
            });
            c.scores.dense = Some(score);
            c.scores.dense_rank = Some(rank + 1);
        }
        let mut cands: Vec<Candidate> = by_row.into_values().collect();
        if let Some(q) = &query_vec {
            // BM25-only candidates get their cosine too (one dot product each): the dense floor
            // sees every candidate.
            for c in cands.iter_mut().filter(|c| c.scores.dense.is_none()) {
                c.scores.dense = Some(dot(g.vector(c.row), q));
            }
        }
        for c in &mut cands {
            c.scores.decay = decay_of(c.row);
        }
        let decayed = |list: &[(usize, f32, f32)]| {
            list.iter().map(|&(row, _, d)| (row, d)).collect::<Vec<_>>()
        };
        fuse(
            &mut cands,
            opts.fusion,
            &decayed(&bm25_list),
            &decayed(&dense_list),
        );
        for c in &mut cands {
            c.scores.final_score = c.scores.fused;
        }
        cands.sort_by(|a, b| {
            b.scores
                .final_score
                .total_cmp(&a.scores.final_score)
                .then(a.row.cmp(&b.row))
        });
        timings.fusion = t.elapsed();

        // Rerank the head under a deadline.
        let rerank = match (&self.reranker, opts.rerank) {
            (Some(reranker), Some(ro)) if ro.top_n > 0 && !cands.is_empty() => {
                let t = Instant::now();
                let n = ro.top_n.min(cands.len());
                let passages: Vec<String> = cands[..n]
                    .iter()
                    .map(|c| g.chunks[c.row].embedding_text())
                    .collect();
                let status = match score_with_deadline(
                    reranker.clone(),
                    query.to_string(),
                    passages,
                    ro.deadline,
                ) {
                    Ok(scores) if scores.len() == n && scores.iter().all(|s| s.is_finite()) => {
                        let weight = ro.weight.clamp(0.0, 1.0);
                        let head = &mut cands[..n];
                        let (lo, hi) = head.iter().fold((f32::MAX, f32::MIN), |(lo, hi), c| {
                            (lo.min(c.scores.fused), hi.max(c.scores.fused))
                        });
                        let span = hi - lo;
                        for (c, s) in head.iter_mut().zip(scores) {
                            // Min-max over the head; a head of equal fused scores adds nothing.
                            let fused = if span > 0.0 {
                                (c.scores.fused - lo) / span
                            } else {
                                0.0
                            };
                            c.scores.rerank = Some(s);
                            c.scores.final_score =
                                weight * sigmoid(s) * c.scores.decay + (1.0 - weight) * fused;
                        }
                        cands[..n].sort_by(|a, b| {
                            b.scores
                                .final_score
                                .total_cmp(&a.scores.final_score)
                                .then(a.row.cmp(&b.row))
                        });
                        RerankStatus::Completed { candidates: n }
                    }
                    Ok(scores) => RerankStatus::Failed {
                        reason: format!(
                            "{} scores (some non-finite?) for {n} passages",
                            scores.len()
                        ),
                    },
                    Err(status) => status,
                };
                timings.rerank = Some(t.elapsed());
                if !matches!(status, RerankStatus::Completed { .. }) {
                    tracing::warn!(?status, "rerank skipped; serving fused order");
                }
                status
            }
            _ => RerankStatus::Off,
        };

        // Relevance floor.
        let mut failure = None;
        if cands.is_empty() {
            failure = Some(RetrievalFailure::NoCandidates);
        } else if let Some(floor) = opts.floor {
            let stage_score = |c: &Candidate| match floor {
                RelevanceFloor::Dense(_) => c.scores.dense,
                RelevanceFloor::Bm25(_) => c.scores.bm25,
                RelevanceFloor::Rerank(_) => c.scores.rerank.map(sigmoid),
            };
            let min = match floor {
                RelevanceFloor::Dense(x) | RelevanceFloor::Bm25(x) | RelevanceFloor::Rerank(x) => x,
            };
            let applicable = match floor {
                RelevanceFloor::Rerank(_) => matches!(rerank, RerankStatus::Completed { .. }),
                RelevanceFloor::Dense(_) => query_vec.is_some(),
                RelevanceFloor::Bm25(_) => opts.bm25,
            };
            if applicable {
                let best = cands.iter().filter_map(stage_score).max_by(f32::total_cmp);
                cands.retain(|c| stage_score(c).is_some_and(|s| s >= min));
                if cands.is_empty() {
                    failure = Some(RetrievalFailure::BelowFloor { floor, best });
                }
            }
        }

        let passages = cands
            .into_iter()
            .take(opts.top_k)
            .map(|c| {
                let chunk = &g.chunks[c.row];
                Passage {
                    chunk_id: chunk.chunk_id.clone(),
                    doc_id: chunk.doc_id.clone(),
                    section_id: chunk.section_id.clone(),
                    source: chunk.source.clone(),
                    title: chunk.title.clone(),
                    breadcrumb: chunk.breadcrumb(),
                    text: chunk.text.clone(),
                    section_text: g
                        .section(&chunk.section_id)
                        .map(|s| s.text.clone())
                        .unwrap_or_else(|| chunk.text.clone()),
                    last_modified: chunk.last_modified,
                    freshness_class: chunk.freshness_class.clone(),
                    scores: c.scores,
                }
            })
            .collect();
        timings.total = started.elapsed();
        Ok(SearchResponse {
            generation: g.id.clone(),
            passages,
            failure,
            rerank,
            timings,
        })
    }
}

/// Dot product with eight independent accumulators: a plain `sum()` is a sequential chain of
/// float additions the compiler may not reorder, so it would not vectorise.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Exact maximum-inner-product search over a row-major matrix: `(row, score)`, best first.
/// O(rows x dim) per query: ~4M multiply-adds at 10k x 384, a millisecond or two on one core.
fn exact_top_k(matrix: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<(usize, f32)> {
    if dim == 0 || k == 0 {
        return Vec::new();
    }
    let mut scored: Vec<(usize, f32)> = matrix
        .chunks_exact(dim)
        .map(|row| dot(row, query))
        .enumerate()
        .collect();
    let by_score = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if scored.len() > k {
        scored.select_nth_unstable_by(k - 1, by_score);
        scored.truncate(k);
    }
    scored.sort_by(by_score);
    scored
}

fn fuse(cands: &mut [Candidate], fusion: Fusion, bm25: &[(usize, f32)], dense: &[(usize, f32)]) {
    match fusion {
        Fusion::Rrf { k } => {
            for c in cands.iter_mut() {
                c.scores.fused = [c.scores.bm25_rank, c.scores.dense_rank]
                    .into_iter()
                    .flatten()
                    .map(|rank| 1.0 / (k + rank as f32))
                    .sum();
            }
        }
        Fusion::Weighted {
            bm25: wb,
            dense: wd,
        } => {
            // Min-max normalisation of each list's (decayed) scores over its own candidates; a
            // candidate absent from a list gets 0 from it.
            let normalised = |list: &[(usize, f32)]| -> HashMap<usize, f32> {
                let min = list.iter().map(|x| x.1).fold(f32::INFINITY, f32::min);
                let max = list.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
                list.iter()
                    .map(|&(row, x)| {
                        (
                            row,
                            if max > min {
                                ((x - min) / (max - min)).clamp(0.0, 1.0)
                            } else {
                                1.0
                            },
                        )
                    })
                    .collect()
            };
            let (nb, nd) = (normalised(bm25), normalised(dense));
            for c in cands.iter_mut() {
                c.scores.fused = wb * nb.get(&c.row).copied().unwrap_or(0.0)
                    + wd * nd.get(&c.row).copied().unwrap_or(0.0);
            }
        }
    }
}

/// Runs the reranker on its own thread and waits at most `deadline`. On timeout the thread is
/// left to finish in the background (its result is dropped): a scoring call cannot be interrupted,
/// so callers should bound concurrent reranks.
fn score_with_deadline(
    reranker: Arc<dyn Reranker>,
    query: String,
    passages: Vec<String>,
    deadline: Duration,
) -> std::result::Result<Vec<f32>, RerankStatus> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("rerank".into())
        .spawn(move || {
            let _ = tx.send(reranker.score(&query, &passages));
        })
        .map_err(|e| RerankStatus::Failed {
            reason: format!("cannot start rerank thread: {e}"),
        })?;
    match rx.recv_timeout(deadline) {
        Ok(Ok(scores)) => Ok(scores),
        Ok(Err(e)) => Err(RerankStatus::Failed {
            reason: e.to_string(),
        }),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(RerankStatus::TimedOut { deadline }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(RerankStatus::Failed {
            reason: "reranker panicked".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_top_k_orders_by_inner_product() {
        let m = [1.0, 0.0, 0.0, 1.0, 0.7, 0.7];
        let hits = exact_top_k(&m, 2, &[1.0, 0.0], 2);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(exact_top_k(&m, 2, &[0.0, 1.0], 10).len(), 3);
    }

    #[test]
    fn rrf_rewards_agreement() {
        let bm25 = [(1, 9.0), (2, 5.0)];
        let dense = [(2, 0.9), (3, 0.8)];
        let mut c: Vec<Candidate> = [1, 2, 3]
            .into_iter()
            .map(|row| {
                let scores = StageScores {
                    bm25_rank: bm25.iter().position(|x| x.0 == row).map(|p| p + 1),
                    bm25: bm25.iter().find(|x| x.0 == row).map(|x| x.1),
                    dense_rank: dense.iter().position(|x| x.0 == row).map(|p| p + 1),
                    dense: dense.iter().find(|x| x.0 == row).map(|x| x.1),
                    ..Default::default()
                };
                Candidate { row, scores }
            })
            .collect();
        fuse(&mut c, Fusion::Rrf { k: 60.0 }, &bm25, &dense);
        assert!(c[1].scores.fused > c[0].scores.fused && c[0].scores.fused > c[2].scores.fused);
        fuse(
            &mut c,
            Fusion::Weighted {
                bm25: 1.0,
                dense: 0.0,
            },
            &bm25,
            &dense,
        );
        assert_eq!(
            (c[0].scores.fused, c[1].scores.fused, c[2].scores.fused),
            (1.0, 0.0, 0.0)
        );
    }
}
