//! A seeded synthetic visual-QA world whose answers depend on small visual detail: 336 x 336
//! images of 1-8 shapes (small ones cover about 2 x 2 patches of 14 px) on textured
//! backgrounds with grey clutter and small character labels, and one-word questions about them.
//!
//! cargo run --release --example make_vqa -- --seed 3 --count 600 --out assets/vqa-test
//!
//! Writes `OUT/images/000000.png ...`, `OUT/questions.jsonl` (`image`, `question`, `answer`,
//! `type`) and `OUT/scenes.jsonl` (each image's objects and labels with their pixel boxes and
//! patch cells). The same seed gives byte-identical files; the splits use seed 1 (train),
//! 2 (validation) and 3 (test).

#[path = "../common/cli.rs"]
mod cli;

mod draw;
mod font;
mod questions;
mod rng;
mod scene;

use clap::Parser;
use questions::{Kind, Query};
use rng::Rng;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A seeded synthetic visual-QA world: images, questions and scene descriptions.
#[derive(Parser)]
#[command(name = "make_vqa")]
struct Args {
    /// World seed (splits: 1 train, 2 validation, 3 test)
    #[arg(long)]
    seed: u64,
    /// Number of images
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Output directory: DIR/images/*.png, DIR/questions.jsonl, DIR/scenes.jsonl
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Distinct questions per image; the first is planned (type and answer balanced), the
    /// others drawn from what the scene answers (type, then answer, uniform)
    #[arg(long = "questions-per-image", value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=10))]
    per_image: u64,
    /// Worker threads (default: the machine's); the output does not depend on it
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// Replace DIR's images and JSONL files if they exist
    #[arg(long)]
    force: bool,
}

fn main() {
    cli::main_with(|_: &Args| Ok(()), |a| run(&a));
}

#[derive(Serialize)]
struct QuestionRecord<'a> {
    image: &'a str,
    question: String,
    answer: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct ObjectRecord {
    shape: &'static str,
    color: &'static str,
    size: &'static str,
    side: i32,
    center: [i32; 2],
    bbox: [i32; 4],
    cells: Vec<u16>,
}

#[derive(Serialize)]
struct LabelRecord {
    char: String,
    center: [i32; 2],
    bbox: [i32; 4],
    cells: Vec<u16>,
}

#[derive(Serialize)]
struct SceneRecord<'a> {
    image: &'a str,
    background: &'static str,
    objects: Vec<ObjectRecord>,
    labels: Vec<LabelRecord>,
}

/// One image's files' contents: PNG bytes and its JSONL lines.
struct Sample {
    png: Vec<u8>,
    questions: Vec<(Kind, String, String)>,
    scene_line: String,
}

/// The planned question of image `index`: its type (each run of 5 images has every type once)
/// and which of the type's answers it gets (each run of as many same-type questions as the type
/// has answers gets every answer once).
fn planned(seed: u64, index: usize) -> (Kind, usize) {
    let mut kinds = Kind::ALL;
    let block = index / Kind::ALL.len();
    Rng::stream(seed ^ 0x7E57_0F7E_5EED, block as u64).shuffle(&mut kinds);
    let kind = kinds[index % Kind::ALL.len()];
    let n = scene::answer_count(kind);
    let mut slots: Vec<usize> = (0..n).collect();
    let stream = seed ^ (0xA5_5E75 + kind as u64);
    Rng::stream(stream, (block / n) as u64).shuffle(&mut slots);
    (kind, slots[block % n])
}

/// Further questions: a type uniformly among those the image has not had yet (any type once all
/// have), then an answer uniformly among that type's, then a question with that answer.
fn extra_questions(
    scene: &scene::Scene,
    first: Query,
    count: usize,
    rng: &mut Rng,
) -> Vec<(Query, String)> {
    let mut pool = questions::candidates(scene);
    pool.retain(|(q, _)| q.text() != first.text());
    let mut used = vec![first.kind()];
    let mut out = Vec::new();
    while out.len() < count && !pool.is_empty() {
        let open: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| pool.iter().any(|(q, _)| q.kind() == *k))
            .collect();
        let fresh: Vec<Kind> = open.iter().copied().filter(|k| !used.contains(k)).collect();
        let kind = rng.pick(if fresh.is_empty() { &open } else { &fresh });
        let mut answers: Vec<&str> = Vec::new();
        for (q, a) in &pool {
            if q.kind() == kind && !answers.contains(&a.as_str()) {
                answers.push(a);
            }
        }
        let answer = rng.pick(&answers).to_string();
        let matching: Vec<usize> = (0..pool.len())
            .filter(|&i| pool[i].0.kind() == kind && pool[i].1 == answer)
            .collect();
        let (q, a) = pool.remove(rng.pick(&matching));
        used.push(kind);
        out.push((q, a));
    }
    out
}

fn generate(seed: u64, index: usize, per_image: usize) -> Sample {
    let (kind, slot) = planned(seed, index);
    let mut rng = Rng::stream(seed, index as u64);
    for _ in 0..1000 {
        let (spec, query, want) = scene::plan(kind, slot, &mut rng);
        let Some(mut scene) = scene::place(&spec, &mut rng) else {
            continue;
        };
        let img = draw::render(&mut scene, &mut rng);
        if query.answer(&scene).as_deref() != Some(want.as_str()) {
            continue;
        }
        let mut qs = vec![(query, want)];
        qs.extend(extra_questions(&scene, query, per_image - 1, &mut rng));
        let image = image_name(index);
        let questions = qs
            .iter()
            .map(|(q, a)| (q.kind(), q.text(), a.clone()))
            .collect();
        let record = SceneRecord {
            image: &image,
            background: scene.background.name(),
            objects: scene
                .objects
                .iter()
                .map(|o| ObjectRecord {
                    shape: o.shape.name(),
                    color: o.color.name(),
                    size: o.size.name(),
                    side: o.side,
                    center: o.center(),
                    bbox: o.bbox,
                    cells: o.cells.clone(),
                })
                .collect(),
            labels: scene
                .labels
                .iter()
                .map(|l| LabelRecord {
                    char: l.ch.to_string(),
                    center: l.center(),
                    bbox: l.bbox(),
                    cells: draw::box_cells(l.bbox()),
                })
                .collect(),
        };
        let mut png = Vec::new();
        let encoder = image::codecs::png::PngEncoder::new_with_quality(
            &mut png,
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::Adaptive,
        );
        img.write_with_encoder(encoder)
            .expect("PNG encoding into memory");
        let scene_line = serde_json::to_string(&record).expect("scene JSON");
        return Sample {
            png,
            questions,
            scene_line,
        };
    }
    panic!("image {index} of seed {seed}: no scene fits its plan after 1000 tries");
}

fn image_name(index: usize) -> String {
    format!("images/{index:06}.png")
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>, String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(std::io::BufWriter::new(f))
}

fn run(args: &Args) -> Result<(), String> {
    let (count, per_image) = (args.count as usize, args.per_image as usize);
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t as usize,
    );
    let images = args.out.join("images");
    let outputs = [
        args.out.join("questions.jsonl"),
        args.out.join("scenes.jsonl"),
    ];
    if !args.force {
        for p in outputs.iter().chain([&images]) {
            if p.exists() {
                return Err(format!(
                    "{} exists (pass --force to replace it)",
                    p.display()
                ));
            }
        }
    } else if images.exists() {
        std::fs::remove_dir_all(&images).map_err(|e| format!("{}: {e}", images.display()))?;
    }
    std::fs::create_dir_all(&images).map_err(|e| format!("{}: {e}", images.display()))?;
    let mut qfile = create(&outputs[0])?;
    let mut sfile = create(&outputs[1])?;
    let start = Instant::now();
    let bar = cli::progress(args.count, "make_vqa: images");
    let mut per_kind = [0usize; 5];
    let (mut yes, mut yes_no) = (0usize, 0usize);
    let batch = 32 * threads;
    let mut done = 0;
    while done < count {
        let end = (done + batch).min(count);
        let samples: Vec<(usize, Sample)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        (done + t..end)
                            .step_by(threads)
                            .map(|i| (i, generate(args.seed, i, per_image)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut all: Vec<(usize, Sample)> = workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker thread"))
                .collect();
            all.sort_by_key(|(i, _)| *i);
            all
        });
        for (i, sample) in samples {
            let name = image_name(i);
            let path = args.out.join(&name);
            std::fs::write(&path, &sample.png).map_err(|e| format!("{}: {e}", path.display()))?;
            for (kind, question, answer) in sample.questions {
                per_kind[kind as usize] += 1;
                if answer == "yes" || answer == "no" {
                    yes_no += 1;
                    yes += (answer == "yes") as usize;
                }
                let record = QuestionRecord {
                    image: &name,
                    question,
                    answer,
                    kind: kind.name(),
                };
                let line = serde_json::to_string(&record).expect("question JSON");
                writeln!(qfile, "{line}").map_err(|e| format!("{}: {e}", outputs[0].display()))?;
            }
            writeln!(sfile, "{}", sample.scene_line)
                .map_err(|e| format!("{}: {e}", outputs[1].display()))?;
        }
        done = end;
        bar.set_position(done as u64);
    }
    bar.finish_and_clear();
    for (f, p) in [(qfile, &outputs[0]), (sfile, &outputs[1])] {
        f.into_inner()
            .map_err(|e| format!("{}: {e}", p.display()))?
            .sync_all()
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let total: usize = per_kind.iter().sum();
    let kinds: Vec<String> = Kind::ALL
        .iter()
        .map(|k| format!("{} {}", k.name(), per_kind[*k as usize]))
        .collect();
    eprintln!(
        "make_vqa: wrote {} images and {total} questions to {} in {:.1} s ({}; yes {:.0}% of yes/no)",
        args.count,
        args.out.display(),
        start.elapsed().as_secs_f64(),
        kinds.join(", "),
        100.0 * yes as f64 / yes_no.max(1) as f64
    );
    Ok(())
}
