//! The LLaVA model: configuration and weights, the vision tower (CLIP or SigLIP), the
//! projector, the Llama-family decoder (Llama, Qwen2) with its KV cache, and generation.

pub mod config;
mod decoder;
mod generate;
pub mod gguf;
mod kv_cache;
mod linear;
mod llava;
mod mmproj;
mod projector;
mod text_model;
mod vision;
pub mod weights;

pub use config::{LlavaConfig, TextConfig, VisionConfig};
pub use decoder::Decoder;
pub use generate::{GenerateOptions, Generation, Sampling, StopReason, Timings};
pub use gguf::{Gguf, GgufTensor, MetaValue};
pub use kv_cache::{KvCache, LayerCache};
pub use linear::WeightStore;
pub use llava::{Llava, LoadOptions};
pub use mmproj::GgufPair;
pub use projector::Projector;
pub use text_model::TextModel;
pub use vision::VisionTower;
pub use weights::{HostTensor, WeightFile};
