// The browser demo's page logic: checks for WebGPU, downloads the model once (kept in the Cache
// API, with a progress bar), wires the controls and streams answers from the wasm module
// (examples/web/main.rs). State for tests: <body data-state> (starting, loading, ready,
// running, done, error), <body data-image> (the image's file name, `default` for the
// preselected one) and window.ficoco {report, error}.

import init, { Demo, DeviceSettings } from './pkg/web.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
window.ficoco = { report: null, error: null };

let demo = null;
let imageBytes = null;

function setState(state) {
  document.body.dataset.state = state;
}

function showError(element, message) {
  element.textContent = message;
  element.classList.add('error');
  window.ficoco.error = message;
  setState('error');
}

/** The adapter WebGPU offers, or an error saying what is missing and what to do. */
async function checkWebGpu() {
  if (!('gpu' in navigator)) {
    throw new Error(
      'WebGPU is not available in this browser (navigator.gpu is missing). Use a browser with ' +
      'WebGPU (Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows) and open the page over ' +
      'https or from localhost.');
  }
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    throw new Error(
      'WebGPU is present but offers no GPU adapter (blocklisted driver or no GPU). On Linux, ' +
      'start Chrome/Chromium with --enable-unsafe-webgpu --enable-features=Vulkan, or check ' +
      'chrome://gpu.');
  }
  const info = adapter.info || {};
  const has = (f) => (adapter.features.has(f) ? 'yes' : 'no');
  const maxBinding = adapter.limits.maxStorageBufferBindingSize / (1 << 20);
  const name = [info.vendor, info.architecture, info.device, info.description]
    .filter(Boolean).join(' ') || 'unnamed adapter';
  return `${name} (shader-f16 ${has('shader-f16')}, subgroups ${has('subgroups')}, ` +
    `max storage binding ${maxBinding} MiB)`;
}

/** Bytes of every model file, from the Cache API when this version was fetched before. */
async function fetchModel(progress, status) {
  const manifest = await (await fetch('model/manifest.json', { cache: 'no-store' })).json();
  const cacheName = `ficoco-model-${manifest.id}`;
  let cache = null;
  if ('caches' in self) {
    for (const name of await caches.keys()) {
      if (name.startsWith('ficoco-model-') && name !== cacheName) await caches.delete(name);
    }
    cache = await caches.open(cacheName);
  }
  const total = manifest.files.reduce((sum, f) => sum + f.size, 0);
  let done = 0;
  let fromCache = 0;
  const files = {};
  for (const file of manifest.files) {
    const url = `model/${file.name}`;
    let response = cache && (await cache.match(url));
    let bytes;
    if (response) {
      bytes = new Uint8Array(await response.arrayBuffer());
      fromCache += 1;
      done += file.size;
    } else {
      response = await fetch(url, { cache: 'no-store' });
      if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
      bytes = new Uint8Array(file.size);
      let at = 0;
      const reader = response.body.getReader();
      for (;;) {
        const { done: end, value } = await reader.read();
        if (end) break;
        if (at + value.length > bytes.length) throw new Error(`${url}: larger than the manifest says`);
        bytes.set(value, at);
        at += value.length;
        progress.value = (done + at) / total;
      }
      if (at !== file.size) throw new Error(`${url}: ${at} bytes, the manifest says ${file.size}`);
      done += file.size;
      if (cache) await cache.put(url, new Response(bytes));
    }
    progress.value = done / total;
    status.textContent = `Model ${manifest.name}: ${file.name} (${(done / 2 ** 20).toFixed(1)} of ` +
      `${(total / 2 ** 20).toFixed(1)} MiB)`;
    files[file.name] = bytes;
  }
  const where = fromCache === manifest.files.length ? 'from the browser cache' :
    fromCache === 0 ? 'downloaded, now cached' : 'partly from the browser cache';
  return { manifest, files, where };
}

const text = (bytes) => (bytes ? new TextDecoder().decode(bytes) : undefined);

async function showImage(bytes, name) {
  imageBytes = bytes;
  document.body.dataset.image = name;
  const bitmap = await createImageBitmap(new Blob([bytes]));
  const canvas = $('image-view');
  const ctx = canvas.getContext('2d');
  const scale = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
  const [w, h] = [bitmap.width * scale, bitmap.height * scale];
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
}

async function pickFile(file) {
  if (!file) return;
  try {
    await showImage(new Uint8Array(await file.arrayBuffer()), file.name);
  } catch (e) {
    $('run-status').textContent = `${file.name}: not an image this page can read (${e.message})`;
  }
}

function wireImageInput() {
  const drop = $('drop');
  drop.addEventListener('click', () => $('file').click());
  $('file').addEventListener('change', (e) => pickFile(e.target.files[0]));
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    pickFile(e.dataTransfer.files[0]);
  });
}

function wireControls() {
  const method = $('method');
  for (const m of Demo.methods()) method.add(new Option(m, m));
  method.value = 'ficoco-v';
  const budget = $('budget');
  const full = demo.full_visual_tokens();
  budget.max = full;
  $('budget-max').textContent = full;
  const sync = () => {
    $('budget-value').textContent = budget.value;
    budget.disabled = method.value === 'none';
  };
  budget.addEventListener('input', sync);
  method.addEventListener('change', sync);
  sync();
  $('run').addEventListener('click', run);
}

const fmtMs = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`);
const total = (f) => f.vision + f.projector + f.llm_prefill + f.overhead;
const fmtFlops = (x) => (x >= 1e12 ? `${(x / 1e12).toFixed(3)} TFLOPs` :
  x >= 1e9 ? `${(x / 1e9).toFixed(3)} GFLOPs` : `${(x / 1e6).toFixed(2)} MFLOPs`);

function showReport(r) {
  const t = r.timings_ms;
  const decoded = Math.max(r.tokens.length - 1, 1);
  $('t-vision').textContent = fmtMs(t.vision);
  $('t-prefill').textContent = fmtMs(t.prefill);
  $('t-decode').textContent = `${fmtMs(t.decode)} (${(t.decode / decoded).toFixed(1)} ms/token, ` +
    `${r.tokens.length} tokens)`;
  $('s-visual').textContent = `${r.visual_tokens_kept} of ${demo.full_visual_tokens()}` +
    (r.reduce === 'none' ? '' : ` (${r.reduce})`);
  $('s-schedule').textContent = r.schedule;
  const [now, none] = [total(r.flops), total(r.flops_unreduced)];
  $('s-flops').textContent = `${fmtFlops(now)} vs ${fmtFlops(none)} with none: ` +
    `${(100 * (1 - now / none)).toFixed(1)}% saved`;
  $('stats').hidden = false;
}

async function drawOverlay() {
  const side = demo.image_size();
  const rgba = await demo.overlay();
  const canvas = $('overlay');
  canvas.width = side;
  canvas.height = side;
  canvas.getContext('2d').putImageData(
    new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, rgba.length), side, side), 0, 0);
}

async function run() {
  const button = $('run');
  const status = $('run-status');
  const answer = $('answer');
  button.disabled = true;
  status.classList.remove('error');
  status.textContent = 'Running…';
  answer.textContent = '';
  window.ficoco.report = null;
  window.ficoco.error = null;
  setState('running');
  const method = $('method').value;
  const spec = method === 'none' ? 'none' : `${method}:${$('budget').value}`;
  try {
    const json = await demo.run(imageBytes, $('question').value, spec,
      Number($('max-tokens').value) || 64, (piece) => { answer.textContent += piece; });
    const report = JSON.parse(json);
    showReport(report);
    await drawOverlay();
    status.textContent = `Done: ${spec}`;
    window.ficoco.report = report;
    setState('done');
  } catch (e) {
    showError(status, `Could not answer with ${spec}: ${e.message || e}`);
  } finally {
    button.disabled = false;
  }
}

async function main() {
  const gpuStatus = $('gpu-status');
  const modelStatus = $('model-status');
  wireImageInput();
  let adapterInfo;
  try {
    adapterInfo = await checkWebGpu();
  } catch (e) {
    showError(gpuStatus, e.message);
    modelStatus.textContent = 'Model: not loaded (needs WebGPU)';
    return;
  }
  gpuStatus.textContent = `WebGPU adapter: ${adapterInfo}`;
  setState('loading');
  try {
    const [model] = await Promise.all([
      fetchModel($('model-progress'), modelStatus),
      init(),
      fetch('demo.png').then((r) => r.arrayBuffer())
        .then((b) => showImage(new Uint8Array(b), 'default')),
    ]);
    const f = model.files;
    modelStatus.textContent = `Model ${model.manifest.name}: ${model.where}; compiling…`;
    const settings = new DeviceSettings(Number(params.get('maxBindingMiB') || 0),
      params.get('matmul') || '');
    demo = await Demo.load(settings, text(f['config.json']), f['model.safetensors'],
      f['tokenizer.json'], text(f['tokenizer_config.json']), text(f['preprocessor_config.json']),
      text(f['processor_config.json']), params.get('quantize') || '');
    gpuStatus.textContent = `WebGPU adapter: ${adapterInfo}\nficoco device: ${demo.adapter().trim()}`;
    const quantized = params.get('quantize') ? `, decoder quantised to ${params.get('quantize')}` : '';
    modelStatus.textContent = `Model ${model.manifest.name}${quantized}: ${model.where}; ready ` +
      `(device and weights loaded in ${fmtMs(demo.load_ms())})`;
    wireControls();
    $('run').disabled = false;
    setState('ready');
  } catch (e) {
    showError(modelStatus, `Could not load the model: ${e.message || e}`);
  }
}

main();
