//! Chat templates: the Jinja template a model ships (GGUF `tokenizer.chat_template`,
//! `tokenizer_config.json`'s `chat_template`) rendered with minijinja, as transformers'
//! `apply_chat_template` renders it; ChatML when a model carries none.

use super::PreprocessError;
use serde::Serialize;

/// One turn of a conversation.
#[derive(Clone, Debug, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// ChatML, the format of Qwen2 and SmolLM, for models that carry no template.
const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
        }
    }

    pub fn chatml() -> Self {
        Self::new(CHATML)
    }

    /// `tokenizer.chat_template` of a GGUF file, or ChatML when it has none.
    pub fn from_gguf(file: &crate::model::Gguf) -> Self {
        file.meta("tokenizer.chat_template")
            .and_then(crate::model::MetaValue::as_str)
            .map_or_else(Self::chatml, Self::new)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends where the
    /// assistant's answer begins. `bos` / `eos` are the tokenizer's special tokens, which some
    /// templates write themselves.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos: Option<&str>,
        eos: Option<&str>,
    ) -> Result<String, PreprocessError> {
        let err = |e: minijinja::Error| PreprocessError::Prompt(format!("chat template: {e:#}"));
        let mut env = minijinja::Environment::new();
        // transformers renders templates with these two on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &self.source).map_err(err)?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos.unwrap_or(""),
            eos_token => eos.unwrap_or(""),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(err)
    }
}
