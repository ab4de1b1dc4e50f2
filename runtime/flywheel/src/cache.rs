//! A bounded cache of query embeddings, so a coverage-gap report asked for again (the operator
//! asks every Router's runtime at each KnowledgeBase reconcile) embeds only the queries it has
//! not seen: MiniLM on CPU costs about 20 ms of CPU per text, so thousands of signals would take
//! longer than the operator waits, on the CPUs that serve answers.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use switchboard_index::Embedder;

/// Vectors by (model, text), at most `capacity` of them; when full, it starts over (simple and
/// bounded: a report reads at most [`crate::gaps`]'s signal limit of texts, so a capacity above
/// that keeps a steady window's texts between calls).
#[derive(Debug)]
pub struct EmbeddingCache {
    capacity: usize,
    entries: Mutex<HashMap<(String, String), Vec<f32>>>,
}

impl EmbeddingCache {
    /// An empty cache of at most `capacity` vectors.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::default(),
        }
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `inner` behind this cache.
    pub fn wrap<'a>(&'a self, inner: &'a dyn Embedder) -> CachedEmbedder<'a> {
        CachedEmbedder { inner, cache: self }
    }
}

/// An embedder that asks `inner` only for texts the cache does not hold.
pub struct CachedEmbedder<'a> {
    inner: &'a dyn Embedder,
    cache: &'a EmbeddingCache,
}

impl std::fmt::Debug for CachedEmbedder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedEmbedder")
            .field("model", &self.inner.model_id())
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Embedder for CachedEmbedder<'_> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn model_id(&self) -> String {
        self.inner.model_id()
    }

    fn embed(&self, texts: &[String]) -> switchboard_index::Result<Vec<Vec<f32>>> {
        let model = self.inner.model_id();
        let mut out: Vec<Option<Vec<f32>>> = {
            let entries = self
                .cache
                .entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            texts
                .iter()
                .map(|t| entries.get(&(model.clone(), t.clone())).cloned())
                .collect()
        };
        let missing: Vec<String> = texts
            .iter()
            .zip(&out)
            .filter(|(_, v)| v.is_none())
            .map(|(t, _)| t.clone())
            .collect();
        if !missing.is_empty() {
            // Outside the lock: embedding is slow.
            let vectors = self.inner.embed(&missing)?;
            let mut entries = self
                .cache
                .entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if entries.len() + missing.len() > self.cache.capacity {
                entries.clear();
            }
            let mut fresh = vectors.into_iter();
            for (slot, text) in out.iter_mut().zip(texts) {
                if slot.is_none() {
                    let Some(v) = fresh.next() else { break };
                    if entries.len() < self.cache.capacity {
                        entries.insert((model.clone(), text.clone()), v.clone());
                    }
                    *slot = Some(v);
                }
            }
        }
        // A short answer from `inner` leaves slots empty: the caller's shape check reports it.
        Ok(out.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the texts it embeds.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Embedder for Counting {
        fn dim(&self) -> usize {
            2
        }
        fn model_id(&self) -> String {
            "counting".into()
        }
        fn embed(&self, texts: &[String]) -> switchboard_index::Result<Vec<Vec<f32>>> {
            self.0.fetch_add(texts.len(), Ordering::SeqCst);
            Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
        }
    }

    fn texts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_unseen_texts_are_embedded_and_the_cache_stays_bounded() {
        let inner = Counting::default();
        let cache = EmbeddingCache::new(3);
        let cached = cache.wrap(&inner);
        let first = cached.embed(&texts(&["a", "bb"])).unwrap();
        assert_eq!(first, [vec![1.0, 1.0], vec![2.0, 1.0]]);
        assert_eq!(inner.0.load(Ordering::SeqCst), 2);
        // Again, with one new text: only it is embedded, and the order is kept.
        let second = cached.embed(&texts(&["ccc", "a", "bb"])).unwrap();
        assert_eq!(second, [vec![3.0, 1.0], vec![1.0, 1.0], vec![2.0, 1.0]]);
        assert_eq!(inner.0.load(Ordering::SeqCst), 3);
        assert_eq!(cache.len(), 3);
        // Over capacity: it starts over rather than growing.
        cached.embed(&texts(&["dddd"])).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cached.embed(&texts(&["a"])).unwrap(), [vec![1.0, 1.0]]);
        assert_eq!(inner.0.load(Ordering::SeqCst), 5);
    }
}
