// Drives the built browser demo in headless Chromium (playwright-core, Debian's chromium) for
// examples/web/test.sh: serves the site on 127.0.0.1, asks each expected case's question through
// the page's controls, compares the answers with the native CLI's, checks that a reload takes
// the model from the browser cache, that a decoder quantised while loading (?quantize=Q)
// answers as the CLI's --quantize Q, and that the page explains a missing WebGPU, and saves a
// screenshot.
//
//   node drive.mjs --site DIR --expect FILE.json --screenshot FILE.png [--chromium PATH]
//
// FILE.json: {"question": ..., "max_new_tokens": N, "cases": [{"reduce": "none" | "METHOD:N",
// "native": <generate --json output>}], "quantized": {"quantize": Q, "cases": [...]}}; the
// quantized part may be absent. Exits 1 on any mismatch, 2 on a setup failure.

import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { dirname, extname, join, normalize } from 'node:path';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    site: { type: 'string' },
    expect: { type: 'string' },
    screenshot: { type: 'string' },
    report: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    timeout: { type: 'string', default: '600' },
  },
});
if (!opt.site || !opt.expect || !opt.screenshot) {
  console.error('usage: node drive.mjs --site DIR --expect FILE.json --screenshot FILE.png');
  process.exit(2);
}
const timeout = Number(opt.timeout) * 1000;
const expect = JSON.parse(await readFile(opt.expect, 'utf8'));

const types = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.wasm': 'application/wasm',
  '.json': 'application/json', '.png': 'image/png', '.safetensors': 'application/octet-stream',
};
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
  const file = join(opt.site, path.endsWith('/') ? `${path}index.html` : path);
  try {
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': types[extname(file)] || 'application/octet-stream',
      'content-length': body.length });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const url = `http://127.0.0.1:${server.address().port}/?maxBindingMiB=128`;

// WebGPU in headless Chromium is SwiftShader (see gpu-runtime-notes.md); the rest keeps the
// browser from reaching for a network it does not have.
const browser = await chromium.launch({
  executablePath: opt.chromium,
  headless: true,
  args: ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--enable-features=Vulkan',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--no-first-run', '--disable-quic'],
});
let failures = 0;
let gpuErrors = 0;
const results = [];
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  // WebGPU reports an invalid shader or pipeline on the console and goes on: count those.
  page.on('console', (m) => {
    console.log(`[page ${m.type()}] ${m.text()}`);
    if (/Error while parsing WGSL|\[Invalid (ShaderModule|ComputePipeline|BindGroup|Buffer)/.test(m.text())) {
      gpuErrors += 1;
    }
  });
  page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
  const waitState = async (states) => {
    await page.waitForFunction((s) => s.includes(document.body.dataset.state), states,
      { timeout, polling: 200 });
    return page.evaluate(() => document.body.dataset.state);
  };

  /** Asks each case's question in the loaded page; the number of cases that fail. */
  const askAll = async (cases, tag) => {
    const label = tag ? `${tag} ` : '';
    let failed = 0;
    for (const c of cases) {
      const [method, budget] = c.reduce.split(':');
      await page.fill('#question', expect.question);
      await page.selectOption('#method', method);
      if (budget) {
        await page.$eval('#budget', (el, v) => {
          el.value = v;
          el.dispatchEvent(new Event('input'));
        }, budget);
      }
      await page.fill('#max-tokens', String(expect.max_new_tokens));
      start = Date.now();
      await page.click('#run');
      const state = await waitState(['done', 'error']);
      const seconds = ((Date.now() - start) / 1000).toFixed(1);
      if (state === 'error') {
        failed += 1;
        console.log(`FAIL ${label}${c.reduce}: ${await page.evaluate(() => window.ficoco.error)}`);
        continue;
      }
      const report = await page.evaluate(() => window.ficoco.report);
      const streamed = await page.textContent('#answer');
      const same = JSON.stringify(report.tokens) === JSON.stringify(c.native.tokens) &&
        report.text === c.native.text && streamed === report.text &&
        report.visual_tokens === c.native.visual_tokens;
      if (!same) failed += 1;
      results.push({ reduce: c.reduce, quantize: tag, same, seconds: Number(seconds), web: report,
        streamed, native: c.native });
      console.log(`${same ? 'ok  ' : 'FAIL'} ${label}${c.reduce} (${seconds} s in the browser; ` +
        `${report.visual_tokens} visual tokens)`);
      console.log(`  browser: ${JSON.stringify(report.text)}`);
      console.log(`  native:  ${JSON.stringify(c.native.text)}`);
      if (!same) {
        console.log(`  browser tokens: ${JSON.stringify(report.tokens)}`);
        console.log(`  native tokens:  ${JSON.stringify(c.native.tokens)}`);
        console.log(`  streamed text:  ${JSON.stringify(streamed)}`);
      }
    }
    return failed;
  };

  let start = Date.now();
  await page.goto(url);
  if ((await waitState(['ready', 'error'])) === 'error') {
    throw new Error(`the page did not load: ${await page.evaluate(() => window.ficoco.error)}`);
  }
  console.log(`page ready in ${((Date.now() - start) / 1000).toFixed(1)} s`);
  console.log(await page.textContent('#gpu-status'));

  // The image goes in through the page's file picker (the same image as the preselected one).
  await page.setInputFiles('#file', join(opt.site, 'demo.png'));
  await page.waitForFunction(() => document.body.dataset.image === 'demo.png', null,
    { timeout: 60000 });
  failures += await askAll(expect.cases, '');
  await mkdir(dirname(opt.screenshot), { recursive: true });
  await page.screenshot({ path: opt.screenshot, fullPage: true });

  // A second visit must take the model from the Cache API instead of the network.
  await page.reload();
  if ((await waitState(['ready', 'error'])) === 'error') {
    failures += 1;
    console.log(`FAIL reload: ${await page.evaluate(() => window.ficoco.error)}`);
  } else {
    const status = await page.textContent('#model-status');
    const cached = status.includes('from the browser cache');
    if (!cached) failures += 1;
    console.log(`${cached ? 'ok  ' : 'FAIL'} reload: ${status}`);
  }

  // A quantised decoder: the page loads with ?quantize=Q and answers as the CLI's --quantize Q.
  if (expect.quantized) {
    await page.goto(`${url}&quantize=${expect.quantized.quantize}`);
    if ((await waitState(['ready', 'error'])) === 'error') {
      failures += 1;
      console.log(`FAIL quantize: ${await page.evaluate(() => window.ficoco.error)}`);
    } else {
      console.log(await page.textContent('#model-status'));
      await page.setInputFiles('#file', join(opt.site, 'demo.png'));
      await page.waitForFunction(() => document.body.dataset.image === 'demo.png', null,
        { timeout: 60000 });
      failures += await askAll(expect.quantized.cases, expect.quantized.quantize);
    }
  }

  // Without WebGPU the page must say so: a browser lacking navigator.gpu, and one whose WebGPU
  // offers no adapter (Chromium without --enable-unsafe-webgpu).
  const noGpu = await browser.newPage();
  await noGpu.addInitScript(() => { delete Navigator.prototype.gpu; });
  failures += await expectGpuError(noGpu, 'not available in this browser');
  const plain = await chromium.launch({ executablePath: opt.chromium, headless: true,
    args: ['--headless=new', '--no-sandbox', '--disable-background-networking', '--no-first-run'] });
  try {
    failures += await expectGpuError(await plain.newPage(), 'offers no GPU adapter');
  } finally {
    await plain.close();
  }
  if (gpuErrors > 0) {
    failures += 1;
    console.log(`FAIL: ${gpuErrors} WebGPU validation errors on the page (above)`);
  }
} catch (e) {
  console.log(`FAIL: ${e.message}`);
  failures += 1;
} finally {
  await browser.close();
  server.close();
}

/** 0 if the page ends in its error state naming `phrase` in the WebGPU status, else 1. */
async function expectGpuError(page, phrase) {
  await page.goto(url);
  await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state),
    null, { timeout: 60000, polling: 200 });
  const status = await page.textContent('#gpu-status');
  const ok = (await page.evaluate(() => document.body.dataset.state)) === 'error' &&
    status.includes(phrase);
  console.log(`${ok ? 'ok  ' : 'FAIL'} no WebGPU: ${status}`);
  return ok ? 0 : 1;
}
if (opt.report) await writeFile(opt.report, JSON.stringify(results, null, 1));
console.log(`screenshot: ${opt.screenshot}`);
process.exit(failures ? 1 : 0);
