//! GGML block formats: the CPU dequantisation in `ops::quant` against the `gguf` Python
//! package's (fixture from scripts/make_quant_fixtures.py).

use ficoco::ops::{dequantize, GgmlType};
use safetensors::SafeTensors;

const TYPES: [(&str, GgmlType); 8] = [
    ("Q4_0", GgmlType::Q4_0),
    ("Q4_1", GgmlType::Q4_1),
    ("Q5_0", GgmlType::Q5_0),
    ("Q5_1", GgmlType::Q5_1),
    ("Q8_0", GgmlType::Q8_0),
    ("Q4_K", GgmlType::Q4K),
    ("Q5_K", GgmlType::Q5K),
    ("Q6_K", GgmlType::Q6K),
];

#[test]
fn cpu_dequantize_matches_gguf_package() {
    let file = std::fs::read("tests/fixtures/quant/blocks.safetensors").unwrap();
    let st = SafeTensors::deserialize(&file).unwrap();
    for (name, ty) in TYPES {
        assert_eq!(ty.name(), name);
        assert_eq!(GgmlType::from_id(ty.id()).unwrap(), ty);
        let bytes = st.tensor(&format!("{name}.bytes")).unwrap();
        let want: Vec<f32> = st
            .tensor(&format!("{name}.values"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(ty.bytes_for(want.len()).unwrap(), bytes.data().len());
        let mut got = vec![0f32; want.len()];
        dequantize(ty, bytes.data(), &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{name}[{i}]: {g} vs {w}"
            );
        }
    }
}

#[test]
fn bad_sizes_and_types_are_errors() {
    let mut out = vec![0f32; 32];
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out).is_err());
    assert!(GgmlType::Q4K.bytes_for(300).is_err());
    let e = GgmlType::from_id(10).unwrap_err().to_string();
    assert!(e.contains("Q2_K"), "{e}");
}
