//! Answer a question about an image with a LLaVA model, or chat with a llama.cpp GGUF decoder.
//!
//! cargo run --release --example generate -- --model assets/llava-vqa \
//!     --image assets/vqa-test/images/000004.png --prompt "What character is on the label?"
//! cargo run --release --example generate -- \
//!     --model weights/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --prompt "Write a haiku."
//! cargo run --release --example generate -- --model LLM.gguf --mmproj MMPROJ.gguf \
//!     --image photo.png --prompt "What is in the picture?"

#[path = "common/cli.rs"]
mod cli;

use clap::Parser;
use ficoco::gpu::{DType, Gpu, GpuOptions};
use ficoco::model::{GenerateOptions, Gguf, LoadOptions, Sampling, TextModel};
use ficoco::ops::GgmlType;
use ficoco::pipeline;
use ficoco::preprocess::{self, ChatMessage, ChatTemplate, TextStream, Tokenizer};
use ficoco::reduce::{KvReduceSpec, ReduceSpec};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// Answer a question about an image with a LLaVA model, or chat with a llama.cpp GGUF decoder.
#[derive(Parser)]
#[command(name = "generate", after_help = cli::methods_help())]
struct Args {
    /// llava-hf model directory (the trained demo model by default), or a llama.cpp GGUF file
    /// (llama or qwen2 decoder): with --mmproj a LLaVA model, without it text-only generation,
    /// with the file's tokenizer and chat template either way
    #[arg(long, default_value = "assets/llava-vqa")]
    model: PathBuf,
    /// Input image (PNG or JPEG); required for LLaVA models
    #[arg(long)]
    image: Option<PathBuf>,
    /// Question, wrapped in the model's chat template (llava-1.5, or ChatML when the tokenizer
    /// has <|im_start|> / <|im_end|>)
    #[arg(
        long,
        required_unless_present = "raw_prompt",
        conflicts_with = "raw_prompt"
    )]
    prompt: Option<String>,
    /// Full prompt used as given; must contain <image> once for a LLaVA model
    #[arg(long)]
    raw_prompt: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Greedy decoding (the default)
    #[arg(long, conflicts_with = "temperature")]
    greedy: bool,
    /// Sample at this temperature (> 0), with --top-p and --seed
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus mass in (0, 1]
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampling seed
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Storage type of dense weights: f16 or f32
    #[arg(long, default_value = "f16", value_parser = cli::parse_dtype)]
    dtype: DType,
    /// Quantise the decoder's dense matrices while loading: q8_0 or q4_k (GGUF tensors that are
    /// already quantised stay as they are)
    #[arg(long, value_parser = cli::parse_quantize)]
    quantize: Option<GgmlType>,
    /// Run the LLaVA model with its language model from this llama.cpp GGUF file (llama or
    /// qwen2; it must be the model's own LLM, e.g. quantised): the vision tower, projector,
    /// tokenizer and template stay the model directory's
    #[arg(long, value_name = "FILE.gguf")]
    decoder: Option<PathBuf>,
    /// llama.cpp's vision file (mmproj-*.gguf: CLIP or SigLIP tower and MLP projector) to pair
    /// with --model LLM.gguf: the tower, projector and image preprocessing come from it, the
    /// decoder, tokenizer and chat template from the LLM file
    #[arg(long, value_name = "FILE.gguf", conflicts_with = "decoder")]
    mmproj: Option<PathBuf>,
    /// Print one JSON object instead of streaming text
    #[arg(long)]
    json: bool,
    /// Write the prefill's last-position logits (safetensors, tensor `logits`)
    #[arg(long, value_name = "FILE")]
    dump_logits: Option<PathBuf>,
    /// Visual-token reduction METHOD[:BUDGET] (methods below); without a budget 64/576 of the
    /// visual tokens are kept
    #[arg(long, default_value = "none")]
    reduce: ReduceSpec,
    /// While decoding, every EVERY generated tokens (default 16) compress each layer's visual KV
    /// entries with METHOD, scored by the attention the generated tokens paid, halving the
    /// excess over KEEP entries (count or fraction; default 0.5)
    #[arg(long, value_name = "METHOD[:KEEP][@EVERY]")]
    reduce_kv: Option<KvReduceSpec>,
    /// After an LLM-side reduction, renumber RoPE positions contiguously (by default tokens keep
    /// their original positions)
    #[arg(long)]
    renumber_positions: bool,
    /// Write the preprocessed image with the kept and merged patches drawn over it: each patch
    /// tinted by the token that absorbed it, survivors outlined, pruned patches dimmed
    #[arg(long, value_name = "FILE.png")]
    show_kept: Option<PathBuf>,
}

/// What clap cannot say: which options need an image, and value ranges.
fn check(a: &Args) -> Result<(), String> {
    cli::check_pair(&a.model, a.mmproj.as_deref())?;
    if is_text_only(a) {
        if a.decoder.is_some() {
            return Err("--decoder goes with a LLaVA model directory as --model".into());
        }
        if a.image.is_some() {
            return Err("a GGUF model without --mmproj runs text-only: leave out --image, or add llama.cpp's vision file with --mmproj FILE.gguf".into());
        }
        if a.reduce.method != "none" || a.reduce_kv.is_some() || a.show_kept.is_some() {
            return Err("--reduce, --reduce-kv and --show-kept need an image: they do not apply to a text-only GGUF model".into());
        }
    } else if a.image.is_none() {
        return Err("--image is required for a LLaVA model".into());
    }
    if a.temperature.is_some_and(|t| t <= 0.0) {
        return Err("--temperature must be > 0 (use --greedy for argmax)".into());
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        return Err("--top-p must be in (0, 1]".into());
    }
    Ok(())
}

fn main() {
    cli::main_with(check, run);
}

/// Prints each generated token's text as it completes (nothing when `quiet`).
fn printer(tokenizer: &Tokenizer, quiet: bool) -> impl FnMut(u32) -> bool + '_ {
    let mut stream = TextStream::new(tokenizer);
    move |t| {
        if !quiet {
            if let Ok(piece) = stream.push(t) {
                print!("{piece}");
                let _ = std::io::stdout().flush();
            }
        }
        true
    }
}

/// A GGUF decoder on its own.
fn is_text_only(a: &Args) -> bool {
    a.model.extension().is_some_and(|e| e == "gguf") && a.mmproj.is_none()
}

fn sampling(args: &Args) -> Sampling {
    match args.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::TopP {
            temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
    }
}

/// Text-only generation from a GGUF file: its tokenizer, chat template and decoder.
fn run_gguf(args: Args) -> ficoco::Result<()> {
    let clock = std::time::Instant::now();
    let gpu = Arc::new(Gpu::new_blocking(&GpuOptions::from_env()?)?);
    let file = Gguf::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let text = match (&args.prompt, &args.raw_prompt) {
        (Some(q), _) => {
            let token = |id: Option<u32>| id.and_then(|i| tokenizer.token(i));
            ChatTemplate::from_gguf(&file).render(
                &[ChatMessage::new("user", q)],
                true,
                token(tokenizer.bos_id()).as_deref(),
                token(tokenizer.eos_id()).as_deref(),
            )?
        }
        (_, Some(raw)) => raw.clone(),
        _ => unreachable!("clap requires one of them"),
    };
    let ids = tokenizer.encode(&text, true)?;
    let opts = LoadOptions {
        dtype: args.dtype,
        quantize: args.quantize,
        max_prompt_tokens: ids.len().max(1),
        max_context: ids.len().max(1) + args.max_new_tokens,
    };
    if !args.json {
        eprintln!("adapter: {}", gpu.describe());
    }
    let loading = cli::spinner_unless(args.json, &format!("loading {}", args.model.display()));
    let mut model = TextModel::from_gguf(gpu.clone(), file, &opts)?;
    loading.finish_and_clear();
    let load_ms = clock.elapsed().as_secs_f64() * 1e3;
    let gen_opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: sampling(&args),
        stop_tokens: tokenizer.eos_id().into_iter().collect(),
        keep_prefill_logits: args.dump_logits.is_some(),
    };
    let json = args.json;
    let out = pollster::block_on(model.generate(&ids, &gen_opts, printer(&tokenizer, json)))?;
    if let (Some(path), Some(logits)) = (&args.dump_logits, &out.prefill_logits) {
        write_logits(path, logits)?;
    }
    let t = out.timings;
    let decoded = out.tokens.len().max(2) - 1;
    let prefill_tps = ids.len() as f64 / (t.prefill_ms / 1e3);
    let decode_tps = decoded as f64 / (t.decode_ms / 1e3);
    if json {
        let report = serde_json::json!({
            "model": args.model.display().to_string(),
            "adapter": gpu.describe(),
            "prompt_tokens": ids.len(),
            "generated_tokens": out.tokens.len(),
            "tokens": out.tokens,
            "text": tokenizer.decode(&out.tokens, true)?,
            "stop": format!("{:?}", out.stop),
            "weight_bytes": model.weight_bytes(),
            "kv_cache_bytes": model.kv_cache_bytes(),
            "timings": {
                "load_ms": load_ms,
                "prefill_ms": t.prefill_ms,
                "decode_ms": t.decode_ms,
                "prefill_tokens_per_s": prefill_tps,
                "decode_tokens_per_s": decode_tps,
            },
        });
        println!("{report}");
    } else {
        println!();
        eprintln!(
            "{} prompt tokens, {} generated; load {load_ms:.0} ms, prefill {:.0} ms ({prefill_tps:.1} tokens/s), decode {:.1} ms/token ({decode_tps:.2} tokens/s)",
            ids.len(),
            out.tokens.len(),
            t.prefill_ms,
            t.decode_ms / decoded as f64
        );
    }
    Ok(())
}

fn run(args: Args) -> ficoco::Result<()> {
    if is_text_only(&args) {
        return run_gguf(args);
    }
    let clock = std::time::Instant::now();
    let gpu = Arc::new(Gpu::new_blocking(&GpuOptions::from_env()?)?);
    let opts = LoadOptions {
        dtype: args.dtype,
        quantize: args.quantize,
        ..LoadOptions::default()
    };
    let loading = cli::spinner_unless(args.json, &format!("loading {}", args.model.display()));
    let inputs = cli::LlavaInputs::load(
        gpu.clone(),
        &args.model,
        args.decoder.as_deref(),
        args.mmproj.as_deref(),
        &opts,
    )?;
    loading.finish_and_clear();
    let text = match (&args.prompt, &args.raw_prompt) {
        (Some(q), _) => inputs.prompt(q)?,
        (_, Some(raw)) => raw.clone(),
        _ => unreachable!("clap requires one of them"),
    };
    let cli::LlavaInputs {
        mut model,
        tokenizer,
        processor,
        ..
    } = inputs;
    let load_ms = clock.elapsed().as_secs_f64() * 1e3;
    if !args.json {
        eprintln!("adapter: {}", gpu.describe());
    }

    let image = preprocess::load_image(args.image.as_ref().expect("checked"))?;
    let pixels = processor.preprocess(&image)?;
    let prepared = pipeline::prepare(
        &mut model,
        &tokenizer,
        &text,
        &args.reduce,
        args.reduce_kv.as_ref(),
        args.renumber_positions,
        args.show_kept.is_some(),
    )?;
    if !args.json && args.reduce.method != "none" {
        eprintln!(
            "reduce {}: {} ({} vs {} unreduced)",
            args.reduce.method, prepared.schedule, prepared.flops, prepared.flops_unreduced
        );
    }
    let gen_opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: sampling(&args),
        stop_tokens: tokenizer.eos_id().into_iter().collect(),
        keep_prefill_logits: args.dump_logits.is_some(),
    };
    let json = args.json;
    let out = pollster::block_on(model.generate(
        &pixels,
        &prepared.prompt,
        &gen_opts,
        printer(&tokenizer, json),
    ))?;
    let text = tokenizer.decode(&out.tokens, true)?;
    if let (Some(path), Some(logits)) = (&args.dump_logits, &out.prefill_logits) {
        write_logits(path, logits)?;
    }
    if let Some(path) = &args.show_kept {
        let overlay = pollster::block_on(pipeline::kept_overlay(&model, &processor, &image))?;
        overlay
            .save(path)
            .map_err(|e| ficoco::Error::file(path, e))?;
    }
    if json {
        println!("{}", prepared.report(&model, &out, &text, load_ms));
    } else {
        println!();
        let t = out.timings;
        let per_token = t.decode_ms / (out.tokens.len().max(2) - 1) as f64;
        eprintln!(
            "{} prompt tokens ({} visual), {} generated; load {load_ms:.0} ms, vision {:.0} ms, prefill {:.0} ms, decode {:.1} ms/token",
            out.prompt_tokens,
            out.visual_tokens,
            out.tokens.len(),
            t.vision_ms,
            t.prefill_ms,
            per_token
        );
    }
    Ok(())
}

fn write_logits(path: &std::path::Path, logits: &[f32]) -> ficoco::Result<()> {
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![logits.len()],
        bytemuck::cast_slice(logits),
    )
    .map_err(|e| ficoco::Error::file(path, e))?;
    let bytes = safetensors::serialize([("logits", view)], None)
        .map_err(|e| ficoco::Error::file(path, e))?;
    std::fs::write(path, bytes).map_err(|e| ficoco::Error::file(path, e))
}
