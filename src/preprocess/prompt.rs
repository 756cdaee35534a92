//! The chat prompts (llava-1.5's, and ChatML for Qwen2-based models) and their token ids with
//! the image placeholder expanded.

use super::{ChatMessage, ChatTemplate, PreprocessError, Tokenizer};

/// The placeholder users write in prompts.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// Prompt token ids; `ids[image_start..image_start + image_len]` are image tokens that the
/// projected visual features replace, and `ids[image_start + image_len..text_end]` is the text
/// (question) that task-aware reductions in the LLM score with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptIds {
    pub ids: Vec<u32>,
    pub image_start: usize,
    pub image_len: usize,
    pub text_end: usize,
}

/// `USER: <image>\n{question} ASSISTANT:`, the llava-1.5 chat template.
pub fn chat_prompt(question: &str) -> String {
    PromptFormat::Llava15.prompt(question)
}

/// The single-turn, single-image prompt of a model's chat template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptFormat {
    /// `USER: <image>\n{question} ASSISTANT:` (llava-1.5, Vicuna).
    Llava15,
    /// `<|im_start|>user\n<image>\n{question}<|im_end|>\n<|im_start|>assistant\n`: what the
    /// ChatML template of llava-interleave-qwen renders for one user turn holding an image and a
    /// text (images first), with the generation prompt and no system turn.
    ChatMl,
}

impl PromptFormat {
    /// ChatML when the tokenizer has ChatML's turn tokens (Qwen2's), else llava-1.5.
    pub fn detect(tokenizer: &Tokenizer) -> Self {
        let chatml = ["<|im_start|>", "<|im_end|>"]
            .iter()
            .all(|t| tokenizer.token_id(t).is_some());
        if chatml {
            PromptFormat::ChatMl
        } else {
            PromptFormat::Llava15
        }
    }

    pub fn prompt(self, question: &str) -> String {
        match self {
            PromptFormat::Llava15 => format!("USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT:"),
            PromptFormat::ChatMl => format!(
                "<|im_start|>user\n{IMAGE_PLACEHOLDER}\n{question}<|im_end|>\n\
                 <|im_start|>assistant\n"
            ),
        }
    }
}

/// The single-turn prompt asking `question` about one image: `template` (a chat template, e.g.
/// a GGUF file's) rendered with the image before the question, as llava-interleave's template
/// places it, or, without one, the format [`PromptFormat::detect`] picks.
pub fn image_prompt(
    template: Option<&ChatTemplate>,
    tokenizer: &Tokenizer,
    question: &str,
) -> Result<String, PreprocessError> {
    let Some(template) = template else {
        return Ok(PromptFormat::detect(tokenizer).prompt(question));
    };
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.token(i));
    let content = format!("{IMAGE_PLACEHOLDER}\n{question}");
    template.render(
        &[ChatMessage::new("user", &content)],
        true,
        token(tokenizer.bos_id()).as_deref(),
        token(tokenizer.eos_id()).as_deref(),
    )
}

/// Tokenize `text`, which holds the image token (`<image>`) exactly once, after expanding it to
/// `visual_tokens` copies, as `LlavaProcessor` does (so the text around it tokenizes the same).
pub fn build_prompt_ids(
    tokenizer: &Tokenizer,
    text: &str,
    image_token_id: u32,
    visual_tokens: usize,
) -> Result<PromptIds, PreprocessError> {
    let placeholder = tokenizer.token(image_token_id).ok_or_else(|| {
        PreprocessError::Tokenizer(format!(
            "the model's image token id {image_token_id} is not in the tokenizer's vocabulary \
             ({} tokens); does tokenizer.json belong to this model?",
            tokenizer.vocab_size()
        ))
    })?;
    let count = text.matches(placeholder.as_str()).count();
    if count != 1 {
        return Err(PreprocessError::Prompt(format!(
            "the prompt must contain {placeholder} exactly once, it contains it {count} times"
        )));
    }
    let expanded = text.replacen(&placeholder, &placeholder.repeat(visual_tokens), 1);
    let ids = tokenizer.encode(&expanded, true)?;
    let image_start = ids
        .iter()
        .position(|&t| t == image_token_id)
        .unwrap_or(ids.len());
    let image_len = ids[image_start..]
        .iter()
        .take_while(|&&t| t == image_token_id)
        .count();
    let total = ids.iter().filter(|&&t| t == image_token_id).count();
    if image_len != visual_tokens || total != visual_tokens {
        return Err(PreprocessError::Tokenizer(format!(
            "{placeholder} x {visual_tokens} tokenized to {total} image tokens ({image_len} \
             contiguous); the tokenizer must keep {placeholder} as one special token"
        )));
    }
    Ok(PromptIds {
        text_end: ids.len(),
        ids,
        image_start,
        image_len,
    })
}
