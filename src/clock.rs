//! Wall-clock laps for the timings reported to users. `std::time::Instant` panics in the
//! browser, where this clock reports zero until the web build supplies `performance.now()`.

pub struct Clock {
    #[cfg(not(target_arch = "wasm32"))]
    last: std::time::Instant,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            #[cfg(not(target_arch = "wasm32"))]
            last: std::time::Instant::now(),
        }
    }

    /// Milliseconds since the previous lap (or the start).
    pub fn lap_ms(&mut self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let now = std::time::Instant::now();
            let ms = (now - self.last).as_secs_f64() * 1e3;
            self.last = now;
            ms
        }
        #[cfg(target_arch = "wasm32")]
        0.0
    }
}
