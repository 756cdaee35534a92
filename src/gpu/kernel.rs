//! Kernels: a WGSL file, an entry point and preprocessor defines. The source is preprocessed
//! (`#include`, `#ifdef`/`#ifndef`/`#else`/`#endif`, valued defines become `const`s), validated by
//! naga for a readable error, and compiled once per distinct key.

use crate::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/shaders.rs"));
}

/// Raw text of `shaders/<name>.wgsl`.
pub fn shader_source(name: &str) -> Option<&'static str> {
    embedded::SHADERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// One compute entry point with its compile-time parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub shader: &'static str,
    pub entry: &'static str,
    /// Sorted (name, value); an empty value is a flag for `#ifdef`.
    defines: Vec<(&'static str, String)>,
}

impl Kernel {
    pub fn new(shader: &'static str, entry: &'static str) -> Self {
        Self {
            shader,
            entry,
            defines: Vec::new(),
        }
    }

    /// A flag tested by `#ifdef NAME`.
    pub fn flag(self, name: &'static str) -> Self {
        self.define(name, String::new())
    }

    pub fn flag_if(self, name: &'static str, on: bool) -> Self {
        if on {
            self.flag(name)
        } else {
            self
        }
    }

    /// A valued define, emitted as `const NAME = value;` (write `64u`, `1.0`, ...).
    pub fn define(mut self, name: &'static str, value: impl ToString) -> Self {
        self.defines.retain(|(n, _)| *n != name);
        self.defines.push((name, value.to_string()));
        self.defines.sort();
        self
    }

    /// The key of the compiled module (entry points share one module).
    pub(crate) fn module_key(&self) -> String {
        let mut k = self.shader.to_string();
        for (n, v) in &self.defines {
            k.push('|');
            k.push_str(n);
            k.push('=');
            k.push_str(v);
        }
        k
    }

    pub(crate) fn source(&self) -> Result<String> {
        let mut out = String::new();
        for (n, v) in &self.defines {
            if !v.is_empty() {
                out.push_str(&format!("const {n} = {v};\n"));
            }
        }
        let flags: Vec<&str> = self.defines.iter().map(|(n, _)| *n).collect();
        expand(self.shader, &flags, &mut out, 0)?;
        Ok(out)
    }
}

fn expand(name: &str, flags: &[&str], out: &mut String, depth: usize) -> Result<()> {
    let err = |message: String| Error::Shader {
        shader: name.to_string(),
        message,
    };
    if depth > 8 {
        return Err(err("#include nested too deeply".into()));
    }
    let src = shader_source(name).ok_or_else(|| err("no such file in shaders/".into()))?;
    // Each entry: (this branch active, some branch of this #if already taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.iter().all(|s| s.0);
    for (lineno, line) in src.lines().enumerate() {
        let t = line.trim_start();
        let arg = |kw: &str| t[kw.len()..].trim().trim_matches('"').to_string();
        if t.starts_with("#ifdef") || t.starts_with("#ifndef") {
            let neg = t.starts_with("#ifndef");
            let name = arg(if neg { "#ifndef" } else { "#ifdef" });
            let on = flags.contains(&name.as_str()) != neg;
            stack.push((on, on));
        } else if t.starts_with("#else") {
            let top = stack
                .last_mut()
                .ok_or_else(|| err(format!("line {}: #else without #if", lineno + 1)))?;
            *top = (!top.1, true);
        } else if t.starts_with("#endif") {
            stack
                .pop()
                .ok_or_else(|| err(format!("line {}: #endif without #if", lineno + 1)))?;
        } else if t.starts_with("#include") {
            if active(&stack) {
                expand(&arg("#include"), flags, out, depth + 1)?;
            }
        } else if active(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(err("unterminated #ifdef".into()));
    }
    Ok(())
}

/// Parse and validate with naga so a broken shader fails with file, line and message instead of
/// a device-lost panic.
pub(crate) fn validate(kernel: &Kernel, src: &str, caps: naga::valid::Capabilities) -> Result<()> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| Error::Shader {
        shader: kernel.module_key(),
        message: e.emit_to_string(src),
    })?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| Error::Shader {
            shader: kernel.module_key(),
            message: e.emit_to_string(src),
        })?;
    if !module.entry_points.iter().any(|e| e.name == kernel.entry) {
        return Err(Error::Shader {
            shader: kernel.module_key(),
            message: format!("no entry point {}", kernel.entry),
        });
    }
    Ok(())
}
