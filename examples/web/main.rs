//! The browser demo's WebAssembly side: the library's model, tokenizer and image processor
//! behind a small `wasm-bindgen` API that `examples/web/app.js` drives. Built by
//! `examples/web/build.sh` for `wasm32-unknown-unknown`; natively this example is empty.

#[cfg(target_arch = "wasm32")]
mod web {
    use ficoco::gpu::{Gpu, GpuOptions};
    use ficoco::model::{GenerateOptions, Llava, LoadOptions, Sampling};
    use ficoco::ops::GgmlType;
    use ficoco::pipeline::{self, Prepared};
    use ficoco::preprocess::{self, ImageProcessor, TextStream, Tokenizer};
    use ficoco::reduce::ReduceSpec;
    use std::cell::RefCell;
    use std::path::Path;
    use std::sync::Arc;
    use wasm_bindgen::prelude::*;

    fn js_err(e: impl std::fmt::Display) -> JsError {
        JsError::new(&e.to_string())
    }

    /// A loaded model, ready to answer questions. One question runs at a time.
    #[wasm_bindgen]
    pub struct Demo {
        /// Taken out while a call awaits (one question runs at a time).
        state: RefCell<Option<State>>,
        adapter: String,
        load_ms: f64,
        full_visual_tokens: usize,
        image_size: usize,
    }

    struct State {
        model: Llava,
        tokenizer: Tokenizer,
        processor: ImageProcessor,
        /// The last image asked about, for [`Demo::overlay`].
        image: Option<image::DynamicImage>,
        load_ms: f64,
    }

    /// Device options from the page: `max_binding_mib` caps storage bindings (0: the adapter's
    /// limit), `matmul` forces a kernel variant (`tiled`, `register`; empty: chosen from the
    /// adapter).
    #[wasm_bindgen]
    pub struct DeviceSettings {
        max_binding_mib: u32,
        matmul: String,
    }

    #[wasm_bindgen]
    impl DeviceSettings {
        #[wasm_bindgen(constructor)]
        pub fn new(max_binding_mib: u32, matmul: String) -> DeviceSettings {
            DeviceSettings {
                max_binding_mib,
                matmul,
            }
        }
    }

    #[wasm_bindgen]
    impl Demo {
        /// Open the WebGPU device and load a model from its files' contents: `config.json`,
        /// `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (may be absent) and
        /// the image processor settings, `preprocessor_config.json` or else
        /// `processor_config.json`. `quantize` (`q8_0`, `q4_k`; empty: none) quantises the
        /// decoder's matrices while loading, as the CLI's `--quantize`.
        #[allow(clippy::too_many_arguments)]
        pub async fn load(
            settings: DeviceSettings,
            config_json: String,
            weights: Vec<u8>,
            tokenizer_json: Vec<u8>,
            tokenizer_config: Option<String>,
            preprocessor_config: Option<String>,
            processor_config: Option<String>,
            quantize: String,
        ) -> Result<Demo, JsError> {
            console_error_panic_hook();
            let mut clock = ficoco::clock::Clock::start();
            let opts = GpuOptions {
                backends: Some(wgpu::Backends::BROWSER_WEBGPU),
                max_binding: (settings.max_binding_mib > 0)
                    .then(|| u64::from(settings.max_binding_mib) << 20),
                matmul: match settings.matmul.as_str() {
                    "" => None,
                    m => Some(m.parse().map_err(js_err)?),
                },
                ..GpuOptions::default()
            };
            // The model shares the device through an Arc; on the web it never leaves the thread.
            #[allow(clippy::arc_with_non_send_sync)]
            let gpu = Arc::new(Gpu::new(&opts).await.map_err(js_err)?);
            let processor =
                match (&preprocessor_config, &processor_config) {
                    (Some(text), _) => {
                        ImageProcessor::from_json_str(text, Path::new("preprocessor_config.json"))
                    }
                    (None, Some(text)) => ImageProcessor::from_processor_json_str(
                        text,
                        Path::new("processor_config.json"),
                    ),
                    (None, None) => return Err(JsError::new(
                        "the model has neither preprocessor_config.json nor processor_config.json",
                    )),
                }
                .map_err(js_err)?;
            let tokenizer = Tokenizer::from_bytes(&tokenizer_json, tokenizer_config.as_deref())
                .map_err(js_err)?;
            let load = LoadOptions {
                quantize: match quantize.as_str() {
                    "" => None,
                    "q8_0" => Some(GgmlType::Q8_0),
                    "q4_k" => Some(GgmlType::Q4K),
                    other => {
                        return Err(JsError::new(&format!(
                            "quantize {other:?}: expected q8_0, q4_k or nothing"
                        )))
                    }
                },
                ..LoadOptions::default()
            };
            let model = Llava::load_from_bytes(gpu.clone(), &config_json, weights, &load)
                .map_err(js_err)?;
            let load_ms = clock.lap_ms();
            let config = model.config();
            Ok(Demo {
                adapter: gpu.describe(),
                load_ms,
                full_visual_tokens: config.visual_tokens(),
                image_size: config.vision_config.image_size,
                state: RefCell::new(Some(State {
                    model,
                    tokenizer,
                    processor,
                    image: None,
                    load_ms,
                })),
            })
        }

        /// The adapter, its backend and what the kernels use on it.
        pub fn adapter(&self) -> String {
            self.adapter.clone()
        }

        /// Milliseconds the device and model took to load.
        pub fn load_ms(&self) -> f64 {
            self.load_ms
        }

        /// Visual tokens one image gives without reduction.
        pub fn full_visual_tokens(&self) -> usize {
            self.full_visual_tokens
        }

        /// Side in pixels of the image the vision tower sees (the overlay's size).
        pub fn image_size(&self) -> usize {
            self.image_size
        }

        /// The reduction methods `run` accepts.
        pub fn methods() -> Vec<String> {
            ficoco::reduce::every_method()
                .into_iter()
                .map(String::from)
                .collect()
        }

        /// Answer `question` about an image (PNG or JPEG bytes) with greedy decoding under the
        /// reduction `reduce` (`METHOD[:BUDGET]`, as the CLI's `--reduce`), calling
        /// `on_text(piece)` as the answer streams. Returns the CLI's `--json` object as text.
        pub async fn run(
            &self,
            image: Vec<u8>,
            question: String,
            reduce: String,
            max_new_tokens: usize,
            on_text: js_sys::Function,
        ) -> Result<String, JsError> {
            let mut state = self.take_state("a question is already running")?;
            let result = state
                .answer(&image, &question, &reduce, max_new_tokens, &on_text)
                .await
                .map(|report| report.to_string());
            self.state.replace(Some(state));
            result
        }

        /// The last image as the vision tower saw it, with the kept and merged patches drawn
        /// over it ([`pipeline::kept_overlay`]), as RGBA bytes of `image_size()` squared pixels.
        pub async fn overlay(&self) -> Result<Vec<u8>, JsError> {
            let state = self.take_state("a question is still running")?;
            let result = match &state.image {
                Some(image) => pipeline::kept_overlay(&state.model, &state.processor, image)
                    .await
                    .map(|rgb| image::DynamicImage::ImageRgb8(rgb).into_rgba8().into_raw())
                    .map_err(js_err),
                None => Err(JsError::new("no question has been asked yet")),
            };
            self.state.replace(Some(state));
            result
        }

        /// The state, out of its cell while a call awaits (so no borrow is held across awaits);
        /// `busy` is the error when another call has it.
        fn take_state(&self, busy: &str) -> Result<State, JsError> {
            self.state.take().ok_or_else(|| JsError::new(busy))
        }
    }

    impl State {
        /// [`Demo::run`]'s work: the CLI's `--json` report of the answer.
        async fn answer(
            &mut self,
            image: &[u8],
            question: &str,
            reduce: &str,
            max_new_tokens: usize,
            on_text: &js_sys::Function,
        ) -> Result<serde_json::Value, JsError> {
            let image = preprocess::decode_image(image, "image").map_err(js_err)?;
            let pixels = self.processor.preprocess(&image).map_err(js_err)?;
            let spec: ReduceSpec = reduce.parse().map_err(js_err)?;
            let text = preprocess::PromptFormat::detect(&self.tokenizer).prompt(question);
            let prepared: Prepared = pipeline::prepare(
                &mut self.model,
                &self.tokenizer,
                &text,
                &spec,
                None,
                false,
                true,
            )
            .map_err(js_err)?;
            let opts = GenerateOptions {
                max_new_tokens,
                sampling: Sampling::Greedy,
                stop_tokens: self.tokenizer.eos_id().into_iter().collect(),
                keep_prefill_logits: false,
            };
            let emit = |piece: String| {
                if !piece.is_empty() {
                    // A failing page callback must not stop the answer.
                    let _ = on_text.call1(&JsValue::NULL, &piece.into());
                }
            };
            let mut stream = TextStream::new(&self.tokenizer);
            let out = self
                .model
                .generate(&pixels, &prepared.prompt, &opts, |t| {
                    if let Ok(piece) = stream.push(t) {
                        emit(piece);
                    }
                    true
                })
                .await
                .map_err(js_err)?;
            if let Ok(rest) = stream.finish() {
                emit(rest);
            }
            let answer = self.tokenizer.decode(&out.tokens, true).map_err(js_err)?;
            self.image = Some(image);
            Ok(prepared.report(&self.model, &out, &answer, self.load_ms))
        }
    }

    /// Report Rust panics on the browser console instead of "unreachable executed".
    fn console_error_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                web_sys::console::error_1(&format!("ficoco panicked: {info}").into());
            }));
        });
    }
}
