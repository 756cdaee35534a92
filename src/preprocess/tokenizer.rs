//! `tokenizer.json` through the `tokenizers` crate, plus the special tokens that
//! `tokenizer_config.json` names and a streaming detokenizer.

use super::PreprocessError;
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> PreprocessError {
    PreprocessError::Tokenizer(e.to_string())
}

/// `"</s>"` or `{"content": "</s>", ...}` as `tokenizer_config.json` writes special tokens.
fn special_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    let v = cfg.get(key)?;
    v.as_str()
        .or_else(|| v.get("content").and_then(|c| c.as_str()))
        .map(str::to_owned)
}

impl Tokenizer {
    /// Load `tokenizer.json` and, when present, `tokenizer_config.json` (for BOS/EOS) from a
    /// model directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, PreprocessError> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(PreprocessError::File {
                path,
                message: "missing; the model directory needs the HF fast tokenizer file \
                          (tokenizer.json)"
                    .into(),
            });
        }
        let json = std::fs::read(&path).map_err(|e| PreprocessError::File {
            path: path.clone(),
            message: format!("cannot read the tokenizer: {e}"),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = std::fs::read_to_string(&cfg_path).ok();
        Self::from_parts(&json, cfg.as_deref(), &path, &cfg_path)
    }

    /// [`Self::from_dir`] from files already in memory (the browser fetches them):
    /// `tokenizer.json`'s bytes and, when the model has one, `tokenizer_config.json`'s text.
    pub fn from_bytes(
        tokenizer_json: &[u8],
        tokenizer_config: Option<&str>,
    ) -> Result<Self, PreprocessError> {
        Self::from_parts(
            tokenizer_json,
            tokenizer_config,
            Path::new("tokenizer.json"),
            Path::new("tokenizer_config.json"),
        )
    }

    /// `json_path` and `cfg_path` name the sources in errors.
    fn from_parts(
        json: &[u8],
        config: Option<&str>,
        json_path: &Path,
        cfg_path: &Path,
    ) -> Result<Self, PreprocessError> {
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| PreprocessError::File {
            path: json_path.to_path_buf(),
            message: format!("cannot parse the tokenizer: {e}"),
        })?;
        let cfg: serde_json::Value = match config {
            Some(text) => serde_json::from_str(text).map_err(|e| PreprocessError::File {
                path: cfg_path.to_path_buf(),
                message: e.to_string(),
            })?,
            None => serde_json::Value::Null,
        };
        let lookup = |key: &str, fallback: &str| {
            let name = special_token(&cfg, key).unwrap_or_else(|| fallback.to_owned());
            inner.token_to_id(&name)
        };
        let bos = lookup("bos_token", "<s>");
        let eos = lookup("eos_token", "</s>");
        Ok(Tokenizer { inner, bos, eos })
    }

    pub(crate) fn new(inner: tokenizers::Tokenizer, bos: Option<u32>, eos: Option<u32>) -> Self {
        Tokenizer { inner, bos, eos }
    }

    /// Token ids of `text`, with the tokenizer's post-processor (BOS) when `add_special`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, PreprocessError> {
        Ok(self
            .inner
            .encode(text, add_special)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, PreprocessError> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of `token`, which is added as a special token after the vocabulary when the
    /// tokenizer lacks it: a llama.cpp LLM file has no `<image>`, so the placeholder becomes a
    /// virtual token, one that only marks where the visual embeddings go.
    pub fn ensure_special_token(&mut self, token: &str) -> u32 {
        if let Some(id) = self.inner.token_to_id(token) {
            return id;
        }
        self.inner
            .add_special_tokens(&[tokenizers::AddedToken::from(token, true)]);
        self.inner
            .token_to_id(token)
            .expect("a token just added has an id")
    }

    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns generated ids into text pieces as they arrive. A piece is released only once it no
/// longer ends in an incomplete UTF-8 sequence (byte-fallback tokens), and pieces are decoded
/// with their left context so word-initial spaces come out right.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Add one token; returns the newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, PreprocessError> {
        self.ids.push(id);
        self.release(false)
    }

    /// Whatever is still held back (an incomplete character at the end of generation).
    pub fn finish(&mut self) -> Result<String, PreprocessError> {
        self.release(true)
    }

    fn release(&mut self, force: bool) -> Result<String, PreprocessError> {
        let before = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], true)?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..], true)?;
        let complete = force || !now.ends_with('\u{FFFD}');
        match now.get(before.len()..) {
            Some(piece) if complete && now.len() > before.len() => {
                let piece = piece.to_owned();
                self.prefix = self.read;
                self.read = self.ids.len();
                Ok(piece)
            }
            _ => Ok(String::new()),
        }
    }
}
