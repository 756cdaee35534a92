//! ficoco: LLaVA-class multimodal inference in WGSL compute shaders on wgpu, with training-free
//! visual-token reduction in the filter / correlate / compress paradigm.
//!
//! Layout: [`gpu`] owns the device and the caches, [`ops`] has one thin wrapper per WGSL kernel
//! family, [`model`] builds the vision tower, projector and decoder from those ops, and
//! [`preprocess`] turns images and text into model inputs, and [`pipeline`] asks one question
//! about one image the way the CLI and the browser demo both do.

pub mod clock;
pub mod error;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod preprocess;
pub mod reduce;

pub use error::{Error, Result};
