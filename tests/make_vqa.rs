//! The synthetic visual-QA generator (`examples/make_vqa`, built by `cargo test`): the same seed
//! gives the same bytes, the files are well formed, every answer follows from the recorded
//! scene (checked here by re-deriving it from the objects and labels) and from the pixels, and
//! question types and answers are balanced.
mod common;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../examples/make_vqa/font.rs"]
mod font;

const IMAGE: i64 = 336;
const PATCH: i64 = 14;
const CLEAR: i64 = 14;
const TYPES: [&str; 5] = ["color", "count", "exist", "spatial", "text"];
const SHAPES: [(&str, &str); 5] = [
    ("circle", "circles"),
    ("square", "squares"),
    ("triangle", "triangles"),
    ("diamond", "diamonds"),
    ("cross", "crosses"),
];
/// The world's palette (nominal RGB; objects are within 10 levels of it per channel).
const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [205, 35, 35]),
    ("green", [40, 160, 60]),
    ("blue", [40, 80, 215]),
    ("yellow", [240, 210, 20]),
    ("purple", [140, 55, 180]),
    ("orange", [245, 125, 20]),
];

fn generator() -> PathBuf {
    common::example("make_vqa")
}

fn run_raw(args: &[&str]) -> Output {
    Command::new(generator())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", generator().display()))
}

/// A fresh output directory under the system temp dir for test `name`.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ficoco-make-vqa-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

fn generate(name: &str, seed: u64, count: usize, per_image: usize, extra: &[&str]) -> PathBuf {
    let dir = scratch(name);
    let (seed, count, per_image) = (seed.to_string(), count.to_string(), per_image.to_string());
    let mut args = vec![
        "--seed",
        &seed,
        "--count",
        &count,
        "--questions-per-image",
        &per_image,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--out", dir.to_str().unwrap()]);
    let out = run_raw(&args);
    assert!(
        out.status.success(),
        "make_vqa {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Every file under `dir` with its bytes, by path relative to `dir`.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn same_seed_gives_the_same_bytes_on_any_thread_count() {
    let a = generate("det-a", 11, 12, 3, &[]);
    let b = generate("det-b", 11, 12, 3, &["--threads", "1"]);
    let c = generate("det-c", 12, 12, 3, &[]);
    let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
    assert_eq!(ta.len(), 12 + 2, "12 images and two JSONL files");
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (name, bytes) in &ta {
        assert!(
            tb[name] == *bytes,
            "{name} differs between two runs of seed 11"
        );
    }
    assert_eq!(ta.keys().collect::<Vec<_>>(), tc.keys().collect::<Vec<_>>());
    for name in ["questions.jsonl", "scenes.jsonl", "images/000000.png"] {
        assert!(
            ta[name] != tc[name],
            "{name} is the same for seeds 11 and 12"
        );
    }
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).ok();
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

fn ints<const N: usize>(v: &Value) -> [i64; N] {
    let a = v
        .as_array()
        .unwrap_or_else(|| panic!("{v} is not an array"));
    assert_eq!(a.len(), N, "{v}");
    std::array::from_fn(|i| a[i].as_i64().unwrap())
}

struct Obj {
    shape: String,
    color: String,
    size: String,
    bbox: [i64; 4],
}

/// The answer to `question` re-derived from a scene record, failing on a question that does not
/// identify its objects.
fn derive_answer(question: &str, scene: &Value) -> String {
    let objects: Vec<Obj> = scene["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| Obj {
            shape: str_field(o, "shape").into(),
            color: str_field(o, "color").into(),
            size: str_field(o, "size").into(),
            bbox: ints(&o["bbox"]),
        })
        .collect();
    let w: Vec<&str> = question.trim_end_matches('?').split(' ').collect();
    let one = |pred: &dyn Fn(&Obj) -> bool| {
        let m: Vec<&Obj> = objects.iter().filter(|o| pred(o)).collect();
        assert_eq!(m.len(), 1, "{question}: {} matching objects", m.len());
        m[0]
    };
    match w.as_slice() {
        ["What", "color", "is", "the", shape] => one(&|o| o.shape == *shape).color.clone(),
        ["What", "color", "is", "the", size, shape] => {
            let n = objects.iter().filter(|o| o.shape == *shape).count();
            assert!(n > 1, "{question}: the size word is not needed");
            one(&|o| o.shape == *shape && o.size == *size).color.clone()
        }
        ["How", "many", what, "are", "there"] => {
            let (shape, _) = SHAPES.iter().find(|(_, p)| p == what).unwrap();
            objects
                .iter()
                .filter(|o| o.shape == *shape)
                .count()
                .to_string()
        }
        ["How", "many", color, "objects", "are", "there"] => objects
            .iter()
            .filter(|o| o.color == *color)
            .count()
            .to_string(),
        ["Is", "there", article, color, shape] => {
            let want = if color.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            assert_eq!(*article, want, "{question}");
            let yes = objects
                .iter()
                .any(|o| o.color == *color && o.shape == *shape);
            if yes { "yes" } else { "no" }.into()
        }
        ["Is", "the", ca, sa, rel @ .., "the", cb, sb] => {
            let a = one(&|o| o.color == *ca && o.shape == *sa).bbox;
            let b = one(&|o| o.color == *cb && o.shape == *sb).bbox;
            let (first, second) = match rel {
                ["left", "or", "right", "of"] => ("left", "right"),
                ["above", "or", "below"] => ("above", "below"),
                _ => panic!("{question}: unknown relation"),
            };
            let holds = |word: &str| match word {
                "left" => a[2] + CLEAR <= b[0],
                "right" => b[2] + CLEAR <= a[0],
                "above" => a[3] + CLEAR <= b[1],
                _ => b[3] + CLEAR <= a[1],
            };
            assert!(
                holds(first) != holds(second),
                "{question}: relation not clear"
            );
            if holds(first) { first } else { second }.into()
        }
        ["What", "character", "is", "on", "the", which @ .., "label"] => {
            let mut labels: Vec<(i64, String)> = scene["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| (ints::<4>(&l["bbox"])[0], str_field(l, "char").to_string()))
                .collect();
            labels.sort();
            let ch = match (which, labels.len()) {
                ([], 1) => &labels[0].1,
                (["left"], 2) => &labels[0].1,
                (["right"], 2) => &labels[1].1,
                _ => panic!("{question}: {} labels", labels.len()),
            };
            ch.to_lowercase()
        }
        _ => panic!("question outside the templates: {question}"),
    }
}

fn disjoint(a: [i64; 4], b: [i64; 4]) -> bool {
    a[2] <= b[0] || b[2] <= a[0] || a[3] <= b[1] || b[3] <= a[1]
}

fn cell_of(x: i64, y: i64) -> i64 {
    (y / PATCH) * (IMAGE / PATCH) + x / PATCH
}

/// A scene record's boxes, cells and sizes against the rules and the image's pixels.
fn check_scene(scene: &Value, img: &image::RgbImage) {
    let mut boxes = Vec::new();
    for o in scene["objects"].as_array().unwrap() {
        let bbox = ints::<4>(&o["bbox"]);
        let [x0, y0, x1, y1] = bbox;
        assert!(
            0 <= x0 && x0 < x1 && x1 <= IMAGE && 0 <= y0 && y0 < y1 && y1 <= IMAGE,
            "{o}"
        );
        let side = o["side"].as_i64().unwrap();
        let cells: BTreeSet<i64> = o["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_i64().unwrap())
            .collect();
        // The box is that of the covered pixels, so its extreme rows and columns of patches are
        // the cells' extremes.
        let (rows, cols): (Vec<i64>, Vec<i64>) = cells
            .iter()
            .map(|c| (c / (IMAGE / PATCH), c % (IMAGE / PATCH)))
            .unzip();
        let span = |v: &[i64]| (*v.iter().min().unwrap(), *v.iter().max().unwrap());
        assert_eq!(
            span(&cols),
            (x0 / PATCH, (x1 - 1) / PATCH),
            "{o}: cell columns"
        );
        assert_eq!(
            span(&rows),
            (y0 / PATCH, (y1 - 1) / PATCH),
            "{o}: cell rows"
        );
        assert!(
            cells.contains(&cell_of((x0 + x1) / 2, (y0 + y1) / 2)),
            "{o}: centre cell"
        );
        match str_field(o, "size") {
            "small" => {
                assert!((20..=28).contains(&side), "{o}");
                assert!(
                    (1..=9).contains(&cells.len()),
                    "{o}: a small object on {} patches",
                    cells.len()
                );
            }
            "large" => {
                assert!((60..=84).contains(&side), "{o}");
                assert!(
                    cells.len() >= 12,
                    "{o}: a large object on {} patches",
                    cells.len()
                );
            }
            other => panic!("size {other}"),
        }
        // The centre of every shape's box is inside the shape: its pixel has the object's colour.
        let name = str_field(o, "color");
        let (_, rgb) = COLORS.iter().find(|(n, _)| *n == name).unwrap();
        let [cx, cy] = ints::<2>(&o["center"]);
        let px = img.get_pixel(cx as u32, cy as u32).0;
        for (p, c) in px.iter().zip(rgb) {
            assert!(
                (*p as i32 - *c as i32).abs() <= 10,
                "{o}: pixel {px:?} is not {name}"
            );
        }
        boxes.push(bbox);
    }
    let large = scene["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["size"] == "large")
        .count();
    assert!(large <= 3, "{} large objects in {}", large, scene["image"]);
    for l in scene["labels"].as_array().unwrap() {
        let bbox = ints::<4>(&l["bbox"]);
        let ch = str_field(l, "char");
        assert!(ch.len() == 1 && font::CHARSET.contains(ch), "{l}");
        let [x0, y0, x1, y1] = bbox;
        assert_eq!((x1 - x0, y1 - y0), (14, 14), "{l}");
        assert!(x0 % 14 == 0 && y0 % 14 == 0, "{l}: not on the patch grid");
        // A light card with dark ink inside a darker border.
        let inner = img.get_pixel(x0 as u32 + 1, y0 as u32 + 1).0;
        assert!(inner.iter().all(|&v| v >= 240), "{l}: card pixel {inner:?}");
        let ink = (y0 + 2..y1 - 2)
            .flat_map(|y| (x0 + 2..x1 - 2).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x as u32, y as u32).0.iter().all(|&v| v < 60))
            .count();
        assert!(ink >= 8, "{l}: {ink} ink pixels");
        boxes.push(bbox);
    }
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            assert!(
                disjoint(*a, *b),
                "{a:?} and {b:?} overlap in {}",
                scene["image"]
            );
        }
    }
}

/// Every file of a run of `count` images with `per_image` questions each: well formed, and
/// every answer re-derived from its scene, every scene checked against its image.
fn check_run(dir: &Path, count: usize, per_image: usize) {
    let questions = jsonl(&dir.join("questions.jsonl"));
    let scenes = jsonl(&dir.join("scenes.jsonl"));
    assert_eq!(scenes.len(), count);
    assert_eq!(questions.len(), count * per_image);
    let mut seen = BTreeSet::new();
    for (i, scene) in scenes.iter().enumerate() {
        let image = format!("images/{i:06}.png");
        assert_eq!(str_field(scene, "image"), image);
        let img = image::open(dir.join(&image)).unwrap_or_else(|e| panic!("{image}: {e}"));
        assert_eq!((img.width(), img.height()), (336, 336), "{image}");
        assert!(
            matches!(img, image::DynamicImage::ImageRgb8(_)),
            "{image} is not 8-bit RGB"
        );
        check_scene(scene, img.as_rgb8().unwrap());
    }
    for q in &questions {
        let obj = q
            .as_object()
            .unwrap_or_else(|| panic!("{q} is not an object"));
        let keys: BTreeSet<&str> = obj.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["answer", "image", "question", "type"]),
            "{q}"
        );
        let (image, question, answer, kind) = (
            str_field(q, "image"),
            str_field(q, "question"),
            str_field(q, "answer"),
            str_field(q, "type"),
        );
        assert!(TYPES.contains(&kind), "{q}");
        assert!(question.ends_with('?'), "{q}");
        assert!(
            !answer.is_empty()
                && answer
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{q}: answers are one lowercase word, digit or character"
        );
        assert!(
            seen.insert((image, question)),
            "{q}: asked twice about one image"
        );
        let index: usize = image["images/".len()..image.len() - 4].parse().unwrap();
        let scene = &scenes[index];
        assert_eq!(derive_answer(question, scene), answer, "{q}\n{scene}");
        let prefixes = [
            ("What color", "color"),
            ("How many", "count"),
            ("Is there", "exist"),
            ("Is the", "spatial"),
            ("What character", "text"),
        ];
        let (_, want_kind) = prefixes
            .iter()
            .find(|(p, _)| question.starts_with(p))
            .unwrap();
        assert_eq!(kind, *want_kind, "{q}");
    }
}

#[test]
fn answers_follow_from_the_scenes_and_the_pixels() {
    let dir = generate("consistency", 5, 60, 3, &[]);
    check_run(&dir, 60, 3);
    std::fs::remove_dir_all(dir).ok();
}

fn share(counts: &BTreeMap<String, usize>, key: &str) -> f64 {
    let total: usize = counts.values().sum();
    *counts.get(key).unwrap_or(&0) as f64 / total.max(1) as f64
}

#[test]
fn types_and_answers_are_balanced() {
    for per_image in [1, 2] {
        let dir = generate(&format!("balance-{per_image}"), 2, 200, per_image, &[]);
        check_run(&dir, 200, per_image);
        let questions = jsonl(&dir.join("questions.jsonl"));
        assert_eq!(questions.len(), 200 * per_image);
        let mut by_type: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
        for q in &questions {
            *by_type
                .entry(str_field(q, "type"))
                .or_default()
                .entry(str_field(q, "answer").to_string())
                .or_default() += 1;
        }
        let n = questions.len() as f64;
        for t in TYPES {
            let count: usize = by_type[t].values().sum();
            let want = if per_image == 1 {
                0.18..0.22
            } else {
                0.14..0.26
            };
            assert!(
                want.contains(&(count as f64 / n)),
                "{per_image}/image: {count} {t} questions of {n}"
            );
        }
        // The first question of each image is planned: its answers are spread evenly.
        let (spread, yes_no) = if per_image == 1 {
            (1, 0.45..=0.55)
        } else {
            (2, 0.35..=0.65)
        };
        let yes = share(&by_type["exist"], "yes");
        assert!(yes_no.contains(&yes), "{per_image}/image: {yes:.2} yes");
        assert_eq!(by_type["exist"].len(), 2, "{:?}", by_type["exist"]);
        let relations = &by_type["spatial"];
        assert_eq!(relations.len(), 4, "spatial answers {relations:?}");
        let counts = &by_type["count"];
        let digits: Vec<String> = (0..=8).map(|d| d.to_string()).collect();
        assert!(counts.keys().all(|k| digits.contains(k)), "{counts:?}");
        assert_eq!(counts.len(), 9, "count answers {counts:?}");
        let colors = &by_type["color"];
        assert_eq!(colors.len(), 6, "color answers {colors:?}");
        for answers in [counts, colors, relations] {
            let (lo, hi) = (
                answers.values().min().unwrap(),
                answers.values().max().unwrap(),
            );
            if per_image == 1 {
                assert!(hi - lo <= spread, "{per_image}/image: {answers:?}");
            } else {
                assert!(
                    *hi as f64 <= 0.35 * n / 5.0,
                    "{per_image}/image: {answers:?}"
                );
            }
        }
        let chars = &by_type["text"];
        assert!(chars.len() >= 30, "text answers {chars:?}");
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn bad_arguments_fail_with_a_reason() {
    let dir = scratch("args");
    let d = dir.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--seed", "1", "--count", "3"],
            "the following required arguments were not provided:\n  --out <DIR>",
        ),
        (
            &["--seed", "1", "--count", "x", "--out", d],
            "invalid value 'x' for '--count <COUNT>'",
        ),
        (
            &["--seed", "1", "--count", "0", "--out", d],
            "invalid value '0' for '--count <COUNT>'",
        ),
        (
            &[
                "--seed",
                "1",
                "--count",
                "3",
                "--out",
                d,
                "--questions-per-image",
                "0",
            ],
            "0 is not in 1..=10",
        ),
        (
            &["--seed", "1", "--count", "3", "--out", d, "--bogus"],
            "unexpected argument '--bogus' found",
        ),
        (&["--count", "3", "--out", d], "--seed <SEED>"),
    ];
    for (args, want) in cases {
        let out = run_raw(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(want) && err.contains("--help"),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.exists(), "a refused run wrote {d}");
    // An existing output is kept unless --force replaces it.
    let args = ["--seed", "1", "--count", "2", "--out", d];
    assert!(run_raw(&args).status.success());
    let again = run_raw(&args);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let forced = run_raw(&[&args[..], &["--force"]].concat());
    assert!(forced.status.success());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn font_covers_the_charset_with_distinct_glyphs() {
    let glyphs: Vec<(char, [[bool; font::WIDTH]; font::HEIGHT])> = font::CHARSET
        .chars()
        .map(|c| {
            (
                c,
                font::glyph(c).unwrap_or_else(|| panic!("no glyph for {c}")),
            )
        })
        .collect();
    assert_eq!(glyphs.len(), 34);
    assert!(font::glyph('I').is_none() && font::glyph('O').is_none());
    for (i, (a, ga)) in glyphs.iter().enumerate() {
        for (b, gb) in &glyphs[i + 1..] {
            let diff = (0..font::HEIGHT)
                .flat_map(|r| (0..font::WIDTH).map(move |c| (r, c)))
                .filter(|&(r, c)| ga[r][c] != gb[r][c])
                .count();
            assert!(diff >= 2, "{a} and {b} differ in {diff} pixels");
        }
    }
}

#[test]
fn committed_test_split_is_what_seed_3_generates() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/vqa-test");
    check_run(&assets, 600, 1);
    let dir = generate("test-split", 3, 600, 1, &[]);
    let (want, mut got) = (tree(&dir), tree(&assets));
    got.remove("README.md");
    assert_eq!(want.len(), got.len(), "files in assets/vqa-test");
    for (name, bytes) in &want {
        assert!(
            got.get(name) == Some(bytes),
            "assets/vqa-test/{name} is not what seed 3 generates (see its README)"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}
