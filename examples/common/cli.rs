//! What every command-line example shares: clap parsing with checks that span several arguments,
//! exit statuses (2 for a bad command line, 1 for a failed run), the method list for `--help`,
//! the value parsers of options several examples take, loading a LLaVA model from a llava-hf
//! directory or a llama.cpp pair, and progress bars on stderr.
//! Each example includes this file as a module and uses the part it needs.
#![allow(dead_code)]

use clap::Parser;
use ficoco::gpu::{DType, Gpu};
use ficoco::model::{GgufPair, Llava, LoadOptions};
use ficoco::ops::GgmlType;
use ficoco::preprocess::{self, ChatTemplate, ImageProcessor, Tokenizer};
use ficoco::reduce::{every_method, KV_METHODS};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Parses `A`, applies `check` (errors reported like clap's own, exit 2), then runs (errors
/// exit 1).
pub fn main_with<A: Parser, E: std::fmt::Display>(
    check: impl FnOnce(&A) -> Result<(), String>,
    run: impl FnOnce(A) -> Result<(), E>,
) {
    let args = A::parse();
    if let Err(e) = check(&args) {
        A::command()
            .error(clap::error::ErrorKind::ArgumentConflict, e)
            .exit();
    }
    if let Err(e) = run(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The `--help` epilogue: every reduction method name, and the ones that also compress the KV
/// cache while decoding.
pub fn methods_help() -> String {
    format!(
        "Reduction methods (--reduce METHOD[:BUDGET]; @authors: the FiCoCo authors' code's \
         reading): {}\n\
         KV-cache methods (--reduce-kv METHOD[:KEEP][@EVERY]): {}\n\
         BUDGET: visual tokens left (64), a fraction of them (0.11) or LLM-prefill TFLOPs (1.5T).",
        every_method().join(", "),
        KV_METHODS.join(", ")
    )
}

pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f16" => Ok(DType::F16),
        "f32" => Ok(DType::F32),
        _ => Err("expected f16 or f32".into()),
    }
}

pub fn parse_quantize(s: &str) -> Result<GgmlType, String> {
    match s {
        "q8_0" => Ok(GgmlType::Q8_0),
        "q4_k" => Ok(GgmlType::Q4K),
        _ => Err("expected q8_0 or q4_k".into()),
    }
}

/// `--mmproj`'s checks: it pairs with an LLM GGUF file as `--model`, which without it runs
/// text-only (where the example can) or not at all.
pub fn check_pair(model: &Path, mmproj: Option<&Path>) -> Result<(), String> {
    let gguf = model.extension().is_some_and(|e| e == "gguf");
    match mmproj {
        Some(_) if !gguf => Err(format!(
            "--mmproj goes with a llama.cpp LLM file as --model (--model LLM.gguf --mmproj MMPROJ.gguf), not with the directory {}",
            model.display()
        )),
        Some(m) if m.extension().is_none_or(|e| e != "gguf") => Err(format!(
            "--mmproj {}: expected llama.cpp's vision file (a .gguf, often mmproj-*.gguf)",
            m.display()
        )),
        _ => Ok(()),
    }
}

/// A LLaVA model with its tokenizer, image preprocessing and chat template.
pub struct LlavaInputs {
    pub model: Llava,
    pub tokenizer: Tokenizer,
    pub processor: ImageProcessor,
    /// A pair's LLM template; a directory's prompt follows its tokenizer (`PromptFormat`).
    pub template: Option<ChatTemplate>,
}

impl LlavaInputs {
    /// A llava-hf directory (its decoder from the GGUF file `decoder` if given), or llama.cpp's
    /// pair: `model` the LLM file, `mmproj` the vision file.
    pub fn load(
        gpu: Arc<Gpu>,
        model: &Path,
        decoder: Option<&Path>,
        mmproj: Option<&Path>,
        opts: &LoadOptions,
    ) -> ficoco::Result<Self> {
        if let Some(mmproj) = mmproj {
            let pair = GgufPair::open(model, mmproj)?;
            let (tokenizer, processor) = (pair.tokenizer()?, pair.image_processor()?);
            let template = pair.chat_template();
            return Ok(Self {
                model: Llava::from_gguf_pair(gpu, pair, opts)?,
                tokenizer,
                processor,
                template,
            });
        }
        Ok(Self {
            tokenizer: Tokenizer::from_dir(model)?,
            processor: ImageProcessor::from_dir(model)?,
            model: match decoder {
                Some(file) => Llava::load_with_decoder(gpu, model, file, opts)?,
                None => Llava::load(gpu, model, opts)?,
            },
            template: None,
        })
    }

    /// The single-turn prompt asking `question` about the image.
    pub fn prompt(&self, question: &str) -> ficoco::Result<String> {
        Ok(preprocess::image_prompt(
            self.template.as_ref(),
            &self.tokenizer,
            question,
        )?)
    }
}

/// A bar over `len` steps, labelled; hidden when stderr is not a terminal.
pub fn progress(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} {elapsed}<{eta} {prefix}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

/// A spinner for work of unknown length (loading a model); none when `quiet`.
pub fn spinner_unless(quiet: bool, label: &str) -> ProgressBar {
    if quiet {
        ProgressBar::hidden()
    } else {
        spinner(label)
    }
}

/// A spinner for work of unknown length (loading a model).
pub fn spinner(label: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
