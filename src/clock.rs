//! Wall-clock laps for the timings reported to users. `std::time::Instant` panics in the
//! browser, so there the clock reads `performance.now()` instead.

pub struct Clock {
    last: f64,
}

impl Clock {
    pub fn start() -> Self {
        Self { last: now_ms() }
    }

    /// Milliseconds since the previous lap (or the start).
    pub fn lap_ms(&mut self) -> f64 {
        let now = now_ms();
        let ms = now - self.last;
        self.last = now;
        ms
    }
}

/// Milliseconds on a monotonic clock with an arbitrary origin.
#[cfg(not(target_arch = "wasm32"))]
fn now_ms() -> f64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
}

/// `performance.now()` of the page or worker; 0 where the global has none.
#[cfg(target_arch = "wasm32")]
fn now_ms() -> f64 {
    use wasm_bindgen::JsCast;
    js_sys::Reflect::get(&js_sys::global(), &"performance".into())
        .ok()
        .and_then(|p| p.dyn_into::<web_sys::Performance>().ok())
        .map_or(0.0, |p| p.now())
}
