//! Adapter selection by domain similarity.
//!
//! Each adapter lineage declares a domain (a description and example queries). Their embeddings,
//! averaged and normalised, are the lineage's centroid; a query uses the `topK` lineages whose
//! centroid is most similar to the query embedding, if at least `minSimilarity`. The caller
//! embeds (the runtime's encoder); this module only does the geometry.

/// One selected lineage.
#[derive(Clone, Debug, PartialEq)]
pub struct Selected {
    /// The lineage.
    pub lineage: String,
    /// Cosine similarity of query and centroid.
    pub similarity: f64,
}

/// Domain centroids of the loaded lineages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DomainIndex {
    centroids: Vec<(String, Vec<f32>)>,
}

fn normalise(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm <= f32::EPSILON {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Some(v)
}

impl DomainIndex {
    /// Builds centroids from each lineage's embedded domain texts. Lineages without texts (or
    /// with degenerate embeddings) are left out: they are never selected by similarity.
    pub fn new(domains: impl IntoIterator<Item = (String, Vec<Vec<f32>>)>) -> Self {
        let mut centroids = Vec::new();
        for (lineage, embeddings) in domains {
            let Some(dim) = embeddings.first().map(Vec::len) else {
                continue;
            };
            let mut sum = vec![0f32; dim];
            for e in embeddings.iter().filter(|e| e.len() == dim) {
                // Each text counts equally whatever its norm.
                if let Some(unit) = normalise(e.clone()) {
                    sum.iter_mut().zip(unit).for_each(|(s, x)| *s += x);
                }
            }
            if let Some(c) = normalise(sum) {
                centroids.push((lineage, c));
            }
        }
        centroids.sort_by(|a, b| a.0.cmp(&b.0));
        Self { centroids }
    }

    /// Lineages with a centroid.
    pub fn lineages(&self) -> impl Iterator<Item = &str> {
        self.centroids.iter().map(|(l, _)| l.as_str())
    }

    /// The `top_k` most similar lineages at or above `min_similarity`, most similar first (ties
    /// by name, so the choice is deterministic).
    pub fn select(&self, query: &[f32], top_k: usize, min_similarity: f64) -> Vec<Selected> {
        let Some(q) = normalise(query.to_vec()) else {
            return Vec::new();
        };
        let mut scored: Vec<Selected> = self
            .centroids
            .iter()
            .filter(|(_, c)| c.len() == q.len())
            .map(|(lineage, c)| Selected {
                lineage: lineage.clone(),
                similarity: f64::from(c.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>()),
            })
            .filter(|s| s.similarity >= min_similarity)
            .collect();
        scored.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.lineage.cmp(&b.lineage))
        });
        scored.truncate(top_k);
        scored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_nearest_above_minimum() {
        let index = DomainIndex::new([
            (
                "billing".to_string(),
                vec![vec![1.0, 0.1, 0.0], vec![0.9, 0.0, 0.1]],
            ),
            ("shipping".to_string(), vec![vec![0.0, 1.0, 0.0]]),
            ("empty".to_string(), vec![]),
        ]);
        assert_eq!(
            index.lineages().collect::<Vec<_>>(),
            ["billing", "shipping"]
        );
        let top = index.select(&[1.0, 0.2, 0.0], 2, 0.3);
        assert_eq!(top.len(), 1, "{top:?}");
        assert_eq!(top[0].lineage, "billing");
        let both = index.select(&[1.0, 1.0, 0.0], 2, 0.3);
        assert_eq!(both.len(), 2);
        assert!(index.select(&[0.0, 0.0, 1.0], 1, 0.3).is_empty());
        assert!(index.select(&[0.0, 0.0, 0.0], 1, 0.0).is_empty());
    }
}
