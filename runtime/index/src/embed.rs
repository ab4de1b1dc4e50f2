//! Model hooks: the runtime implements these with its tch encoder and cross-encoder.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Turns texts into dense vectors. Implementations need not normalise: the index L2-normalises
/// every vector it stores or queries with, so dot product = cosine similarity.
pub trait Embedder: Send + Sync {
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// Identifies the model (name + revision); a generation built with one model is only queried
    /// with the same model, and vectors are only reused across builds for the same id.
    fn model_id(&self) -> String;
    /// One vector per text, in order.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
}

/// Scores (query, passage) pairs jointly, e.g. a cross-encoder. Scores are treated as logits
/// (higher = more relevant); the retriever maps them through a sigmoid before recency decay.
pub trait Reranker: Send + Sync {
    /// Identifies the model, for logs and responses.
    fn model_id(&self) -> String;
    /// One score per passage, in order.
    fn score(&self, query: &str, passages: &[String]) -> Result<Vec<f32>>;
}

/// A deterministic, model-free embedder: hashed bag of lower-cased words (plus a crude plural
/// folding), signed feature hashing into `dim` buckets. It captures lexical overlap only; it exists
/// for tests and for running the pipeline without model files, not for quality.
#[derive(Debug)]
pub struct HashingEmbedder {
    dim: usize,
    texts_embedded: AtomicUsize,
    calls: AtomicUsize,
}

impl HashingEmbedder {
    /// An embedder with `dim` buckets (at least 8).
    pub fn new(dim: usize) -> Self {
        HashingEmbedder {
            dim: dim.max(8),
            texts_embedded: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        }
    }

    /// How many texts it has embedded so far (tests use it to prove reuse).
    pub fn texts_embedded(&self) -> usize {
        self.texts_embedded.load(Ordering::Relaxed)
    }

    /// How many `embed` calls it has served.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let lower = word.to_lowercase();
            let folded = match lower.strip_suffix('s') {
                Some(stem) if stem.len() >= 3 && !stem.ends_with('s') => stem,
                _ => lower.as_str(),
            };
            let h = fnv1a(folded.as_bytes());
            let bucket = (h % self.dim as u64) as usize;
            v[bucket] += if h >> 63 == 0 { 1.0 } else { -1.0 };
        }
        v
    }
}

/// FNV-1a: stable across platforms and releases (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Embedder for HashingEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn model_id(&self) -> String {
        format!("hashing-bow-v1/{}", self.dim)
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.texts_embedded
            .fetch_add(texts.len(), Ordering::Relaxed);
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }
}

/// L2-normalises `v` in place; rejects NaN/inf and all-zero vectors are left as zeros (they
/// match nothing).
pub(crate) fn normalise(v: &mut [f32], model: &str) -> Result<()> {
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::Embedding {
            model: model.to_string(),
            message: "non-finite value in vector".into(),
        });
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(())
}

/// Embeds `texts` in batches and checks the shape of what comes back, one vector per text in
/// the order given.
///
/// Batches are formed over the texts sorted by length (longest first), not in document order: a
/// batch is padded to its longest member, so mixing a 300-token chunk with 63 short ones wastes
/// most of the batch's compute. Sorting the whole build's texts first (as sentence-transformers
/// does) keeps each batch's lengths close; the vectors are put back in input order.
pub(crate) fn embed_checked(
    embedder: &dyn Embedder,
    texts: &[String],
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let model = embedder.model_id();
    let dim = embedder.dim();
    let mut order: Vec<usize> = (0..texts.len()).collect();
    // Characters are a close enough proxy for tokens to group lengths; the stable sort keeps
    // equal lengths in input order (deterministic batches).
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].chars().count()));
    let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    for part in order.chunks(batch.max(1)) {
        let batch_texts: Vec<String> = part.iter().map(|&i| texts[i].clone()).collect();
        let vectors = embedder.embed(&batch_texts)?;
        if vectors.len() != part.len() {
            return Err(Error::Embedding {
                model,
                message: format!(
                    "returned {} vectors for {} texts",
                    vectors.len(),
                    part.len()
                ),
            });
        }
        for (&i, mut v) in part.iter().zip(vectors) {
            if v.len() != dim {
                return Err(Error::Embedding {
                    model,
                    message: format!("vector of dim {} (declared {dim})", v.len()),
                });
            }
            normalise(&mut v, &model)?;
            out[i] = Some(v);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_in_input_order_whatever_the_length_batching() {
        let e = HashingEmbedder::new(64);
        let texts: Vec<String> = (0..23)
            .map(|i| format!("word{i} ").repeat(1 + (i * 7) % 11))
            .collect();
        let one_by_one: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| {
                embed_checked(&e, std::slice::from_ref(t), 1)
                    .unwrap()
                    .remove(0)
            })
            .collect();
        for batch in [1, 4, 64] {
            assert_eq!(
                embed_checked(&e, &texts, batch).unwrap(),
                one_by_one,
                "batch {batch}"
            );
        }
    }

    #[test]
    fn hashing_embedder_is_deterministic_and_lexical() {
        let e = HashingEmbedder::new(256);
        let v = embed_checked(
            &e,
            &[
                "Refund policy".into(),
                "refunds policy".into(),
                "Two-factor login".into(),
            ],
            2,
        )
        .unwrap();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert!(
            (dot(&v[0], &v[1]) - 1.0).abs() < 1e-5,
            "plural folding and case"
        );
        assert!(dot(&v[0], &v[2]).abs() < 0.5);
        assert_eq!(e.texts_embedded(), 3);
        assert_eq!(e.calls(), 2);
    }
}
