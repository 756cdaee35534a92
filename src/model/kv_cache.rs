//! The decoder's key/value cache: per layer, keys and values for up to `capacity` tokens.
//! Each layer keeps its own length because token reduction inside the LLM shortens the
//! sequence from some layer on; RoPE positions of new tokens continue from `next_position`.

use crate::gpu::{DType, Gpu, Tensor};
use crate::Result;

pub struct LayerCache {
    /// `[capacity, kv_heads * head_dim]`, rows `0..len` valid.
    pub k: Tensor,
    pub v: Tensor,
    pub len: usize,
}

pub struct KvCache {
    pub layers: Vec<LayerCache>,
    capacity: usize,
    /// RoPE position the next appended token gets.
    pub next_position: u32,
    /// A reduced prefill renumbered positions: each layer's next position is its own length.
    pub renumbered: bool,
}

impl KvCache {
    pub fn new(gpu: &Gpu, layers: usize, capacity: usize, kv_dim: usize) -> Result<Self> {
        let layers = (0..layers)
            .map(|i| {
                Ok(LayerCache {
                    k: gpu.zeros(&[capacity, kv_dim], DType::F32, &format!("k cache {i}"))?,
                    v: gpu.zeros(&[capacity, kv_dim], DType::F32, &format!("v cache {i}"))?,
                    len: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            capacity,
            next_position: 0,
            renumbered: false,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forget the contents (the buffers are kept for the next prompt).
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.len = 0;
        }
        self.next_position = 0;
        self.renumbered = false;
    }

    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.k.buffer_bytes() + l.v.buffer_bytes())
            .sum()
    }
}
