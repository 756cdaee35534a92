//! Recording dispatches: many per submit, parameters gathered into the uniform arena and written
//! with one `write_buffer` just before the submit that uses them.

use super::{Gpu, Kernel, Tensor, PARAM_SLOT, PARAM_SLOTS};
use crate::{Error, Result};

/// A storage binding: read-only or read-write. The order is the shader's `@binding(1..)`.
#[derive(Clone, Copy)]
pub enum Bind<'a> {
    R(&'a Tensor),
    W(&'a Tensor),
}

impl<'a> Bind<'a> {
    fn tensor(&self) -> &'a Tensor {
        match self {
            Bind::R(t) | Bind::W(t) => t,
        }
    }
}

/// Dispatches recorded into one compute pass and submitted together. Dropping a batch without
/// `submit` discards its work.
pub struct Batch<'g> {
    gpu: &'g Gpu,
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    params: Vec<u8>,
    dispatches: u64,
}

impl<'g> Batch<'g> {
    pub(super) fn new(gpu: &'g Gpu) -> Self {
        Self {
            gpu,
            encoder: None,
            pass: None,
            params: Vec::new(),
            dispatches: 0,
        }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Record one dispatch of `kernel` with `params` (binding 0, a uniform struct of at most
    /// 256 bytes) and the storage `binds` (bindings 1..).
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        kernel: &Kernel,
        params: &P,
        binds: &[Bind],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let bytes = bytemuck::bytes_of(params);
        if bytes.len() as u64 > PARAM_SLOT {
            return Err(Error::Gpu(format!(
                "{}: parameters of {} bytes exceed the {PARAM_SLOT}-byte slot",
                kernel.entry,
                bytes.len()
            )));
        }
        if workgroups.contains(&0) {
            return Ok(());
        }
        #[cfg(not(target_arch = "wasm32"))]
        let profiling = self.gpu.profiling();
        #[cfg(not(target_arch = "wasm32"))]
        if profiling {
            self.flush();
            self.gpu.wait()?;
        }
        let pattern: Vec<bool> = binds.iter().map(|b| matches!(b, Bind::R(_))).collect();
        let tensors: Vec<&Tensor> = binds.iter().map(Bind::tensor).collect();
        let pipeline = self.gpu.pipeline(kernel, &pattern)?;
        let bind_group = self.gpu.bind_group(&pattern, &tensors)?;
        if self.params.len() as u64 >= PARAM_SLOT * PARAM_SLOTS {
            self.flush();
        }
        let offset = self.params.len() as u32;
        self.params.extend_from_slice(bytes);
        self.params.resize(offset as usize + PARAM_SLOT as usize, 0);
        let pass = self.pass();
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[offset]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        self.dispatches += 1;
        #[cfg(not(target_arch = "wasm32"))]
        if profiling {
            let t0 = std::time::Instant::now();
            self.flush();
            self.gpu.wait()?;
            self.gpu
                .record_kernel_time(kernel.entry, t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    }

    /// Copy `src` into the start of `dst` (byte counts must fit).
    pub fn copy(&mut self, src: &Tensor, dst: &Tensor) -> Result<()> {
        let n = src.bytes();
        if n > dst.buffer_bytes() - dst.offset {
            return Err(Error::InvalidArgument(format!("copy {src:?} into {dst:?}")));
        }
        self.pass = None;
        let enc = self.encoder();
        enc.copy_buffer_to_buffer(&src.buf.raw, src.offset, &dst.buf.raw, dst.offset, n);
        Ok(())
    }

    /// Fill `t` with zero bytes.
    pub fn clear(&mut self, t: &Tensor) -> Result<()> {
        self.pass = None;
        let enc = self.encoder();
        enc.clear_buffer(&t.buf.raw, t.offset, Some(t.bytes()));
        Ok(())
    }

    /// Dispatches recorded since the batch began.
    pub fn dispatch_count(&self) -> u64 {
        self.dispatches
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.encoder
            .get_or_insert_with(|| self.gpu.device.create_command_encoder(&Default::default()))
    }

    fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            let pass = self
                .encoder()
                .begin_compute_pass(&Default::default())
                .forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass.as_mut().unwrap()
    }

    /// Submit what is recorded so far and keep recording into a fresh encoder.
    pub fn flush(&mut self) {
        self.pass = None;
        if let Some(enc) = self.encoder.take() {
            self.gpu.submit_with_params(&self.params, enc.finish());
        }
        self.params.clear();
    }

    pub fn submit(mut self) {
        self.flush();
    }
}
