//! Near-duplicate clustering of queries by embedding.
//!
//! Leader clustering over L2-normalised sentence embeddings, one pass in the given order: each
//! vector joins the cluster whose centroid is most similar when that cosine is at least the
//! threshold, else it starts a new cluster. The centroid is the normalised mean of the members,
//! so a cluster does not drift along a chain of neighbours the way single linkage does (A~B,
//! B~C, A far from C). Deterministic: the same vectors in the same order give the same clusters,
//! numbered by first appearance. Cost: one dot product per (vector, cluster), O(n·k·d).
//!
//! Thresholds (all-MiniLM-L6-v2, measured on support questions, docs/training-data.md):
//! paraphrases of one question score 0.86-0.94 ("How do I reset my password?" / "I forgot my
//! password, how can I reset it?" 0.94), neighbouring intents 0.5-0.7 ("How do I cancel my
//! subscription?" / "How do I get my money back for the yearly subscription?" 0.70). Hence
//! [`DEDUP_THRESHOLD`] 0.85 for training-data deduplication (one question, several wordings) and
//! the looser [`TOPIC_THRESHOLD`] 0.75 for coverage gaps (one missing topic, several questions).

/// Cosine at or above which two queries are the same question (training-data dedup).
pub const DEDUP_THRESHOLD: f32 = 0.85;
/// Cosine at or above which two queries are about the same missing topic (coverage gaps).
pub const TOPIC_THRESHOLD: f32 = 0.75;

/// `v` scaled to unit length (a zero vector stays zero: it joins no cluster but its own).
pub fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators: lets the compiler keep independent adds in flight.
    let mut acc = [0.0f32; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        acc[0] += x[0] * y[0];
        acc[1] += x[1] * y[1];
        acc[2] += x[2] * y[2];
        acc[3] += x[3] * y[3];
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Cosine of two normalised vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b)
}

/// The clusters of some vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct Clusters {
    /// Cluster id of each input vector, in input order (ids count from 0 by first appearance).
    pub assignment: Vec<usize>,
    /// Members per cluster.
    pub sizes: Vec<usize>,
}

impl Clusters {
    /// How many clusters.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// No clusters (no vectors).
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }
}

/// Leader clustering of normalised `vectors` (see the module documentation). `weights` (one per
/// vector, e.g. how many queries share an embedded text; `None`: 1 each) weigh the centroids.
pub fn leader_clusters(
    vectors: &[Vec<f32>],
    weights: Option<&[usize]>,
    threshold: f32,
) -> Clusters {
    let dim = vectors.first().map_or(0, Vec::len);
    // Running sums (for the mean) and their normalised copies (compared against).
    let mut sums: Vec<Vec<f32>> = Vec::new();
    let mut centroids: Vec<Vec<f32>> = Vec::new();
    let mut sizes = Vec::new();
    let mut assignment = Vec::with_capacity(vectors.len());
    for (n, v) in vectors.iter().enumerate() {
        let weight = weights.and_then(|w| w.get(n)).copied().unwrap_or(1).max(1);
        let best = centroids
            .iter()
            .enumerate()
            .map(|(c, centroid)| (dot(v, centroid), c))
            .filter(|(sim, _)| *sim >= threshold)
            .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        let id = match best {
            Some((_, c)) => {
                for (s, x) in sums[c].iter_mut().zip(v) {
                    *s += x * weight as f32;
                }
                centroids[c] = normalized(sums[c].clone());
                sizes[c] += weight;
                c
            }
            None => {
                let mut sum = vec![0.0; dim.max(v.len())];
                for (s, x) in sum.iter_mut().zip(v) {
                    *s = x * weight as f32;
                }
                centroids.push(normalized(sum.clone()));
                sums.push(sum);
                sizes.push(weight);
                sizes.len() - 1
            }
        };
        assignment.push(id);
    }
    Clusters { assignment, sizes }
}

/// A query reduced to what makes two copies the same text: lower case, words joined by one
/// space, surrounding punctuation dropped. Exact copies are embedded once.
pub fn normalize_text(query: &str) -> String {
    query
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        normalized(v.to_vec())
    }

    #[test]
    fn near_vectors_share_a_cluster_and_far_ones_do_not() {
        let vectors = [
            unit(&[1.0, 0.0, 0.0]),
            unit(&[0.95, 0.1, 0.0]),
            unit(&[0.0, 1.0, 0.0]),
            unit(&[0.97, 0.0, 0.1]),
            unit(&[0.0, 0.0, 1.0]),
        ];
        let c = leader_clusters(&vectors, None, 0.9);
        assert_eq!(c.assignment, [0, 0, 1, 0, 2]);
        assert_eq!(c.sizes, [3, 1, 1]);
        // A threshold above every cosine leaves each vector alone.
        assert_eq!(leader_clusters(&vectors, None, 1.01).len(), 5);
        assert!(leader_clusters(&[], None, 0.9).is_empty());
    }

    #[test]
    fn the_centroid_stops_a_chain_of_neighbours() {
        // Each step is 0.9 from the previous one, but the ends are far apart: single linkage
        // would chain all five, the centroid does not.
        let angles = [0.0f32, 0.45, 0.9, 1.35, 1.8];
        let vectors: Vec<Vec<f32>> = angles.iter().map(|a| vec![a.cos(), a.sin()]).collect();
        assert!(cosine(&vectors[0], &vectors[1]) > 0.89);
        let c = leader_clusters(&vectors, None, 0.89);
        assert!(c.len() >= 2, "{c:?}");
        assert_ne!(c.assignment[0], c.assignment[4]);
    }

    #[test]
    fn weights_pull_the_centroid() {
        let vectors = [unit(&[1.0, 0.0]), unit(&[0.8, 0.6]), unit(&[0.6, 0.8])];
        // Unweighted, the second vector moves the centroid close enough for the third.
        let plain = leader_clusters(&vectors, None, 0.79);
        assert_eq!(plain.assignment, [0, 0, 0]);
        // A heavy first vector keeps the centroid near it: the third starts its own cluster.
        let weighted = leader_clusters(&vectors, Some(&[50, 1, 1]), 0.79);
        assert_eq!(weighted.assignment, [0, 0, 1]);
        assert_eq!(weighted.sizes, [51, 1]);
    }

    #[test]
    fn texts_normalise_case_space_and_punctuation() {
        assert_eq!(
            normalize_text("  How do I   reset my PASSWORD?? "),
            "how do i reset my password"
        );
        assert_eq!(normalize_text("...!"), "");
        assert_eq!(normalize_text("e-mail (work)"), "e-mail work");
        assert!((cosine(&unit(&[3.0, 4.0]), &unit(&[3.0, 4.0])) - 1.0).abs() < 1e-6);
        assert_eq!(normalized(vec![0.0, 0.0]), [0.0, 0.0]);
    }
}
