//! Embeds every `shaders/*.wgsl` file so kernels are looked up by file stem at run time and the
//! crate needs no file system access (the browser build has none).

use std::fmt::Write;

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    // Read at run time: a build script binary may be reused for another checkout of the crate.
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = std::path::Path::new(&root).join("shaders");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("shaders/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    entries.sort();
    let mut out = String::from("pub static SHADERS: &[(&str, &str)] = &[\n");
    for p in entries {
        println!("cargo:rerun-if-changed={}", p.display());
        let stem = p.file_stem().unwrap().to_string_lossy();
        writeln!(
            out,
            "    ({stem:?}, include_str!({:?})),",
            p.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("shaders.rs");
    std::fs::write(dest, out).unwrap();
}
