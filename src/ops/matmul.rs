//! Matrix products with big weights: `x [M, K] @ W [K, N]`, W split into column chunks that
//! each fit one storage binding, stored dense in f16 or f32 (`shaders/matmul.wgsl`) or in GGML
//! blocks dequantised inside the kernels (`shaders/matmul_quant.wgsl`).

use super::dims2;
use super::embed::upload_rows;
use super::quant::{dequantize, GgmlType};
use crate::gpu::{Batch, Bind, DType, Gpu, Kernel, MatmulVariant, Tensor, WeightLayout};
use crate::{Error, Result};

/// How a [`WeightMatrix`] is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// `[K, N]` (PyTorch's `[out, in]` transposed), columns padded to a multiple of 8, in
    /// memory as the matrix's [`WeightLayout`] says.
    Dense(DType),
    /// llama.cpp's blocks, one row along K per output column, in the GPU row layout of
    /// [`GgmlType::to_gpu_rows`] ([`GgmlType::gpu_row_words`] words per row).
    Blocks(GgmlType),
}

/// A `[K, N]` weight matrix (PyTorch Linear's `[out, in]` transposed) on the GPU.
pub struct WeightMatrix {
    k: usize,
    n: usize,
    format: WeightFormat,
    /// How the chunks sit in memory.
    layout: WeightLayout,
    /// (first column, columns, tensor) per chunk: dense `[K, padded columns]` (row-major) or
    /// `[padded columns / 8, K * 8]` (column blocks), or blocks `[columns, row words]`, in
    /// groups of [`WeightLayout::block_rows`] rows (the last padded).
    chunks: Vec<Chunk>,
}

struct Chunk {
    col: usize,
    cols: usize,
    data: Tensor,
}

impl WeightMatrix {
    /// From PyTorch's layout: `data` is `[n, k]` row-major (one row per output), in the
    /// device's [`WeightLayout`].
    pub fn from_out_in(
        gpu: &Gpu,
        data: &[f32],
        n: usize,
        k: usize,
        dtype: DType,
        label: &str,
    ) -> Result<Self> {
        Self::from_out_in_laid_out(gpu, data, n, k, dtype, gpu.caps.weight_layout, label)
    }

    /// [`WeightMatrix::from_out_in`] in a given layout (tests, tuning).
    pub fn from_out_in_laid_out(
        gpu: &Gpu,
        data: &[f32],
        n: usize,
        k: usize,
        dtype: DType,
        layout: WeightLayout,
        label: &str,
    ) -> Result<Self> {
        if data.len() != n * k || n == 0 || k == 0 {
            return Err(Error::shape(label, format!("[{n}, {k}]"), data.len()));
        }
        let max_cols = (gpu.caps.max_binding / dtype.bytes(k).max(1)) as usize & !7;
        if max_cols == 0 {
            return Err(Error::Unsupported(format!(
                "{label}: one column of {k} values exceeds the storage binding limit"
            )));
        }
        let mut chunks = Vec::new();
        let mut col = 0;
        while col < n {
            let cols = max_cols.min(n - col);
            // Whole groups of 8 columns: the 8-column register tiles read 8 at a time.
            let padded = cols.next_multiple_of(8);
            let mut t = vec![0f32; k * padded];
            for c in 0..cols {
                let src = &data[(col + c) * k..(col + c + 1) * k];
                for (kk, &v) in src.iter().enumerate() {
                    let at = match layout {
                        WeightLayout::RowMajor => kk * padded + c,
                        WeightLayout::ColumnBlocks => ((c / 8) * k + kk) * 8 + c % 8,
                    };
                    t[at] = v;
                }
            }
            let shape = match layout {
                WeightLayout::RowMajor => [k, padded],
                WeightLayout::ColumnBlocks => [padded / 8, k * 8],
            };
            let data = upload_rows(gpu, &t, &shape, dtype, label)?;
            chunks.push(Chunk { col, cols, data });
            col += cols;
        }
        Ok(Self {
            k,
            n,
            format: WeightFormat::Dense(dtype),
            layout,
            chunks,
        })
    }

    /// From llama.cpp's layout: `bytes` holds `n` rows (outputs) of `k` values each, in blocks
    /// of `ty`. Quantised types stay quantised on the GPU; F32 stays F32, F16 / BF16 become F16.
    /// In the device's [`WeightLayout`].
    pub fn from_ggml(
        gpu: &Gpu,
        ty: GgmlType,
        bytes: &[u8],
        n: usize,
        k: usize,
        label: &str,
    ) -> Result<Self> {
        Self::from_ggml_laid_out(gpu, ty, bytes, n, k, gpu.caps.weight_layout, label)
    }

    /// [`WeightMatrix::from_ggml`] in a given layout (tests, tuning).
    pub fn from_ggml_laid_out(
        gpu: &Gpu,
        ty: GgmlType,
        bytes: &[u8],
        n: usize,
        k: usize,
        layout: WeightLayout,
        label: &str,
    ) -> Result<Self> {
        let row_bytes = ty
            .bytes_for(k)
            .map_err(|e| Error::Unsupported(format!("{label}: {e}")))?;
        if n == 0 || k == 0 || bytes.len() != n * row_bytes {
            return Err(Error::shape(
                label,
                format!(
                    "{n} rows of {k} {} values ({} bytes)",
                    ty.name(),
                    n * row_bytes
                ),
                format!("{} bytes", bytes.len()),
            ));
        }
        if !ty.is_quantized() {
            let mut values = vec![0f32; n * k];
            dequantize(ty, bytes, &mut values)?;
            let dtype = if ty == GgmlType::F32 {
                DType::F32
            } else {
                DType::F16
            };
            return Self::from_out_in_laid_out(gpu, &values, n, k, dtype, layout, label);
        }
        if k % 32 != 0 {
            return Err(Error::Unsupported(format!(
                "{label}: rows of {k} values; quantised kernels need a multiple of 32"
            )));
        }
        let row_words = ty.gpu_row_words(k);
        let group = layout.block_rows();
        // Whole groups per chunk, so that only the last chunk has padding rows.
        let max_rows = (gpu.caps.max_binding / (row_words as u64 * 4)) as usize / group * group;
        if max_rows == 0 {
            return Err(Error::Unsupported(format!(
                "{label}: {group} rows of {k} values exceed the storage binding limit"
            )));
        }
        let mut chunks = Vec::new();
        let mut col = 0;
        while col < n {
            let cols = max_rows.min(n - col);
            let words = ty.to_gpu_rows(&bytes[col * row_bytes..(col + cols) * row_bytes], k)?;
            let words = if group > 1 {
                ty.group_gpu_rows(&words, k, group)
            } else {
                words
            };
            let shape = [cols.next_multiple_of(group), row_words];
            let data = gpu.upload_u32(&words, &shape, label)?;
            chunks.push(Chunk { col, cols, data });
            col += cols;
        }
        Ok(Self {
            k,
            n,
            format: WeightFormat::Blocks(ty),
            layout,
            chunks,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn layout(&self) -> WeightLayout {
        self.layout
    }

    /// (first row, rows, blocks `[rows, row words]`) of each chunk of a quantised matrix, for
    /// an embedding table that gathers from the same buffers.
    pub(crate) fn block_chunks(&self) -> Option<(GgmlType, Vec<(usize, Tensor)>)> {
        match self.format {
            WeightFormat::Blocks(ty) => Some((
                ty,
                self.chunks
                    .iter()
                    .map(|c| (c.col, c.data.clone()))
                    .collect(),
            )),
            WeightFormat::Dense(_) => None,
        }
    }

    /// Bindings the matrix is split into.
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.data.buffer_bytes()).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// Exact (erf) GELU.
    Gelu,
    /// Tanh-approximated GELU (`gelu_pytorch_tanh`).
    GeluTanh,
    QuickGelu,
    /// `out += result` (residual adds).
    Accumulate,
}

impl Epilogue {
    fn flags(self, k: Kernel) -> Kernel {
        k.flag_if("EPI_GELU", self == Epilogue::Gelu)
            .flag_if("EPI_GELU_TANH", self == Epilogue::GeluTanh)
            .flag_if("EPI_QUICK_GELU", self == Epilogue::QuickGelu)
            .flag_if("EPI_ACCUMULATE", self == Epilogue::Accumulate)
    }
}

/// Whether this process runs on an x86 CPU with AVX-512 (a CPU adapter runs on the same CPU).
fn host_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which kernel runs: a prefill shape or the decode mat-vec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPath {
    /// The variant's kernel; for [`MatmulVariant::Register`] with the device's default
    /// [`RegisterTile`].
    Matrix(MatmulVariant),
    /// `matmul_register` with an explicit tile (tests, tuning).
    Register(RegisterTile),
    /// For M <= 4 rows, each invocation owning a few output columns along all of K, no
    /// workgroup memory (`matmul_register` with 4 x 8 tiles, `qmatmul_lanes`): chosen on CPU
    /// adapters.
    MatVec,
    /// For M <= 4 rows, K split over the lanes of a workgroup and reduced in workgroup memory
    /// (`matvec`, `qmatvec_split`): chosen on GPUs.
    MatVecSplit,
}

/// Parameters of the `matmul_register` kernel: each of its 64 invocations owns `rows` rows of x
/// times `cols` contiguous columns of W, accumulated in named registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegisterTile {
    /// 4 or 8.
    pub rows: u32,
    /// 2, 4 or 8.
    pub cols: u32,
    /// Load each activation once per subgroup and share it with `subgroupBroadcast` (needs
    /// subgroups whose size is a multiple of 8, see [`RegisterTile::subgroups_usable`]).
    pub subgroup: bool,
}

impl RegisterTile {
    /// Every supported tile.
    pub const ALL: [RegisterTile; 12] = [
        Self::new(4, 4, false),
        Self::new(8, 4, false),
        Self::new(4, 2, false),
        Self::new(8, 2, false),
        Self::new(4, 8, false),
        Self::new(8, 8, false),
        Self::new(4, 4, true),
        Self::new(8, 4, true),
        Self::new(4, 2, true),
        Self::new(8, 2, true),
        Self::new(4, 8, true),
        Self::new(8, 8, true),
    ];

    const fn new(rows: u32, cols: u32, subgroup: bool) -> Self {
        Self {
            rows,
            cols,
            subgroup,
        }
    }

    /// Whether the subgroup tiles can run on this device: subgroups are available and every
    /// subgroup size it may pick is a multiple of 8 (llvmpipe: exactly 8, its SIMD width).
    pub fn subgroups_usable(gpu: &Gpu) -> bool {
        gpu.caps.subgroups_of_eight()
    }

    /// Tiles that can run on this device.
    pub fn supported(gpu: &Gpu) -> impl Iterator<Item = RegisterTile> {
        let sg = Self::subgroups_usable(gpu);
        Self::ALL.into_iter().filter(move |t| sg || !t.subgroup)
    }

    /// The tile [`MatmulPath::Matrix`]`(Register)` uses. On llvmpipe (Mesa 25, LLVM 15) every
    /// per-lane storage-buffer load becomes ~13 scalar instructions with two branches, so loads
    /// per multiply-add decide the speed, up to the tile whose accumulators no longer fit the
    /// vector registers: with subgroup-shared activations 8 rows x 2 columns where AVX2 has 16
    /// registers (about 1.8x the 4 x 4 tile on a 2-core Zen 3), 8 x 4 on a CPU with AVX-512's
    /// 32 (1.1-1.4x 8 x 2 at CLIP-L and TinyLlama prefill shapes on a 2-core EPYC; bigger tiles
    /// spill and lose; `bench --preset tinyllava` times the default against the others).
    /// Without usable subgroups: 4 rows x 4 columns.
    pub fn default_for(gpu: &Gpu) -> RegisterTile {
        if !Self::subgroups_usable(gpu) {
            Self::new(4, 4, false)
        } else if gpu.info.device_type == wgpu::DeviceType::Cpu && host_has_avx512() {
            Self::new(8, 4, true)
        } else {
            Self::new(8, 2, true)
        }
    }

    /// Short name, e.g. `8x2sg`.
    pub fn name(&self) -> String {
        format!(
            "{}x{}{}",
            self.rows,
            self.cols,
            if self.subgroup { "sg" } else { "" }
        )
    }
}

/// Rows up to which the mat-vec kernel is used.
pub const MATVEC_MAX_ROWS: usize = 4;
const KSPLIT: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    ldw4: u32,
    ldo: u32,
    n_off: u32,
    s1: u32,
    s2: u32,
}

/// The default path for `m` rows of x times `w` on this adapter.
fn default_path(b: &Batch, m: usize, w: &WeightMatrix) -> MatmulPath {
    let cpu = b.gpu().info.device_type == wgpu::DeviceType::Cpu;
    match (m <= MATVEC_MAX_ROWS, cpu, w.format) {
        (true, true, _) => MatmulPath::MatVec,
        (true, false, _) => MatmulPath::MatVecSplit,
        (false, true, WeightFormat::Blocks(_)) => MatmulPath::Matrix(MatmulVariant::Register),
        (false, false, WeightFormat::Blocks(_)) => MatmulPath::Matrix(MatmulVariant::Tiled),
        (false, _, WeightFormat::Dense(_)) => MatmulPath::Matrix(b.gpu().caps.matmul),
    }
}

/// `out = epilogue(x @ W + bias)`, with the kernel chosen from M and the adapter.
pub fn matmul(
    b: &mut Batch,
    x: &Tensor,
    w: &WeightMatrix,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    out: &Tensor,
) -> Result<()> {
    let m = x.shape().first().copied().unwrap_or(0);
    matmul_with(b, default_path(b, m, w), x, w, bias, epilogue, out)
}

/// Floats each side-by-side output block is aligned to (256 bytes, WebGPU's largest storage
/// binding offset alignment), so that each can be bound on its own.
pub const BLOCK_ALIGN: usize = 64;

/// Where the output blocks of `m` rows of layers of `widths` start in [`matmul_into`]'s buffer,
/// and the floats the buffer needs.
pub fn side_by_side_offsets(m: usize, widths: &[usize]) -> (Vec<usize>, usize) {
    let mut at = 0;
    let starts = widths
        .iter()
        .map(|&w| {
            let s = at;
            at = (at + m * w).next_multiple_of(BLOCK_ALIGN);
            s
        })
        .collect();
    (starts, at)
}

/// [`matmul`] for one of several matrices side by side (q, k and v; gate and up): `out` holds
/// the `[M, width]` outputs of layers of `widths` (at most 3) one after another, each row-major
/// and starting where [`side_by_side_offsets`] says, and this matrix's columns are columns
/// `col0 .. col0 + N` of them all. `bias`, when given, is `[sum of widths]`, indexed by that
/// column.
#[allow(clippy::too_many_arguments)]
pub fn matmul_into(
    b: &mut Batch,
    x: &Tensor,
    w: &WeightMatrix,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    out: &Tensor,
    widths: &[usize],
    col0: usize,
) -> Result<()> {
    let m = x.shape().first().copied().unwrap_or(0);
    let path = default_path(b, m, w);
    let total: usize = widths.iter().sum();
    let (starts, _) = side_by_side_offsets(m, widths);
    let end = starts
        .last()
        .zip(widths.last())
        .map_or(0, |(s, w)| s + m * w);
    if widths.is_empty() || widths.len() > 3 || out.numel() < end {
        return Err(Error::shape(
            "matmul output",
            format!("{m} rows of 1 to 3 layers' outputs"),
            format!("{:?} for widths {widths:?}", out.shape()),
        ));
    }
    let s1 = widths[0];
    let s2 = s1 + widths.get(1).copied().unwrap_or(0);
    let planes = Planes {
        total,
        s1,
        s2,
        col0,
    };
    dispatch(b, path, x, w, bias, epilogue, out, planes)
}

/// The output layout of one dispatch: columns `[0, s1)`, `[s1, s2)` and `[s2, total)` are
/// three row-major blocks one after another (aligned as in [`side_by_side_offsets`]); the
/// matrix's columns start at `col0`.
#[derive(Clone, Copy)]
struct Planes {
    total: usize,
    s1: usize,
    s2: usize,
    col0: usize,
}

/// [`matmul`] with the kernel forced (tests, tuning).
pub fn matmul_with(
    b: &mut Batch,
    path: MatmulPath,
    x: &Tensor,
    w: &WeightMatrix,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    out: &Tensor,
) -> Result<()> {
    let m = x.shape().first().copied().unwrap_or(0);
    super::expect_shape("matmul output", out, &[m, w.n])?;
    let n = w.n;
    let planes = Planes {
        total: n,
        s1: n,
        s2: n,
        col0: 0,
    };
    dispatch(b, path, x, w, bias, epilogue, out, planes)
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    b: &mut Batch,
    path: MatmulPath,
    x: &Tensor,
    w: &WeightMatrix,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    out: &Tensor,
    planes: Planes,
) -> Result<()> {
    let (m, k) = dims2("matmul input", x)?;
    if k != w.k || planes.col0 + w.n > planes.total {
        return Err(Error::shape(
            "matmul",
            format!("x [M, {}] and {} output columns", w.k, planes.col0 + w.n),
            format!("x {:?}, {} columns", x.shape(), planes.total),
        ));
    }
    if let Some(bias) = bias {
        super::expect_shape("matmul bias", bias, &[planes.total])?;
    }
    if matches!(path, MatmulPath::MatVec | MatmulPath::MatVecSplit) && m > MATVEC_MAX_ROWS {
        return Err(Error::InvalidArgument(format!(
            "mat-vec takes at most {MATVEC_MAX_ROWS} rows, got {m}"
        )));
    }
    let dtype = match w.format {
        WeightFormat::Blocks(ty) => {
            return quant_matmul(b, path, ty, x, w, bias, epilogue, out, m, planes);
        }
        WeightFormat::Dense(dtype) => dtype,
    };
    let tile = match path {
        MatmulPath::Matrix(MatmulVariant::Register) => Some(RegisterTile::default_for(b.gpu())),
        MatmulPath::Register(t) => Some(t),
        // 8 columns per invocation: 16-byte f16 weight loads, the most this path can use.
        MatmulPath::MatVec => Some(RegisterTile::new(
            4,
            8,
            RegisterTile::subgroups_usable(b.gpu()),
        )),
        _ => None,
    };
    // The register kernel computes only the rows that exist (the mat-vec's m <= 4).
    let rows_used = match (path, tile) {
        (MatmulPath::MatVec, _) => m as u32,
        (_, Some(t)) => t.rows,
        _ => 0,
    };
    let (entry, size) = if let Some(t) = tile {
        if !RegisterTile::ALL.contains(&t) {
            return Err(Error::InvalidArgument(format!("register tile {t:?}")));
        }
        if t.subgroup && !RegisterTile::subgroups_usable(b.gpu()) {
            return Err(Error::Unsupported(format!(
                "register tile {}: needs subgroups of a multiple of 8 invocations",
                t.name()
            )));
        }
        // 64 invocations x `cols` columns, `rows` rows.
        ("matmul_register", [64 * t.cols, t.rows])
    } else if path == MatmulPath::MatVecSplit {
        ("matvec", [256, MATVEC_MAX_ROWS as u32])
    } else {
        ("matmul_tiled", [64u32, 64])
    };
    let sg = tile.is_some_and(|t| t.subgroup);
    let kernel = Kernel::new("matmul", entry)
        // vec4 activation loads need rows that start on 16 bytes; the subgroup tiles load scalars.
        .flag_if("X_VEC4", k % 4 == 0 && !sg)
        .flag_if("SG_X", sg)
        .flag_if("ROWS8", tile.is_some_and(|t| t.rows == 8))
        .flag_if("W_COLS2", tile.is_some_and(|t| t.cols == 2))
        .flag_if("W_COLS8", tile.is_some_and(|t| t.cols == 8))
        .define("ROWS_USED", format!("{rows_used}u"))
        .define("KSPLIT", format!("{KSPLIT}u"))
        .flag_if("W_F16", dtype == DType::F16)
        .flag_if("W_BLOCKS", w.layout == WeightLayout::ColumnBlocks)
        .flag_if("HAS_BIAS", bias.is_some());
    let kernel = epilogue.flags(kernel);
    let kernel = if path == MatmulPath::MatVecSplit {
        kernel.define("MV_ROWS", format!("{m}u"))
    } else {
        kernel
    };
    for c in &w.chunks {
        let p = Params {
            m: m as u32,
            n: c.cols as u32,
            k: k as u32,
            ldw4: (c.cols.next_multiple_of(8) / 4) as u32,
            ldo: planes.total as u32,
            n_off: (planes.col0 + c.col) as u32,
            s1: planes.s1 as u32,
            s2: planes.s2 as u32,
        };
        // size = (columns, rows) covered by one workgroup.
        let grid = [
            (c.cols as u32).div_ceil(size[0]),
            (m as u32).div_ceil(size[1]),
            1,
        ];
        let mut binds = vec![Bind::R(x), Bind::R(&c.data), Bind::W(out)];
        if let Some(bias) = bias {
            binds.push(Bind::R(bias));
        }
        b.dispatch(&kernel, &p, &binds, grid)?;
    }
    Ok(())
}

/// `matmul_with` for a matrix of GGML blocks (`shaders/matmul_quant.wgsl`).
#[allow(clippy::too_many_arguments)]
fn quant_matmul(
    b: &mut Batch,
    path: MatmulPath,
    ty: GgmlType,
    x: &Tensor,
    w: &WeightMatrix,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    out: &Tensor,
    m: usize,
    planes: Planes,
) -> Result<()> {
    // (entry, rows of x per invocation block, (columns, rows) per workgroup)
    let (entry, xr, size) = match path {
        MatmulPath::MatVec => ("qmatmul_lanes", m as u32, [256u32, 4]),
        MatmulPath::Matrix(MatmulVariant::Register) | MatmulPath::Register(_) => {
            ("qmatmul_lanes", 4, [256, 4])
        }
        MatmulPath::MatVecSplit => ("qmatvec_split", 1, [4, 1]),
        MatmulPath::Matrix(MatmulVariant::Tiled) => ("qmatmul_tiled", 4, [64, 64]),
    };
    // The lanes kernel shares each block's activations through subgroup broadcasts where it can.
    let sg = entry == "qmatmul_lanes" && b.gpu().caps.subgroups_of_eight();
    let kernel = block_defines(Kernel::new("matmul_quant", entry), ty, w.layout)
        .flag("X_VEC4")
        .flag_if("SG_X", sg)
        .define("XR", format!("{}u", xr.clamp(1, 4)))
        .flag_if("HAS_BIAS", bias.is_some());
    let kernel = epilogue.flags(kernel);
    for c in &w.chunks {
        let p = Params {
            m: m as u32,
            n: c.cols as u32,
            k: w.k as u32,
            ldw4: c.data.shape()[1] as u32,
            ldo: planes.total as u32,
            n_off: (planes.col0 + c.col) as u32,
            s1: planes.s1 as u32,
            s2: planes.s2 as u32,
        };
        let rows = if path == MatmulPath::MatVecSplit {
            m as u32
        } else {
            (m as u32).div_ceil(size[1])
        };
        let grid = [(c.cols as u32).div_ceil(size[0]), rows, 1];
        let mut binds = vec![Bind::R(x), Bind::R(&c.data), Bind::W(out)];
        if let Some(bias) = bias {
            binds.push(Bind::R(bias));
        }
        b.dispatch(&kernel, &p, &binds, grid)?;
    }
    Ok(())
}

/// The defines `shaders/ggml_blocks.wgsl` needs for blocks of `ty` laid out as `layout`.
pub(crate) fn block_defines(k: Kernel, ty: GgmlType, layout: WeightLayout) -> Kernel {
    let flag = match ty {
        GgmlType::Q4_0 => "T_Q4_0",
        GgmlType::Q4_1 => "T_Q4_1",
        GgmlType::Q5_0 => "T_Q5_0",
        GgmlType::Q5_1 => "T_Q5_1",
        GgmlType::Q8_0 => "T_Q8_0",
        GgmlType::Q4K => "T_Q4_K",
        GgmlType::Q5K => "T_Q5_K",
        GgmlType::Q6K => "T_Q6_K",
        other => unreachable!("{} is not a block type", other.name()),
    };
    let k = k
        .flag(flag)
        .flag_if("KQUANT_SCALES", matches!(ty, GgmlType::Q4K | GgmlType::Q5K))
        .define("QK", format!("{}u", ty.block_elems()))
        .define("RG", format!("{}u", layout.block_rows()));
    if ty.block_elems() == 32 {
        k.flag("SPLIT_ROWS")
            .flag_if("SCALE_PAIRS", matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1))
            .flag_if("HIGH_BITS", matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1))
    } else {
        k.define("BW", format!("{}u", ty.gpu_block_words()))
    }
}
