//! Adapter selection, device creation with the adapter's real limits and optional features, and the
//! kernel variants chosen from them.

use crate::{Error, Result};

/// How to pick the adapter. `from_env` reads `FICOCO_ADAPTER` (name substring),
/// `FICOCO_BACKEND` (vulkan|metal|dx12|gl|webgpu), `FICOCO_MATMUL` (a [`MatmulVariant`] name),
/// `FICOCO_ATTENTION` (an [`AttentionVariant`] name) and `FICOCO_WEIGHT_LAYOUT` (a
/// [`WeightLayout`] name).
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    pub adapter_name: Option<String>,
    pub backends: Option<wgpu::Backends>,
    /// Prefer the integrated GPU (saves battery); the default is HighPerformance.
    pub low_power: bool,
    pub matmul: Option<MatmulVariant>,
    pub attention: Option<AttentionVariant>,
    pub weight_layout: Option<WeightLayout>,
    /// Pretend the adapter lacks SHADER_F16 / SUBGROUP, to exercise the portable paths.
    pub disable_f16: bool,
    pub disable_subgroups: bool,
    /// Cap the storage binding size (bytes) below the adapter's, e.g. 128 MiB as in browsers.
    pub max_binding: Option<u64>,
}

impl GpuOptions {
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let backends = match var("FICOCO_BACKEND") {
            None => None,
            Some(b) => Some(parse_backend(&b)?),
        };
        let matmul = match var("FICOCO_MATMUL") {
            None => None,
            Some(m) => Some(m.parse()?),
        };
        let attention = match var("FICOCO_ATTENTION") {
            None => None,
            Some(m) => Some(m.parse()?),
        };
        let weight_layout = match var("FICOCO_WEIGHT_LAYOUT") {
            None => None,
            Some(m) => Some(m.parse()?),
        };
        Ok(Self {
            adapter_name: var("FICOCO_ADAPTER"),
            backends,
            matmul,
            attention,
            weight_layout,
            ..Default::default()
        })
    }
}

fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => wgpu::Backends::VULKAN,
        "metal" => wgpu::Backends::METAL,
        "dx12" | "d3d12" => wgpu::Backends::DX12,
        "gl" | "gles" => wgpu::Backends::GL,
        "webgpu" | "browser" => wgpu::Backends::BROWSER_WEBGPU,
        other => {
            return Err(Error::InvalidArgument(format!(
                "FICOCO_BACKEND={other}: expected one of vulkan, metal, dx12, gl, webgpu"
            )))
        }
    })
}

/// `ALL`, `name()` and `FromStr` of a kernel-variant enum from its variants and their names.
macro_rules! variant_names {
    ($ty:ident, $what:literal, $($variant:ident => $name:literal),+) => {
        impl $ty {
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                $ty::ALL.into_iter().find(|v| v.name() == s).ok_or_else(|| {
                    let names: Vec<&str> = $ty::ALL.iter().map(|v| v.name()).collect();
                    Error::InvalidArgument(format!(
                        "{} variant {s:?}: expected one of {}",
                        $what,
                        names.join(", ")
                    ))
                })
            }
        }
    };
}

/// Matmul kernel shapes. Discrete GPUs and browsers want workgroup-memory tiles; llvmpipe-style
/// CPU adapters run faster with register blocking and no workgroup memory (see README).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Workgroup-memory tiles of A and B, 4x4 outputs per invocation.
    Tiled,
    /// No workgroup memory: each invocation owns a register tile of rows x columns
    /// (`ops::matmul::RegisterTile`, chosen from the device).
    Register,
}

variant_names!(MatmulVariant, "matmul", Tiled => "tiled", Register => "register");

/// Attention kernel shapes (`shaders/attention.wgsl`). GPUs want the invocations of a workgroup
/// to share each key and own output dims; CPU adapters want one query per invocation and no
/// cross-invocation reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionVariant {
    /// 64 invocations per (4 queries, head): keys spread over invocations, online softmax with
    /// workgroup reductions, output dims owned by invocations.
    Shared,
    /// One invocation per query, 64 queries per (workgroup, head), keys and values eight at a
    /// time through `subgroupBroadcast` (needs subgroups of 8), no workgroup memory; for a
    /// single query, one invocation per head instead. Needs a head size that is a multiple of 4.
    Rows,
}

variant_names!(AttentionVariant, "attention", Shared => "shared", Rows => "rows");

/// How weight matrices are laid out in GPU memory (`shaders/matmul.wgsl` for dense f16 / f32,
/// `shaders/ggml_blocks.wgsl` for GGML blocks, stored as one row along K per output column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// Dense `[K, N]` row-major: the lanes of a GPU workgroup, along N, load consecutive
    /// words; GGML rows one after another.
    RowMajor,
    /// Dense `[N / 8, K, 8]`: each block of 8 columns contiguous down K, so that an invocation
    /// owning a block reads its own stretch of memory in order; GGML rows in groups of 4 (one
    /// invocation's), interleaved unit by unit. CPU adapters, whose invocations run one after
    /// another: row-major, each would read 16 bytes per row at a stride of a whole row (or 4
    /// to 12 separate streams of GGML rows), which defeats the CPU's prefetchers
    /// (TinyLlama-shaped f16 decode mat-vecs on lavapipe, 2-core EPYC: 3.4-4.2 GB/s
    /// row-major, 8-12 GB/s in blocks).
    ColumnBlocks,
}

impl WeightLayout {
    /// GGML rows per interleaved group.
    pub fn block_rows(self) -> usize {
        match self {
            Self::RowMajor => 1,
            Self::ColumnBlocks => 4,
        }
    }
}

variant_names!(WeightLayout, "weight layout", RowMajor => "rows", ColumnBlocks => "blocks");

/// What the kernels may use on this device.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_min_size: u32,
    pub timestamps: bool,
    pub pipeline_cache: bool,
    /// Largest storage binding, after any cap from [`GpuOptions::max_binding`].
    pub max_binding: u64,
    pub max_buffer: u64,
    pub max_workgroup_invocations: u32,
    pub max_workgroups_per_dim: u32,
    pub storage_offset_alignment: u32,
    pub uniform_offset_alignment: u32,
    pub matmul: MatmulVariant,
    /// The attention kernel.
    pub attention: AttentionVariant,
    /// `attention` was asked for (`FICOCO_ATTENTION`, [`GpuOptions`]) rather than chosen from the
    /// adapter: it is then never swapped for another, and shapes it cannot run are errors.
    pub attention_forced: bool,
    /// The layout new dense weight matrices get.
    pub weight_layout: WeightLayout,
}

impl Capabilities {
    /// Subgroups whose every possible size is a power of two of at least 8, so that lanes
    /// 0..7 of a `subgroupBroadcast` exist (llvmpipe: exactly 8, its SIMD width).
    pub fn subgroups_of_eight(&self) -> bool {
        self.subgroups && self.subgroup_min_size >= 8 && self.subgroup_min_size.is_power_of_two()
    }
}

pub struct DeviceChoice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Capabilities,
}

pub async fn open_device(opts: &GpuOptions) -> Result<DeviceChoice> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = opts.backends.unwrap_or(wgpu::Backends::all());
    desc.flags = wgpu::InstanceFlags::from_env_or_default();
    let instance = wgpu::Instance::new(desc);
    let adapter = pick_adapter(&instance, opts).await?;
    let info = adapter.get_info();
    let afeat = adapter.features();
    let alim = adapter.limits();

    let mut wanted = wgpu::Features::empty();
    for f in [
        wgpu::Features::SHADER_F16,
        wgpu::Features::SUBGROUP,
        wgpu::Features::TIMESTAMP_QUERY,
        wgpu::Features::PIPELINE_CACHE,
    ] {
        if afeat.contains(f) {
            wanted |= f;
        }
    }
    if opts.disable_f16 {
        wanted.remove(wgpu::Features::SHADER_F16);
    }
    if opts.disable_subgroups {
        wanted.remove(wgpu::Features::SUBGROUP);
    }
    // Ask for everything the adapter offers: the defaults (128 MiB bindings, 8 storage buffers)
    // are the most common blocker for LLM weights.
    let limits = alim.clone();
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("ficoco"),
            required_features: wanted,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        })
        .await
        .map_err(|e| Error::Device {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?;
    let max_binding = opts
        .max_binding
        .map_or(limits.max_storage_buffer_binding_size, |cap| {
            cap.min(limits.max_storage_buffer_binding_size)
        });
    let is_cpu = info.device_type == wgpu::DeviceType::Cpu;
    let mut caps = Capabilities {
        shader_f16: wanted.contains(wgpu::Features::SHADER_F16),
        subgroups: wanted.contains(wgpu::Features::SUBGROUP),
        subgroup_min_size: info.subgroup_min_size,
        timestamps: wanted.contains(wgpu::Features::TIMESTAMP_QUERY),
        pipeline_cache: wanted.contains(wgpu::Features::PIPELINE_CACHE),
        max_binding,
        max_buffer: limits.max_buffer_size,
        max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
        max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
        storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
        uniform_offset_alignment: limits.min_uniform_buffer_offset_alignment,
        matmul: opts.matmul.unwrap_or(if is_cpu {
            MatmulVariant::Register
        } else {
            MatmulVariant::Tiled
        }),
        attention: AttentionVariant::Shared,
        attention_forced: opts.attention.is_some(),
        weight_layout: opts.weight_layout.unwrap_or(if is_cpu {
            WeightLayout::ColumnBlocks
        } else {
            WeightLayout::RowMajor
        }),
    };
    caps.attention = match opts.attention {
        Some(AttentionVariant::Rows) if !caps.subgroups_of_eight() => {
            return Err(Error::Unsupported(format!(
                "attention variant rows needs subgroups of at least 8 lanes, which {} lacks: use FICOCO_ATTENTION=shared",
                info.name
            )))
        }
        Some(v) => v,
        None if is_cpu && caps.subgroups_of_eight() => AttentionVariant::Rows,
        None => AttentionVariant::Shared,
    };
    Ok(DeviceChoice {
        device,
        queue,
        info,
        caps,
    })
}

async fn pick_adapter(instance: &wgpu::Instance, opts: &GpuOptions) -> Result<wgpu::Adapter> {
    let power = if opts.low_power {
        wgpu::PowerPreference::LowPower
    } else {
        wgpu::PowerPreference::HighPerformance
    };
    let backends = opts.backends.unwrap_or(wgpu::Backends::all());
    if let Some(name) = &opts.adapter_name {
        let adapters = instance.enumerate_adapters(backends).await;
        let needle = name.to_ascii_lowercase();
        let names: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_ascii_lowercase().contains(&needle))
            .ok_or_else(|| Error::NoAdapter {
                wanted: format!("name containing {name:?}"),
                available: list_or_none(&names),
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: power,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        })
        .await
        .map_err(|e| Error::NoAdapter {
            wanted: format!("{backends:?} ({e})"),
            available: "none".into(),
        })
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
