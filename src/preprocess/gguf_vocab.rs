//! A `tokenizers` tokenizer rebuilt from a GGUF file's `tokenizer.ggml.*` metadata: a byte-level
//! BPE vocabulary and merges (`gpt2`) with the pre-tokenizer split that `tokenizer.ggml.pre`
//! names (as llama.cpp splits), or a sentencepiece vocabulary (`llama`, Llama-2 and Vicuna
//! files) whose merges follow the token scores; control and user-defined tokens matched whole,
//! BOS when the file asks for it.

use super::{PreprocessError, Tokenizer};
use crate::model::{Gguf, MetaValue};
use serde_json::{json, Value};

/// GPT-2's split, also SmolLM's and StarCoder's after their single-digit split.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values understood here, and the splits they stand for.
const PRE_TOKENIZERS: &[(&str, &[&str])] = &[
    ("default", &[GPT2_SPLIT]),
    ("gpt2", &[GPT2_SPLIT]),
    // Digits one by one, then GPT-2's split (SmolLM's tokenizer.json: Digits + ByteLevel).
    ("smollm", &[r"\p{N}", GPT2_SPLIT]),
    ("starcoder", &[r"\p{N}", GPT2_SPLIT]),
    ("qwen2", &[QWEN2_SPLIT]),
    ("llama-bpe", &[LLAMA3_SPLIT]),
    ("llama3", &[LLAMA3_SPLIT]),
];

/// llama.cpp's token types.
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

impl Tokenizer {
    /// The tokenizer a GGUF file describes. Only byte-level BPE vocabularies
    /// (`tokenizer.ggml.model` = `gpt2`, what Llama-3, Qwen2 and SmolLM files carry) are built;
    /// sentencepiece ones are refused with an error.
    pub fn from_gguf(file: &Gguf) -> Result<Self, PreprocessError> {
        let err = |message: String| PreprocessError::File {
            path: file.path().to_path_buf(),
            message,
        };
        let get = |key: &str| {
            file.meta(key).ok_or_else(|| {
                err(format!(
                    "GGUF metadata {key} is missing: the file carries no usable tokenizer"
                ))
            })
        };
        let model = get("tokenizer.ggml.model")?.as_str().unwrap_or_default();
        let spm = match model {
            "gpt2" => false,
            "llama" => true,
            _ => {
                return Err(err(format!(
                    "tokenizer.ggml.model {model:?}: supported are byte-level BPE (\"gpt2\") and \
                     sentencepiece (\"llama\") vocabularies"
                )))
            }
        };
        let pre = file
            .meta("tokenizer.ggml.pre")
            .and_then(MetaValue::as_str)
            .unwrap_or("default");
        let splits = if spm {
            &[][..]
        } else {
            PRE_TOKENIZERS
                .iter()
                .find(|(name, _)| *name == pre)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    err(format!(
                        "tokenizer.ggml.pre {pre:?} is not supported: supported are {}",
                        PRE_TOKENIZERS
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?
        };
        let strings = |key: &str| -> Result<Vec<&str>, PreprocessError> {
            let items = get(key)?
                .as_array()
                .ok_or_else(|| err(format!("{key} is not an array")))?;
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| err(format!("{key} holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match file.meta("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .ok_or_else(|| err("tokenizer.ggml.token_type is not an array".into()))?
                .iter()
                .map(|t| t.as_i64().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let merges: Vec<Value> = if spm {
            let scores: Vec<f32> = match file.meta("tokenizer.ggml.scores") {
                Some(v) => v
                    .as_array()
                    .filter(|a| a.len() == tokens.len())
                    .ok_or_else(|| err("tokenizer.ggml.scores is not one number per token".into()))?
                    .iter()
                    .map(|s| s.as_f32().unwrap_or(0.0))
                    .collect(),
                None => vec![0.0; tokens.len()],
            };
            score_merges(&tokens, &scores, &types)
        } else {
            strings("tokenizer.ggml.merges")?
                .into_iter()
                .map(|m| {
                    m.split_once(' ')
                        .map(|(a, b)| json!([a, b]))
                        .ok_or_else(|| err(format!("merge {m:?} is not two tokens")))
                })
                .collect::<Result<_, _>>()?
        };
        let vocab: serde_json::Map<String, Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), json!(i)))
            .collect();
        let added: Vec<Value> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, &ty))| ty == CONTROL || ty == USER_DEFINED || ty == UNKNOWN)
            .map(|(id, (t, &ty))| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": ty != USER_DEFINED})
            })
            .collect();
        let id = |key: &str| -> Result<Option<u32>, PreprocessError> {
            match file.meta(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(i) if (i as usize) < tokens.len() => Ok(Some(i as u32)),
                    _ => Err(err(format!(
                        "{key} {v:?} is not a token id of the {}-token vocabulary",
                        tokens.len()
                    ))),
                },
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?;
        // llama.cpp adds BOS to sentencepiece vocabularies unless told not to.
        let add_bos = file
            .meta("tokenizer.ggml.add_bos_token")
            .and_then(MetaValue::as_bool)
            .unwrap_or(spm);
        let (pre_tokenizer, decoder) = if spm {
            // Spaces become U+2581 and one is prepended to the text (not after special tokens,
            // as transformers and llama.cpp do); no split, so merges may cross words as
            // sentencepiece's do.
            let prefix = file
                .meta("tokenizer.ggml.add_space_prefix")
                .and_then(MetaValue::as_bool)
                .unwrap_or(true);
            let scheme = if prefix { "first" } else { "never" };
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": scheme, "split": false}),
                json!({"type": "Sequence", "decoders": decoders}),
            )
        } else {
            let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
            let mut pre_tokenizers: Vec<Value> = splits.iter().map(|s| split(s)).collect();
            pre_tokenizers.push(byte_level.clone());
            (
                json!({"type": "Sequence", "pretokenizers": pre_tokenizers}),
                byte_level,
            )
        };
        let post_processor = match (add_bos, bos) {
            (true, Some(b)) => {
                let t = tokens[b as usize];
                json!({"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                       "special_tokens": {t: {"id": t, "ids": [b], "tokens": [t]}}})
            }
            (true, None) => return Err(err(
                "tokenizer.ggml.add_bos_token is set but tokenizer.ggml.bos_token_id is missing"
                    .into(),
            )),
            (false, _) => Value::Null,
        };
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": decoder,
            "model": {"type": "BPE", "dropout": null,
                      "unk_token": unk.map(|u| tokens[u as usize]),
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": spm, "byte_fallback": spm, "ignore_merges": false,
                      "vocab": vocab, "merges": merges},
        });
        let bytes = serde_json::to_vec(&spec).map_err(|e| err(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            err(format!(
                "cannot build the tokenizer from GGUF metadata: {e}"
            ))
        })?;
        Ok(Tokenizer::new(inner, bos, eos))
    }
}

/// Sentencepiece's merges as BPE merges: every split of a normal token into two normal tokens,
/// ranked by the merged token's score (highest first, then by id), which is the order
/// sentencepiece's BPE merges in and the one transformers' converter derives.
fn score_merges(tokens: &[&str], scores: &[f32], types: &[i64]) -> Vec<Value> {
    let ids: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| types[i] == NORMAL)
        .map(|(i, &t)| (t, i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (&t, &id) in &ids {
        for (at, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(at);
            if let (Some(&ia), true) = (ids.get(a), ids.contains_key(b)) {
                merges.push((scores[id], id, ia, a, b));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    merges
        .into_iter()
        .map(|(_, _, _, a, b)| json!([a, b]))
        .collect()
}
