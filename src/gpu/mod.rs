//! The GPU context: device, capabilities, tensors, and keyed caches of pipelines and bind groups,
//! so that an op is one `Batch::dispatch` call and a warmed-up forward pass creates nothing.

mod batch;
mod context;
mod kernel;
mod tensor;

pub use batch::{Batch, Bind};
pub use context::{AttentionVariant, Capabilities, GpuOptions, MatmulVariant, WeightLayout};
pub use kernel::{shader_source, Kernel};
pub use tensor::{DType, Tensor};

use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Per-dispatch parameters live in one uniform arena, bound with a dynamic offset; each dispatch
/// gets one slot of this many bytes (the portable `min_uniform_buffer_offset_alignment` maximum).
pub(crate) const PARAM_SLOT: u64 = 256;
/// Slots in the arena: a batch is submitted when they run out.
pub(crate) const PARAM_SLOTS: u64 = 1024;

/// GPU memory accounting, kept by the buffers themselves.
#[derive(Default)]
pub(crate) struct MemStats {
    live: AtomicU64,
    peak: AtomicU64,
    allocations: AtomicU64,
}

impl MemStats {
    fn add(&self, n: u64) {
        let live = self.live.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(live, Ordering::Relaxed);
        self.allocations.fetch_add(1, Ordering::Relaxed);
    }
}

/// A buffer that reports its release to [`MemStats`].
pub(crate) struct TrackedBuffer {
    pub(crate) raw: wgpu::Buffer,
    stats: Arc<MemStats>,
}

impl Drop for TrackedBuffer {
    fn drop(&mut self) {
        self.stats
            .live
            .fetch_sub(self.raw.size(), Ordering::Relaxed);
    }
}

impl std::ops::Deref for TrackedBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.raw
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BindingKey {
    buffer: u64,
    offset: u64,
    size: u64,
}

/// Binding layouts are keyed by which bindings are read-only.
type PipelineKey = (Kernel, Vec<bool>);
type BindGroupKey = (Vec<bool>, Vec<BindingKey>);

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Capabilities,
    stats: Arc<MemStats>,
    params: wgpu::Buffer,
    pipeline_cache: Option<wgpu::PipelineCache>,
    modules: Mutex<HashMap<String, wgpu::ShaderModule>>,
    layouts: Mutex<HashMap<Vec<bool>, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    pipeline_ms: Mutex<f64>,
    bind_groups: Mutex<HashMap<BindGroupKey, wgpu::BindGroup>>,
    readback: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Held from a batch's arena write to its submit, so concurrent batches cannot interleave.
    submit_lock: Mutex<()>,
    /// Per-kernel times while profiling ([`Gpu::start_profile`]); the flag spares every
    /// dispatch the lock when not profiling.
    profile: Mutex<Option<HashMap<&'static str, KernelTime>>>,
    profiling: std::sync::atomic::AtomicBool,
}

/// The time one kernel entry point took over the dispatches of a profile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelTime {
    pub entry: &'static str,
    pub calls: u64,
    pub ms: f64,
}

impl Gpu {
    pub async fn new(opts: &GpuOptions) -> Result<Self> {
        let choice = context::open_device(opts).await?;
        let device = choice.device;
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dispatch params"),
            size: PARAM_SLOT * PARAM_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let pipeline_cache = choice.caps.pipeline_cache.then(|| {
            // SAFETY: no cache data is passed, so there is nothing untrusted to load.
            unsafe {
                device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                    label: Some("ficoco pipelines"),
                    data: None,
                    fallback: true,
                })
            }
        });
        Ok(Self {
            device,
            queue: choice.queue,
            info: choice.info,
            caps: choice.caps,
            stats: Arc::default(),
            params,
            pipeline_cache,
            modules: Mutex::default(),
            layouts: Mutex::default(),
            pipelines: Mutex::default(),
            pipeline_ms: Mutex::default(),
            bind_groups: Mutex::default(),
            readback: Mutex::default(),
            submit_lock: Mutex::default(),
            profile: Mutex::default(),
            profiling: Default::default(),
        })
    }

    /// Blocking constructor for native code (`from_env` options).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: &GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new(opts))
    }

    /// A one-line description: adapter, backend, type and the features the kernels use.
    pub fn describe(&self) -> String {
        let c = &self.caps;
        format!(
            "{} ({:?}, {:?}; f16 {}, subgroups {}, max binding {} MiB, matmul {}, attention {})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            if c.shader_f16 { "yes" } else { "no" },
            if c.subgroups { "yes" } else { "no" },
            c.max_binding >> 20,
            c.matmul.name(),
            c.attention.name()
        )
    }

    // ---------------------------------------------------------------- memory

    fn create_buffer(&self, bytes: u64, label: &str) -> Result<TrackedBuffer> {
        let size = bytes.max(4).next_multiple_of(4);
        if size > self.caps.max_buffer {
            return Err(Error::Unsupported(format!(
                "{label}: a {size}-byte buffer exceeds this adapter's max_buffer_size {}",
                self.caps.max_buffer
            )));
        }
        let raw = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.stats.add(size);
        Ok(TrackedBuffer {
            raw,
            stats: self.stats.clone(),
        })
    }

    /// Activation buffers shared by modules that never run at the same time (the vision tower,
    /// then the decoder). `users[m]` lists module m's workspace shapes in slot order; slot i is
    /// one f32 buffer as large as the largest i-th shape, and each module views its own shape.
    /// Slots are separate buffers because a dispatch may not read and write one buffer.
    pub fn shared_activations(&self, users: &[&[Vec<usize>]]) -> Result<Vec<Tensor>> {
        let slots = users.iter().map(|u| u.len()).max().unwrap_or(0);
        (0..slots)
            .map(|i| {
                let elems = users
                    .iter()
                    .filter_map(|u| u.get(i))
                    .map(|s| s.iter().product::<usize>())
                    .max()
                    .unwrap_or(1);
                self.zeros(&[elems], DType::F32, &format!("activations {i}"))
            })
            .collect()
    }

    /// A zero-filled tensor.
    pub fn zeros(&self, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let buf = self.create_buffer(dtype.bytes(n), label)?;
        Ok(Tensor::new(buf, shape.to_vec(), dtype))
    }

    /// A tensor holding `bytes` (already in the GPU layout of `dtype`).
    pub fn upload(
        &self,
        bytes: &[u8],
        shape: &[usize],
        dtype: DType,
        label: &str,
    ) -> Result<Tensor> {
        let t = self.zeros(shape, dtype, label)?;
        self.write(&t, bytes)?;
        Ok(t)
    }

    pub fn upload_f32(&self, data: &[f32], shape: &[usize], label: &str) -> Result<Tensor> {
        check_len(label, data.len(), shape)?;
        self.upload(bytemuck::cast_slice(data), shape, DType::F32, label)
    }

    pub fn upload_u32(&self, data: &[u32], shape: &[usize], label: &str) -> Result<Tensor> {
        check_len(label, data.len(), shape)?;
        self.upload(bytemuck::cast_slice(data), shape, DType::U32, label)
    }

    pub fn upload_i32(&self, data: &[i32], shape: &[usize], label: &str) -> Result<Tensor> {
        check_len(label, data.len(), shape)?;
        self.upload(bytemuck::cast_slice(data), shape, DType::I32, label)
    }

    /// f16 values packed two per word (low half first), as the kernels read them.
    pub fn upload_f16(&self, data: &[half::f16], shape: &[usize], label: &str) -> Result<Tensor> {
        check_len(label, data.len(), shape)?;
        let mut bytes: Vec<u8> = bytemuck::cast_slice(data).to_vec();
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        self.upload(&bytes, shape, DType::F16, label)
    }

    /// Overwrite a tensor's contents (ordered before the next submit).
    pub fn write(&self, t: &Tensor, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 > t.buf.size() - t.offset {
            return Err(Error::InvalidArgument(format!(
                "write of {} bytes into {t:?}",
                bytes.len()
            )));
        }
        let padded;
        let data = if bytes.len() % 4 == 0 {
            bytes
        } else {
            padded = [bytes, &[0u8; 3][..4 - bytes.len() % 4]].concat();
            &padded
        };
        self.queue.write_buffer(&t.buf, t.offset, data);
        Ok(())
    }

    /// Bytes currently held by live tensors, and the most ever held at once.
    pub fn memory(&self) -> (u64, u64) {
        (
            self.stats.live.load(Ordering::Relaxed),
            self.stats.peak.load(Ordering::Relaxed),
        )
    }

    /// Forget the peak so a later phase can be measured on its own.
    pub fn reset_peak(&self) {
        self.stats
            .peak
            .store(self.stats.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// How many tensors have ever been allocated (a warm forward pass must not change it).
    pub fn allocations(&self) -> u64 {
        self.stats.allocations.load(Ordering::Relaxed)
    }

    // ---------------------------------------------------------------- readback

    /// Copy a tensor back to the CPU. Awaitable, so it also works in the browser.
    pub async fn read_bytes(&self, t: &Tensor) -> Result<Vec<u8>> {
        let size = t.bytes().next_multiple_of(4);
        // A staging buffer is taken out of the pool while mapped, so concurrent readers never
        // share one.
        let pooled = self
            .readback
            .lock()
            .unwrap()
            .get_mut(&size)
            .and_then(Vec::pop);
        let staging = pooled.unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&t.buf, t.offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = oneshot();
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for readback: {e}")))?;
        rx.await
            .map_err(|e| Error::Gpu(format!("mapping readback buffer: {e}")))?;
        let bytes = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading back {t:?}: {e}")))?
            .to_vec();
        staging.unmap();
        self.readback
            .lock()
            .unwrap()
            .entry(size)
            .or_default()
            .push(staging);
        Ok(bytes)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        if t.dtype() != DType::F32 {
            return Err(Error::InvalidArgument(format!("read_f32 of {t:?}")));
        }
        let b = pollster::block_on(self.read_bytes(t))?;
        Ok(bytemuck::cast_slice(&b)[..t.numel()].to_vec())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        if !matches!(t.dtype(), DType::U32 | DType::I32) {
            return Err(Error::InvalidArgument(format!("read_u32 of {t:?}")));
        }
        let b = pollster::block_on(self.read_bytes(t))?;
        Ok(bytemuck::cast_slice(&b)[..t.numel()].to_vec())
    }

    /// Resolves when all submitted work has finished (for phase timings; works in browsers).
    pub async fn sync(&self) -> Result<()> {
        let (tx, rx) = oneshot();
        self.queue.on_submitted_work_done(move || tx.send(()));
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        rx.await;
        Ok(())
    }

    /// Block until all submitted work has finished (native timing).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Gpu(e.to_string()))
    }

    /// Time every dispatch from now on, each submitted and waited for alone (so the work
    /// around it is not counted, and nothing overlaps: slow, for benchmarks only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn start_profile(&self) {
        *self.profile.lock().unwrap() = Some(HashMap::new());
        self.profiling
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stop profiling; the time per entry point since [`Gpu::start_profile`], slowest first.
    pub fn take_profile(&self) -> Vec<KernelTime> {
        self.profiling
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let mut times: Vec<KernelTime> = self
            .profile
            .lock()
            .unwrap()
            .take()
            .map(|m| m.into_values().collect())
            .unwrap_or_default();
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        times
    }

    pub(crate) fn profiling(&self) -> bool {
        self.profiling.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn record_kernel_time(&self, entry: &'static str, ms: f64) {
        if let Some(m) = self.profile.lock().unwrap().as_mut() {
            let t = m.entry(entry).or_insert(KernelTime {
                entry,
                calls: 0,
                ms: 0.0,
            });
            t.calls += 1;
            t.ms += ms;
        }
    }

    // ---------------------------------------------------------------- pipelines

    /// Compile (once) the pipeline for `kernel` with this read-only/read-write binding pattern.
    pub(crate) fn pipeline(
        &self,
        kernel: &Kernel,
        pattern: &[bool],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = (kernel.clone(), pattern.to_vec());
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let mut clock = crate::clock::Clock::start();
        let module = self.module(kernel)?;
        let layout = self.layout(pattern).1;
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: Default::default(),
                cache: self.pipeline_cache.as_ref(),
            });
        let p = Arc::new(pipeline);
        self.pipelines.lock().unwrap().insert(key, p.clone());
        *self.pipeline_ms.lock().unwrap() += clock.lap_ms();
        Ok(p)
    }

    /// Number of compiled pipelines (cold-start cost is paid once per entry).
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }

    /// Milliseconds spent compiling shaders and creating pipelines so far (the cold-start cost).
    pub fn pipeline_ms(&self) -> f64 {
        *self.pipeline_ms.lock().unwrap()
    }

    fn module(&self, kernel: &Kernel) -> Result<wgpu::ShaderModule> {
        let key = kernel.module_key();
        if let Some(m) = self.modules.lock().unwrap().get(&key) {
            return Ok(m.clone());
        }
        let src = kernel.source()?;
        // wgpu grants what the backend supports (e.g. unpack2x16float needs
        // SHADER_FLOAT16_IN_FLOAT32); only the optional features are ours to withhold.
        let mut caps = naga::valid::Capabilities::all();
        if !self.caps.shader_f16 {
            caps.remove(naga::valid::Capabilities::SHADER_FLOAT16);
        }
        if !self.caps.subgroups {
            caps.remove(
                naga::valid::Capabilities::SUBGROUP | naga::valid::Capabilities::SUBGROUP_BARRIER,
            );
        }
        kernel::validate(kernel, &src, caps)?;
        let m = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.shader),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        self.modules.lock().unwrap().insert(key, m.clone());
        Ok(m)
    }

    fn layout(&self, pattern: &[bool]) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let mut layouts = self.layouts.lock().unwrap();
        layouts
            .entry(pattern.to_vec())
            .or_insert_with(|| {
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: None,
                    },
                    count: None,
                }];
                for (i, &read_only) in pattern.iter().enumerate() {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: i as u32 + 1,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                let bgl = self
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: None,
                        entries: &entries,
                    });
                let pl = self
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: None,
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                (bgl, pl)
            })
            .clone()
    }

    pub(crate) fn bind_group(
        &self,
        pattern: &[bool],
        tensors: &[&Tensor],
    ) -> Result<wgpu::BindGroup> {
        let keys: Vec<BindingKey> = tensors
            .iter()
            .map(|t| BindingKey {
                buffer: t.id,
                offset: t.offset,
                size: t.bytes(),
            })
            .collect();
        let key = (pattern.to_vec(), keys);
        if let Some(bg) = self.bind_groups.lock().unwrap().get(&key) {
            return Ok(bg.clone());
        }
        let align = self.caps.storage_offset_alignment as u64;
        for t in tensors {
            if t.offset % align != 0 {
                return Err(Error::Gpu(format!(
                    "{t:?} is bound at byte offset {}, not a multiple of the adapter's {align}",
                    t.offset
                )));
            }
            if t.bytes() > self.caps.max_binding {
                return Err(Error::Unsupported(format!(
                    "{t:?} needs a {} MiB binding but the device allows {} MiB: split it",
                    t.bytes() >> 20,
                    self.caps.max_binding >> 20
                )));
            }
        }
        let bgl = self.layout(pattern).0;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.params,
                offset: 0,
                size: std::num::NonZeroU64::new(PARAM_SLOT),
            }),
        }];
        for (i, t) in tensors.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(t.binding()),
            });
        }
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &bgl,
            entries: &entries,
        });
        self.bind_groups.lock().unwrap().insert(key, bg.clone());
        Ok(bg)
    }

    /// Drop cached bind groups (they keep their buffers alive); call after freeing big tensors.
    pub fn clear_bind_groups(&self) {
        self.bind_groups.lock().unwrap().clear();
    }

    /// Upload a batch's dispatch parameters and submit its commands, atomically.
    pub(crate) fn submit_with_params(&self, params: &[u8], commands: wgpu::CommandBuffer) {
        let _guard = self.submit_lock.lock().unwrap();
        if !params.is_empty() {
            self.queue.write_buffer(&self.params, 0, params);
        }
        self.queue.submit([commands]);
    }

    /// Workgroup counts for `n` groups along one logical axis, folded into y when x would exceed
    /// the per-dimension limit. Kernels recover the index as `id.x + id.y * num_workgroups.x`.
    pub fn grid(&self, n: u32) -> [u32; 3] {
        let max = self.caps.max_workgroups_per_dim;
        if n <= max {
            [n.max(1), 1, 1]
        } else {
            let y = n.div_ceil(max);
            [n.div_ceil(y), y, 1]
        }
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch::new(self)
    }
}

fn check_len(label: &str, len: usize, shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(Error::shape(
            label,
            format!("{n} values for {shape:?}"),
            len,
        ));
    }
    Ok(())
}

/// A minimal one-shot channel whose receiver is a future: map_async's callback completes it,
/// natively after `poll`, in the browser from the event loop.
fn oneshot<T>() -> (OneshotTx<T>, OneshotRx<T>) {
    let state = Arc::new(Mutex::new((None, None)));
    (OneshotTx(state.clone()), OneshotRx(state))
}

type OneshotState<T> = Arc<Mutex<(Option<T>, Option<std::task::Waker>)>>;
struct OneshotTx<T>(OneshotState<T>);
struct OneshotRx<T>(OneshotState<T>);

impl<T> OneshotTx<T> {
    fn send(self, v: T) {
        let mut s = self.0.lock().unwrap();
        s.0 = Some(v);
        if let Some(w) = s.1.take() {
            w.wake();
        }
    }
}

impl<T> std::future::Future for OneshotRx<T> {
    type Output = T;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        let mut s = self.0.lock().unwrap();
        match s.0.take() {
            Some(v) => std::task::Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}
