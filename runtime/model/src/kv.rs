//! Key/value caches that are written in place.
//!
//! A [`KvPool`] holds the keys and values of up to `slots` sequences, per layer
//! `[slots, kv_heads, capacity, head_dim]`. A step writes each sequence's new positions into its
//! slot (no concatenation: appending a token costs its own keys, not a copy of the whole cache),
//! and attention reads the first `rows` slots up to the longest length as a view. The capacity
//! grows by doubling when a sequence outgrows it. Continuous batching keeps the sequences in flight
//! in slots `0..n` and moves the last one into a finished sequence's slot.
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};

/// Smallest capacity allocated (positions).
const MIN_CAPACITY: i64 = 256;

/// Keys and values of up to `slots` sequences.
#[derive(Debug)]
pub struct KvPool {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    lens: Vec<i64>,
    num_layers: usize,
    capacity: i64,
    max_positions: i64,
    kv_heads: i64,
    head_dim: i64,
    kind: Kind,
    device: Device,
}

impl KvPool {
    /// An empty pool for `layers` layers; memory is allocated by the first step.
    pub fn new(
        layers: usize,
        slots: usize,
        (kv_heads, head_dim, max_positions): (i64, i64, i64),
        kind: Kind,
        device: Device,
    ) -> Self {
        Self {
            keys: Vec::with_capacity(layers),
            values: Vec::with_capacity(layers),
            lens: vec![0; slots],
            num_layers: layers,
            capacity: 0,
            max_positions,
            kv_heads,
            head_dim,
            kind,
            device,
        }
    }

    /// Number of sequences it holds.
    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.num_layers
    }

    /// Positions cached for `slot`.
    pub fn len(&self, slot: usize) -> i64 {
        self.lens.get(slot).copied().unwrap_or(0)
    }

    /// Whether every slot is empty.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }

    /// Sets the cached length of `slot` (a new sequence: 0; dropping a suffix: shorter).
    pub fn set_len(&mut self, slot: usize, len: i64) {
        if let Some(l) = self.lens.get_mut(slot) {
            *l = len.clamp(0, (*l).max(0));
        }
    }

    pub(crate) fn record_len(&mut self, slot: usize, len: i64) {
        if let Some(l) = self.lens.get_mut(slot) {
            *l = len;
        }
    }

    /// Kind of the cached keys and values.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Bytes of key/value memory allocated.
    pub fn allocated_bytes(&self) -> i64 {
        let element = match self.kind {
            Kind::Float => 4,
            _ => 2,
        };
        2 * self.keys.len() as i64
            * self.lens.len() as i64
            * self.kv_heads
            * self.capacity
            * self.head_dim
            * element
    }

    /// Makes room for `needed` positions per slot (doubling), keeping what is cached.
    pub(crate) fn ensure_capacity(&mut self, needed: i64) -> Result<()> {
        let layers = self.num_layers;
        if needed > self.max_positions {
            return Err(ModelError::InvalidRequest(format!(
                "{needed} positions exceed the context length {}",
                self.max_positions
            )));
        }
        if needed <= self.capacity && self.keys.len() == layers {
            return Ok(());
        }
        // Grow by half again (or to what is needed, in whole blocks): a few copies over a long
        // generation, and no more than half the memory unused.
        let block = MIN_CAPACITY;
        let grown = self.capacity + self.capacity / 2;
        let capacity = grown
            .max((needed + block - 1) / block * block)
            .max(MIN_CAPACITY)
            .min(self.max_positions);
        let shape = [
            self.lens.len() as i64,
            self.kv_heads,
            capacity,
            self.head_dim,
        ];
        let grow = |old: Option<&Tensor>| -> Result<Tensor> {
            let fresh = Tensor::f_zeros(shape, (self.kind, self.device))?;
            if let Some(old) = old {
                fresh.f_narrow(2, 0, self.capacity)?.f_copy_(old)?;
            }
            Ok(fresh)
        };
        let mut keys = Vec::with_capacity(layers);
        let mut values = Vec::with_capacity(layers);
        for layer in 0..layers {
            keys.push(grow(self.keys.get(layer))?);
            values.push(grow(self.values.get(layer))?);
        }
        self.keys = keys;
        self.values = values;
        self.capacity = capacity;
        Ok(())
    }

    /// Copies slot `from` into slot `to` (compaction after a sequence finished).
    pub fn move_slot(&mut self, from: usize, to: usize) -> Result<()> {
        if from == to {
            return Ok(());
        }
        let len = self.len(from);
        if len > 0 {
            for cache in self.keys.iter().chain(&self.values) {
                let src = cache.f_narrow(0, from as i64, 1)?.f_narrow(2, 0, len)?;
                cache
                    .f_narrow(0, to as i64, 1)?
                    .f_narrow(2, 0, len)?
                    .f_copy_(&src)?;
            }
        }
        self.record_len(to, len);
        self.record_len(from, 0);
        Ok(())
    }

    /// Layer `layer`'s (keys, values) tensors, `[slots, kv_heads, capacity, head_dim]`.
    pub(crate) fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.keys[layer], &self.values[layer])
    }
}

/// The cache of one batch of sequences that advance together (same lengths): what
/// [`crate::llama::LlamaModel::forward`] takes.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) pool: Option<KvPool>,
}

impl KvCache {
    /// An empty cache (allocated by the first forward call, for its batch size).
    pub fn new() -> Self {
        Self { pool: None }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> i64 {
        self.pool.as_ref().map_or(0, |p| p.len(0))
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the cached positions beyond `len` (e.g. to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: i64) {
        if let Some(pool) = &mut self.pool {
            for slot in 0..pool.slots() {
                pool.set_len(slot, len);
            }
        }
    }
}

impl Default for KvCache {
    fn default() -> Self {
        Self::new()
    }
}
