//! The decoder's key/value cache: per layer, keys and values for up to `capacity` tokens.
//! Each layer keeps its own length because token reduction inside the LLM (and compression of
//! the cache during decoding) shortens the sequence from some layer on; RoPE positions of new
//! tokens continue from `next_position`, or from each layer's own counter when renumbered.

use crate::gpu::{DType, Gpu, Tensor};
use crate::Result;
use std::ops::Range;

pub struct LayerCache {
    /// `[capacity, kv_heads * head_dim]`, rows `0..len` valid.
    pub k: Tensor,
    pub v: Tensor,
    pub len: usize,
    /// Rows holding the image's visual tokens (what decoding-time compression reduces).
    pub visual: Range<usize>,
    /// RoPE position of this layer's next token in a renumbered cache.
    pub position: u32,
}

pub struct KvCache {
    pub layers: Vec<LayerCache>,
    capacity: usize,
    /// RoPE position the next appended token gets.
    pub next_position: u32,
    /// A reduced prefill renumbered positions: each layer continues from its own
    /// [`LayerCache::position`].
    pub renumbered: bool,
    /// Tokens decoded since the visual entries were last compressed (the rows whose attention
    /// scores the next compression).
    pub window: usize,
}

impl KvCache {
    pub fn new(gpu: &Gpu, layers: usize, capacity: usize, kv_dim: usize) -> Result<Self> {
        let layers = (0..layers)
            .map(|i| {
                Ok(LayerCache {
                    k: gpu.zeros(&[capacity, kv_dim], DType::F32, &format!("k cache {i}"))?,
                    v: gpu.zeros(&[capacity, kv_dim], DType::F32, &format!("v cache {i}"))?,
                    len: 0,
                    visual: 0..0,
                    position: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            capacity,
            next_position: 0,
            renumbered: false,
            window: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forget the contents (the buffers are kept for the next prompt).
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.len = 0;
            l.visual = 0..0;
            l.position = 0;
        }
        self.next_position = 0;
        self.renumbered = false;
        self.window = 0;
    }

    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.k.buffer_bytes() + l.v.buffer_bytes())
            .sum()
    }
}
