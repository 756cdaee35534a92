//! Accuracy of a LLaVA model on a visual-QA set (the JSONL `make_vqa` writes), unreduced or
//! with a reduction, or a sweep of every reduction method over visual-token budgets.
//!
//! cargo run --release --example eval -- --model DIR --set assets/vqa-test/questions.jsonl \
//!     [--reduce SPEC] [--limit N] [--json]
//! cargo run --release --example eval -- --model DIR --set FILE --sweep [--out DIR] [--resume]

#[path = "../common/cli.rs"]
mod cli;

mod plot;

use clap::Parser;
use ficoco::gpu::{Gpu, GpuOptions};
use ficoco::model::{GenerateOptions, Llava, LoadOptions, Sampling};
use ficoco::ops::GgmlType;
use ficoco::pipeline;
use ficoco::preprocess::{self, ChatTemplate, PixelValues, Tokenizer};
use ficoco::reduce::budget::Budget;
use ficoco::reduce::flops::Flops;
use ficoco::reduce::schedule::Schedule;
use ficoco::reduce::{every_method, ReduceSpec};
use ficoco::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Accuracy of a LLaVA model on a visual-QA set, unreduced or with a reduction, or a sweep of
/// every reduction method over visual-token budgets.
#[derive(Parser)]
#[command(name = "eval", after_help = cli::methods_help())]
struct Args {
    /// Model directory, or a llama.cpp LLM file (FILE.gguf) with --mmproj
    #[arg(long, default_value = "assets/llava-vqa")]
    model: PathBuf,
    /// Questions JSONL ({"image","question","answer","type"}; image paths relative to the file)
    #[arg(long, required_unless_present = "replot")]
    set: Option<PathBuf>,
    /// METHOD[:BUDGET] as in generate
    #[arg(long, default_value = "none")]
    reduce: ReduceSpec,
    /// Evaluate the first N questions only
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Quantise the decoder's matrices while loading: q8_0 or q4_k
    #[arg(long, value_parser = cli::parse_quantize)]
    quantize: Option<GgmlType>,
    /// Run the LLaVA model with its language model from this llama.cpp GGUF file (llama or
    /// qwen2; it must be the model's own LLM, e.g. quantised): the vision tower, projector,
    /// tokenizer and template stay the model directory's
    #[arg(long, value_name = "FILE.gguf")]
    decoder: Option<PathBuf>,
    /// llama.cpp's vision file (mmproj-*.gguf) to pair with --model LLM.gguf: tower, projector
    /// and preprocessing from it, decoder, tokenizer and chat template from the LLM file
    #[arg(long, value_name = "FILE.gguf", conflicts_with = "decoder")]
    mmproj: Option<PathBuf>,
    /// Print one JSON object (accuracy in 0..1, per type, visual tokens, FLOPs, prefill time,
    /// every answer)
    #[arg(long)]
    json: bool,
    /// Every method at every budget; writes OUT/sweep.md and OUT/sweep.png
    #[arg(long, conflicts_with_all = ["reduce", "json"])]
    sweep: bool,
    /// Sweep budgets in visual tokens (the unreduced model is always the first row)
    #[arg(long, value_delimiter = ',', default_value = "192,128,64,32")]
    budgets: Vec<usize>,
    /// Sweep methods (default: every method)
    #[arg(long, value_delimiter = ',')]
    methods: Vec<ReduceSpec>,
    /// Where the sweep writes (OUT/sweep.md, OUT/sweep.png, and each finished run as
    /// OUT/runs/METHOD_BUDGET.json)
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Reuse the runs in OUT/runs of an interrupted sweep of the same model, set and limit
    #[arg(long, requires = "sweep")]
    resume: bool,
    /// Redraw DIR/sweep.png from DIR/sweep.md (no model run)
    #[arg(long, value_name = "DIR", conflicts_with_all = ["set", "sweep"])]
    replot: Option<PathBuf>,
}

impl Args {
    /// The sweep's methods: as given, or every method (the authors' readings included) but
    /// `none`.
    fn methods(&self) -> Vec<String> {
        if self.methods.is_empty() {
            every_method()
                .into_iter()
                .filter(|m| *m != "none")
                .map(|m| m.to_string())
                .collect()
        } else {
            self.methods.iter().map(|m| m.method.clone()).collect()
        }
    }
}

fn none() -> ReduceSpec {
    ReduceSpec {
        method: "none".into(),
        budget: Budget::Fraction(1.0),
    }
}

fn main() {
    cli::main_with(check, run);
}

fn check(a: &Args) -> std::result::Result<(), String> {
    cli::check_pair(&a.model, a.mmproj.as_deref())?;
    if a.replot.is_none() && a.mmproj.is_none() && a.model.extension().is_some_and(|e| e == "gguf")
    {
        return Err(format!(
            "{} is a GGUF file: evaluating needs images, so pair it with llama.cpp's vision file (--mmproj FILE.gguf), or give a llava-hf directory",
            a.model.display()
        ));
    }
    Ok(())
}

/// One question of the set.
struct Item {
    image: PathBuf,
    question: String,
    answer: String,
    kind: String,
}

fn read_set(path: &Path, limit: Option<u64>) -> Result<Vec<Item>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut items = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: &str| Error::file(path, format!("line {}: {what}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("missing string field {k:?}")))
        };
        items.push(Item {
            image: dir.join(field("image")?),
            question: field("question")?,
            answer: field("answer")?,
            kind: field("type")?,
        });
        if limit.is_some_and(|n| items.len() as u64 >= n) {
            break;
        }
    }
    if items.is_empty() {
        return Err(Error::file(path, "no questions"));
    }
    Ok(items)
}

/// The evaluation of one reduction over the set.
struct Score {
    correct: usize,
    total: usize,
    per_type: BTreeMap<String, (usize, usize)>,
    visual_tokens_llm: usize,
    /// Visual tokens left after the last reduction (LLM-side methods reduce inside the LLM).
    visual_tokens_kept: usize,
    /// Mean over the questions (text lengths differ).
    flops: Flops,
    flops_unreduced: Flops,
    /// Mean vision + LLM prefill time per question.
    prefill_ms: f64,
    /// The visual tokens after each layer that reduces (`per_layer`).
    schedule: String,
    /// What the model said to each question (normalised).
    answers: Vec<String>,
}

impl Score {
    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    fn json(&self, reduce: &ReduceSpec) -> serde_json::Value {
        let flops = |f: &Flops| {
            serde_json::json!({"vision": f.vision, "projector": f.projector,
                "llm_prefill": f.llm_prefill, "overhead": f.overhead})
        };
        let per_type: serde_json::Map<String, serde_json::Value> = self
            .per_type
            .iter()
            .map(|(k, &(c, n))| {
                let acc = c as f64 / n as f64;
                (
                    k.clone(),
                    serde_json::json!({"accuracy": acc, "correct": c, "count": n}),
                )
            })
            .collect();
        serde_json::json!({
            "reduce": reduce.method,
            "accuracy": self.accuracy(),
            "correct": self.correct,
            "count": self.total,
            "per_type": per_type,
            "visual_tokens_llm": self.visual_tokens_llm,
            "visual_tokens_kept": self.visual_tokens_kept,
            "flops": flops(&self.flops),
            "flops_unreduced": flops(&self.flops_unreduced),
            "prefill_ms": self.prefill_ms,
            "schedule": self.schedule,
            "answers": self.answers,
        })
    }

    /// The inverse of [`Score::json`]; `None` when a field is missing.
    fn from_json(v: &serde_json::Value) -> Option<Self> {
        let flops = |f: &serde_json::Value| {
            Some(Flops {
                vision: f["vision"].as_f64()?,
                projector: f["projector"].as_f64()?,
                llm_prefill: f["llm_prefill"].as_f64()?,
                overhead: f["overhead"].as_f64()?,
            })
        };
        let count = |k: &str| v[k].as_u64().map(|n| n as usize);
        let per_type = v["per_type"]
            .as_object()?
            .iter()
            .map(|(k, t)| {
                let n = |f: &str| t[f].as_u64().map(|n| n as usize);
                Some((k.clone(), (n("correct")?, n("count")?)))
            })
            .collect::<Option<_>>()?;
        let answers = v["answers"]
            .as_array()?
            .iter()
            .map(|a| a.as_str().map(str::to_string))
            .collect::<Option<_>>()?;
        Some(Self {
            correct: count("correct")?,
            total: count("count")?,
            per_type,
            visual_tokens_llm: count("visual_tokens_llm")?,
            visual_tokens_kept: count("visual_tokens_kept")?,
            flops: flops(&v["flops"])?,
            flops_unreduced: flops(&v["flops_unreduced"])?,
            prefill_ms: v["prefill_ms"].as_f64()?,
            schedule: v["schedule"].as_str()?.to_string(),
            answers,
        })
    }
}

/// "576 -> v6 473, v7 370, ..., llm2 64": the visual tokens after each layer that reduces
/// (v: vision tower, proj: projector, llm: decoder), every layer shown.
fn per_layer(s: &Schedule) -> String {
    let mut parts = Vec::new();
    let mut last = s.visual_tokens();
    let mut step = |name: String, count: usize| {
        if count < last {
            parts.push(format!("{name} {count}"));
            last = count;
        }
    };
    for (l, &c) in s.vision().iter().enumerate() {
        step(format!("v{l}"), c);
    }
    step("proj".into(), s.projector());
    for (l, &c) in s.llm().iter().enumerate() {
        step(format!("llm{l}"), c);
    }
    if parts.is_empty() {
        return "none".into();
    }
    format!("{} -> {}", s.visual_tokens(), parts.join(", "))
}

/// Add one of `n` terms of a mean.
fn add_mean(acc: &mut Flops, f: &Flops, n: usize) {
    let w = 1.0 / n as f64;
    acc.vision += f.vision * w;
    acc.projector += f.projector * w;
    acc.llm_prefill += f.llm_prefill * w;
    acc.overhead += f.overhead * w;
}

/// Lower case, without surrounding whitespace and trailing punctuation.
fn normalise(s: &str) -> String {
    s.trim()
        .trim_end_matches(['.', '!', '?', ','])
        .trim()
        .to_lowercase()
}

struct Evaluator {
    model: Llava,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    /// Preprocessed images, loaded once for every reduction of a sweep.
    pixels: Vec<PixelValues>,
    items: Vec<Item>,
}

impl Evaluator {
    /// Loads the model and every image; one unmeasured answer compiles the pipelines.
    fn new(args: &Args) -> Result<Self> {
        let gpu = Arc::new(Gpu::new_blocking(&GpuOptions::from_env()?)?);
        let opts = LoadOptions {
            quantize: args.quantize,
            ..LoadOptions::default()
        };
        let loading = cli::spinner(&format!("loading {}", args.model.display()));
        let cli::LlavaInputs {
            model,
            tokenizer,
            processor,
            template,
        } = cli::LlavaInputs::load(
            gpu.clone(),
            &args.model,
            args.decoder.as_deref(),
            args.mmproj.as_deref(),
            &opts,
        )?;
        loading.finish_and_clear();
        let set = args
            .set
            .as_ref()
            .expect("clap requires --set without --replot");
        let items = read_set(set, args.limit)?;
        eprintln!(
            "{} questions; model {}; adapter {}",
            items.len(),
            args.model.display(),
            gpu.describe()
        );
        let bar = cli::progress(items.len() as u64, "images");
        let pixels = items
            .iter()
            .map(|it| {
                bar.inc(1);
                Ok(processor.preprocess(&preprocess::load_image(&it.image)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        bar.finish_and_clear();
        let mut ev = Self {
            model,
            tokenizer,
            template,
            pixels,
            items,
        };
        let first = ev.items.drain(1..).collect::<Vec<_>>();
        ev.score(&none(), "warm-up")?;
        ev.items.extend(first);
        Ok(ev)
    }

    /// Answer every question under `spec`, showing progress on stderr.
    fn score(&mut self, spec: &ReduceSpec, label: &str) -> Result<Score> {
        let opts = GenerateOptions {
            max_new_tokens: 8,
            sampling: Sampling::Greedy,
            stop_tokens: self.tokenizer.eos_id().into_iter().collect(),
            keep_prefill_logits: false,
        };
        let mut s = Score {
            correct: 0,
            total: 0,
            per_type: BTreeMap::new(),
            visual_tokens_llm: 0,
            visual_tokens_kept: 0,
            flops: Flops::default(),
            flops_unreduced: Flops::default(),
            prefill_ms: 0.0,
            schedule: String::new(),
            answers: Vec::new(),
        };
        let n = self.items.len();
        let bar = cli::progress(n as u64, label);
        for (item, pixels) in self.items.iter().zip(&self.pixels) {
            let text =
                preprocess::image_prompt(self.template.as_ref(), &self.tokenizer, &item.question)?;
            let p = pipeline::prepare(
                &mut self.model,
                &self.tokenizer,
                &text,
                spec,
                None,
                false,
                false,
            )?;
            let out = pollster::block_on(self.model.generate(pixels, &p.prompt, &opts, |_| true))?;
            let said = self.tokenizer.decode(&out.tokens, true)?;
            let said = normalise(&said);
            let right = said == normalise(&item.answer);
            s.answers.push(said);
            s.correct += usize::from(right);
            s.total += 1;
            let t = s.per_type.entry(item.kind.clone()).or_default();
            t.0 += usize::from(right);
            t.1 += 1;
            s.visual_tokens_llm = p.schedule.projector();
            s.visual_tokens_kept = p.schedule.kept();
            s.schedule = per_layer(&p.schedule);
            add_mean(&mut s.flops, &p.flops, n);
            add_mean(&mut s.flops_unreduced, &p.flops_unreduced, n);
            s.prefill_ms += (out.timings.vision_ms + out.timings.prefill_ms) / n as f64;
            bar.inc(1);
            bar.set_prefix(format!("{:.1}% right", 100.0 * s.accuracy()));
        }
        bar.finish();
        Ok(s)
    }
}

fn run(args: Args) -> Result<()> {
    if let Some(dir) = &args.replot {
        return replot(dir);
    }
    let mut ev = Evaluator::new(&args)?;
    if args.sweep {
        return sweep(&mut ev, &args);
    }
    let label = args.reduce.method.clone();
    let s = ev.score(&args.reduce, &label)?;
    if args.json {
        println!("{}", s.json(&args.reduce));
        return Ok(());
    }
    println!(
        "{}: accuracy {:.1}% ({}/{}), {} visual tokens in the LLM, {:.3} GFLOPs LLM prefill \
         ({:.3} unreduced), prefill {:.0} ms",
        args.reduce.method,
        100.0 * s.accuracy(),
        s.correct,
        s.total,
        s.visual_tokens_llm,
        s.flops.llm_prefill / 1e9,
        s.flops_unreduced.llm_prefill / 1e9,
        s.prefill_ms
    );
    for (kind, (c, n)) in &s.per_type {
        println!(
            "  {kind:8} {:5.1}% ({c}/{n})",
            100.0 * *c as f64 / *n as f64
        );
    }
    Ok(())
}

/// One row of the sweep: a method at a budget, or why the budget cannot be met.
struct Row {
    method: String,
    budget: usize,
    result: std::result::Result<Score, String>,
}

fn sweep(ev: &mut Evaluator, args: &Args) -> Result<()> {
    let full = ev.model.config().visual_tokens();
    let methods = args.methods();
    let runs = 1 + methods.len() * args.budgets.len();
    let store = RunStore::new(args, ev.items.len())?;
    let base = match store.load("none", full)? {
        Some(Ok(s)) => s,
        _ => {
            let s = ev.score(&none(), &format!("[1/{runs}] none"))?;
            store.save("none", full, &Ok(&s), &none())?;
            s
        }
    };
    let mut rows = Vec::new();
    for method in &methods {
        for &budget in &args.budgets {
            let spec = ReduceSpec {
                method: method.clone(),
                budget: Budget::Tokens(budget),
            };
            let label = format!("[{}/{runs}] {method}:{budget}", rows.len() + 2);
            let result = match store.load(method, budget)? {
                Some(done) => {
                    eprintln!("{label}: from {}", store.dir.display());
                    done
                }
                None => {
                    let result = match ev.score(&spec, &label) {
                        Ok(s) => Ok(s),
                        // A budget the method cannot meet is a row of the table, not a failure.
                        Err(e @ (Error::InvalidArgument(_) | Error::Unsupported(_))) => {
                            Err(e.to_string())
                        }
                        Err(e) => return Err(e),
                    };
                    store.save(
                        method,
                        budget,
                        &result.as_ref().map_err(String::as_str),
                        &spec,
                    )?;
                    result
                }
            };
            rows.push(Row {
                method: method.clone(),
                budget,
                result,
            });
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| Error::file(&args.out, e))?;
    let md = args.out.join("sweep.md");
    let table = markdown(&base, &rows, full);
    std::fs::write(&md, &table).map_err(|e| Error::file(&md, e))?;
    let png = args.out.join("sweep.png");
    let tflops = |s: &Score| s.flops.llm_prefill / 1e12;
    let points = rows.iter().filter_map(|r| {
        let s = r.result.as_ref().ok()?;
        let p = (s.visual_tokens_kept as f64, tflops(s), s.accuracy());
        Some((r.method.clone(), p))
    });
    let lines = plot_lines((full as f64, tflops(&base), base.accuracy()), points);
    plot::sweep(&png, &lines).map_err(|e| Error::file(&png, e))?;
    println!("{table}");
    eprintln!("wrote {} and {}", md.display(), png.display());
    Ok(())
}

/// A sweep's finished runs, one JSON file each, so that an interrupted sweep resumes.
struct RunStore {
    dir: PathBuf,
    /// What a run must have been measured on to be reused.
    key: serde_json::Value,
    resume: bool,
}

impl RunStore {
    fn new(args: &Args, questions: usize) -> Result<Self> {
        let dir = args.out.join("runs");
        std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
        let key = serde_json::json!({
            "model": args.model, "decoder": args.decoder, "mmproj": args.mmproj,
            "quantize": args.quantize.map(|q| q.name()), "set": args.set, "questions": questions,
        });
        Ok(Self {
            dir,
            key,
            resume: args.resume,
        })
    }

    fn path(&self, method: &str, budget: usize) -> PathBuf {
        self.dir
            .join(format!("{}_{budget}.json", method.replace('@', "-at-")))
    }

    /// A finished run (its score, or why the budget is unreachable), with `--resume`.
    fn load(
        &self,
        method: &str,
        budget: usize,
    ) -> Result<Option<std::result::Result<Score, String>>> {
        let path = self.path(method, budget);
        if !self.resume || !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::file(&path, e))?;
        if v["key"] != self.key {
            return Err(Error::file(
                &path,
                format!(
                    "measured on {} rather than {}: use another --out, or run without --resume",
                    v["key"], self.key
                ),
            ));
        }
        if let Some(why) = v["error"].as_str() {
            return Ok(Some(Err(why.to_string())));
        }
        Score::from_json(&v)
            .map(|s| Some(Ok(s)))
            .ok_or_else(|| Error::file(&path, "not a sweep run: rerun without --resume"))
    }

    fn save(
        &self,
        method: &str,
        budget: usize,
        result: &std::result::Result<&Score, &str>,
        spec: &ReduceSpec,
    ) -> Result<()> {
        let mut v = match result {
            Ok(s) => s.json(spec),
            Err(why) => serde_json::json!({"reduce": method, "error": why}),
        };
        v["budget"] = budget.into();
        v["key"] = self.key.clone();
        let path = self.path(method, budget);
        std::fs::write(&path, v.to_string()).map_err(|e| Error::file(&path, e))
    }
}

fn markdown(base: &Score, rows: &[Row], full: usize) -> String {
    let tflops = |s: &Score| s.flops.llm_prefill / 1e12;
    let mut t = String::from(
        "| method | visual tokens | accuracy % | % of unreduced | LLM-prefill TFLOPs | prefill speedup | visual tokens after each reducing layer |\n\
         |---|---|---|---|---|---|---|\n",
    );
    t += &format!(
        "| none | {full} | {:.1} | 100.0 | {:.6} | 1.00 | none |\n",
        100.0 * base.accuracy(),
        tflops(base)
    );
    for r in rows {
        match &r.result {
            Ok(s) => {
                t += &format!(
                    "| {} | {} | {:.1} | {:.1} | {:.6} | {:.2} | {} |\n",
                    r.method,
                    s.visual_tokens_kept,
                    100.0 * s.accuracy(),
                    100.0 * s.accuracy() / base.accuracy().max(1e-9),
                    tflops(s),
                    base.prefill_ms / s.prefill_ms,
                    s.schedule
                );
            }
            Err(why) => {
                t += &format!(
                    "| {} | {} | not reachable: {why} | | | | |\n",
                    r.method, r.budget
                )
            }
        }
    }
    t
}

/// One line per method, each starting from the unreduced point `base`.
fn plot_lines(
    base: plot::Point,
    points: impl Iterator<Item = (String, plot::Point)>,
) -> Vec<plot::Line> {
    let mut lines: Vec<plot::Line> = Vec::new();
    for (method, point) in points {
        let at = match lines.iter().position(|l| l.name == method) {
            Some(i) => i,
            None => {
                lines.push(plot::Line {
                    name: method,
                    points: vec![base],
                });
                lines.len() - 1
            }
        };
        lines[at].points.push(point);
    }
    lines
}

/// Redraws a sweep's plot from its table: the first row is the unreduced model; rows without
/// an accuracy (budgets a method cannot meet) are skipped.
fn replot(dir: &Path) -> Result<()> {
    let md = dir.join("sweep.md");
    let table = std::fs::read_to_string(&md).map_err(|e| Error::file(&md, e))?;
    // | method | visual tokens | accuracy % | % of unreduced | LLM-prefill TFLOPs | ...
    let rows: Vec<(String, plot::Point)> = table
        .lines()
        .skip(2)
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let tokens = cells.get(2)?.parse().ok()?;
            let accuracy: f64 = cells.get(3)?.parse().ok()?;
            let tflops = cells.get(5)?.parse().ok()?;
            Some((cells[1].to_string(), (tokens, tflops, accuracy / 100.0)))
        })
        .collect();
    let Some((_, base)) = rows.first().cloned() else {
        return Err(Error::InvalidArgument(format!(
            "{}: no sweep rows (method | visual tokens | accuracy % ...)",
            md.display()
        )));
    };
    let png = dir.join("sweep.png");
    let lines = plot_lines(base, rows.into_iter().skip(1));
    plot::sweep(&png, &lines).map_err(|e| Error::file(&png, e))?;
    eprintln!("wrote {}", png.display());
    Ok(())
}
