//! Image, tokenizer and prompt preprocessing (being written).
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("{0}")]
    Other(String),
}
// Placeholder types until the real module lands (the preprocess helper replaces this file).
pub struct PixelValues {
    pub data: Vec<f32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}
pub struct PromptIds {
    pub ids: Vec<u32>,
    pub image_start: usize,
    pub image_len: usize,
}
