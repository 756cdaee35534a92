//! The LLaVA model: configuration and weights, the vision tower (CLIP or SigLIP), the
//! projector, the Llama-family decoder (Llama, Qwen2) with its KV cache, and generation.

pub mod config;
mod decoder;
mod kv_cache;
mod linear;
mod llava;
mod projector;
mod vision;
pub mod weights;

pub use config::{LlavaConfig, TextConfig, VisionConfig};
pub use decoder::Decoder;
pub use kv_cache::{KvCache, LayerCache};
pub use llava::{GenerateOptions, Generation, Llava, LoadOptions, Sampling, StopReason, Timings};
pub use projector::Projector;
pub use vision::VisionTower;
pub use weights::{HostTensor, WeightFile};
