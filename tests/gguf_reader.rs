//! The GGUF reader against a file written by llama.cpp's `gguf` Python package
//! (scripts/make_gguf_fixtures.py), and against damaged copies of it: every damage is an error
//! that names the problem, never a panic.

use ficoco::model::{Gguf, MetaValue};
use ficoco::ops::{dequantize, GgmlType};
use serde_json::Value;

fn fixture() -> (Vec<u8>, Value) {
    let bytes = std::fs::read("tests/fixtures/gguf/tiny.gguf").unwrap();
    let doc = std::fs::read_to_string("tests/fixtures/gguf/tiny.json").unwrap();
    (bytes, serde_json::from_str(&doc).unwrap())
}

fn parse(bytes: &[u8]) -> ficoco::Result<Gguf> {
    Gguf::from_bytes("tiny.gguf", bytes.to_vec())
}

fn meta_matches(v: &MetaValue, want: &Value) -> bool {
    match (v, want) {
        (MetaValue::Str(s), Value::String(w)) => s == w,
        (MetaValue::Bool(b), Value::Bool(w)) => b == w,
        (MetaValue::F32(f), Value::Number(w)) => *f as f64 == w.as_f64().unwrap(),
        (MetaValue::F64(f), Value::Number(w)) => *f == w.as_f64().unwrap(),
        (MetaValue::Array(a), Value::Array(w)) => {
            a.len() == w.len() && a.iter().zip(w).all(|(x, y)| meta_matches(x, y))
        }
        (v, Value::Number(w)) => match w.as_i64() {
            Some(i) => v.as_i64() == Some(i),
            None => v.as_u64() == w.as_u64(),
        },
        _ => false,
    }
}

#[test]
fn reads_what_the_gguf_package_wrote() {
    let (bytes, doc) = fixture();
    let g = parse(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    for (key, want) in doc["metadata"].as_object().unwrap() {
        let v = g
            .meta(key)
            .unwrap_or_else(|| panic!("metadata {key} missing"));
        assert!(meta_matches(v, want), "{key}: {v:?} vs {want}");
    }
    let tensors = doc["tensors"].as_object().unwrap();
    assert_eq!(g.tensors().len(), tensors.len());
    for (name, want) in tensors {
        let t = g.tensor(name).unwrap();
        let dims: Vec<usize> = serde_json::from_value(want["dims"].clone()).unwrap();
        assert_eq!(t.dims, dims, "{name}");
        assert_eq!(
            t.ty,
            GgmlType::from_id(want["type"].as_u64().unwrap() as u32).unwrap()
        );
        assert_eq!(
            t.offset as u64,
            want["offset"].as_u64().unwrap(),
            "{name} offset"
        );
        assert_eq!(
            t.bytes as u64,
            want["bytes"].as_u64().unwrap(),
            "{name} bytes"
        );
        let values: Vec<f64> = serde_json::from_value(want["values"].clone()).unwrap();
        let mut got = vec![0f32; t.elements()];
        dequantize(t.ty, g.data(t), &mut got).unwrap();
        assert_eq!(got.len(), values.len());
        for (a, b) in got.iter().zip(&values) {
            assert!(
                (*a as f64 - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{name}: {a} vs {b}"
            );
        }
    }
    assert_eq!(
        g.tensor("q8_0.mat").unwrap().shape(),
        vec![3, 64],
        "shape is row-major, outermost first"
    );
}

/// Byte position of the tensor-info record of `name` (just after its name).
fn record_of(bytes: &[u8], name: &str) -> usize {
    let pat = name.as_bytes();
    bytes.windows(pat.len()).position(|w| w == pat).unwrap() + pat.len()
}

fn error_of(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(_) => panic!("damaged file parsed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn damaged_files_are_named_errors() {
    let (bytes, doc) = fixture();
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(error_of(&b).contains("not a GGUF file"), "{}", error_of(&b));

    let mut b = bytes.clone();
    b[4] = 1;
    assert!(error_of(&b).contains("version 1"));

    // The last tensor's data cut short, and the header cut anywhere.
    let last = &doc["tensors"]["q5_0.mat"];
    let end = (last["offset"].as_u64().unwrap() + last["bytes"].as_u64().unwrap()) as usize;
    let e = error_of(&bytes[..end - 1]);
    assert!(e.contains("past the end") && e.contains("q5_0.mat"), "{e}");
    for cut in [3, 10, 30, 100, 300, 600] {
        let e = error_of(&bytes[..cut]);
        assert!(
            e.contains("truncated") || e.contains("cannot fit"),
            "cut {cut}: {e}"
        );
    }

    // Record layout after the name: n_dims u32, dims u64 x n, type u32, offset u64.
    let rec = record_of(&bytes, "q8_0.mat");
    let ty_at = rec + 4 + 2 * 8;
    let mut b = bytes.clone();
    b[ty_at..ty_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = error_of(&b);
    assert!(e.contains("q8_0.mat") && e.contains("99"), "{e}");

    let mut b = bytes.clone();
    b[ty_at + 4..ty_at + 12].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let e = error_of(&b);
    assert!(e.contains("q8_0.mat") && e.contains("past the end"), "{e}");

    let mut b = bytes.clone();
    b[ty_at + 4..ty_at + 12].copy_from_slice(&3u64.to_le_bytes());
    assert!(error_of(&b).contains("alignment"));

    // A string length far beyond the file.
    let key = record_of(&bytes, "test.str") + 4;
    let mut b = bytes.clone();
    b[key..key + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(error_of(&b).contains("cannot fit"));
}

#[test]
fn unsupported_models_are_named_errors() {
    let (bytes, _) = fixture();
    // The fixture says llama but has no llama.* hyperparameters and no vocabulary.
    let g = parse(&bytes).unwrap();
    let e = g.text_config().err().unwrap().to_string();
    assert!(
        e.contains("token_embd.weight") || e.contains("llama."),
        "{e}"
    );
    let e = ficoco::preprocess::Tokenizer::from_gguf(&g)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer.ggml.model") && e.contains("missing"),
        "{e}"
    );

    // Same length, other architecture.
    let mut b = bytes.clone();
    let at = record_of(&b, "general.architecture") + 4 + 8;
    assert_eq!(&b[at..at + 5], b"llama");
    b[at..at + 5].copy_from_slice(b"mamba");
    let e = parse(&b).unwrap().text_config().err().unwrap().to_string();
    assert!(e.contains("\"mamba\" is not supported"), "{e}");
}

/// Bounded random mutation: thousands of damaged copies (flipped bytes, overwritten words,
/// truncations) must each parse or fail with an error, never panic or allocate wildly.
#[test]
fn random_damage_never_panics() {
    let (bytes, _) = fixture();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % b.len() as u64) as usize;
            match next() % 3 {
                0 => b[at] ^= 1 << (next() % 8),
                1 => b[at] = next() as u8,
                _ => {
                    let end = (at + 8).min(b.len());
                    let word = next().to_le_bytes();
                    b[at..end].copy_from_slice(&word[..end - at]);
                }
            }
        }
        if next() % 4 == 0 {
            b.truncate((next() % b.len() as u64) as usize);
        }
        let r = std::panic::catch_unwind(|| parse(&b).map(|g| g.tensors().len()));
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                errors += 1;
                assert!(e.to_string().contains("tiny.gguf"), "{e}");
            }
            Err(_) => panic!("the reader panicked on a damaged file"),
        }
    }
    assert!(
        errors > 100,
        "mutations should mostly break the file ({errors})"
    );
}
