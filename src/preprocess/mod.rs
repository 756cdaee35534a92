//! Turning an image and a question into model inputs, exactly as the HF `LlavaProcessor` does:
//! [`ImageProcessor`] (CLIP's resize and crop or SigLIP's square resize, rescale, normalise;
//! Pillow-exact bicubic), [`Tokenizer`] (`tokenizer.json`), and the chat prompt (llava-1.5 or
//! ChatML, [`PromptFormat`]) with `<image>` expanded to the number of visual tokens
//! ([`chat_prompt`], [`build_prompt_ids`]).

mod chat;
mod gguf_vocab;
mod image;
mod prompt;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use image::{decode_image, load_image, Filter, ImageProcessor, ImageProcessorConfig, ResizeTo};
pub use prompt::{
    build_prompt_ids, chat_prompt, image_prompt, PromptFormat, PromptIds, IMAGE_PLACEHOLDER,
};
pub use tokenizer::{TextStream, Tokenizer};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("{path}: cannot decode the image ({message}); PNG and JPEG are supported")]
    Image { path: PathBuf, message: String },

    #[error("{path}: {field}: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },

    #[error("image preprocessing: {0}")]
    Pixels(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("prompt: {0}")]
    Prompt(String),
}

/// Normalised pixels, `[channels, height, width]` row-major, as the vision tower takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelValues {
    pub data: Vec<f32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}
