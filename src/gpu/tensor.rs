//! GPU tensors: a storage buffer (or a window of one) with a shape and an element type.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Element types as stored on the GPU. `F16` is two halves packed per `u32` word, so it needs no
/// SHADER_F16 feature: kernels unpack with `unpack2x16float`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    U32,
    I32,
}

impl DType {
    /// Bytes for `n` elements, rounded up to whole 4-byte words.
    pub fn bytes(self, n: usize) -> u64 {
        match self {
            DType::F16 => n.div_ceil(2) as u64 * 4,
            _ => n as u64 * 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
            DType::I32 => "i32",
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A tensor on the GPU. Cloning shares the buffer. `id` identifies the buffer for bind-group
/// caching; windows of one buffer share it and differ by `offset`.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) buf: Arc<super::TrackedBuffer>,
    pub(crate) id: u64,
    /// Byte offset of element 0 inside `buf`.
    pub(crate) offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype.name())
    }
}

impl Tensor {
    // wgpu's buffers are not Send on the web, where everything runs on one thread.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub(crate) fn new(buf: super::TrackedBuffer, shape: Vec<usize>, dtype: DType) -> Self {
        Self {
            buf: Arc::new(buf),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            offset: 0,
            shape,
            dtype,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes the tensor's elements occupy (the binding size).
    pub fn bytes(&self) -> u64 {
        self.dtype.bytes(self.numel())
    }

    /// Bytes of the whole underlying buffer (what it costs in GPU memory).
    pub fn buffer_bytes(&self) -> u64 {
        self.buf.size()
    }

    /// Whether both tensors live in the same buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        std::sync::Arc::ptr_eq(&self.buf, &other.buf)
    }

    /// Same buffer and offset, another shape with at most as many elements (e.g. a workspace
    /// allocated for the longest sequence, viewed at the current length).
    pub fn view(&self, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        assert!(
            self.dtype.bytes(n) <= self.buf.size() - self.offset,
            "view {shape:?} exceeds tensor {:?}",
            self.shape
        );
        Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        }
    }

    /// A window starting `elem_offset` elements in; the byte offset must respect the device's
    /// storage offset alignment (checked when bound).
    pub fn slice(&self, elem_offset: usize, shape: &[usize]) -> Tensor {
        let off = self.offset + self.dtype.bytes(elem_offset);
        let n: usize = shape.iter().product();
        assert!(
            off + self.dtype.bytes(n) <= self.buf.size(),
            "slice out of range"
        );
        Tensor {
            offset: off,
            shape: shape.to_vec(),
            ..self.clone()
        }
    }

    pub(crate) fn binding(&self) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: &self.buf.raw,
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.bytes().max(4)),
        }
    }
}
