// Times V8 compiling a wasm module in Debian's Chromium (a V8 as recent as workerd's: Node 20's
// cannot read the worker's exception-handling and reference-type opcodes). Each sample compiles
// the module with a custom section of its own appended (`nonce`), so V8's cache of compiled
// modules (keyed by the bytes) never answers instead. Prints the times in ms as JSON.
// Usage: node bench/cold-compile.mjs MODULE.wasm SAMPLES
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [wasm, samples = "15"] = process.argv.slice(2);
const bytes = readFileSync(wasm).toString("base64");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", ...(process.env.V8_FLAGS ? [`--js-flags=${process.env.V8_FLAGS}`] : [])],
});
try {
  const page = await browser.newPage();
  const times = await page.evaluate(
    async ({ b64, n }) => {
      const base = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const out = [];
      for (let i = 0; i < n; i++) {
        // Custom section: id 0, size 14, name "nonce" (5), then 8 bytes of i.
        const nonce = new Uint8Array([0, 14, 5, 110, 111, 110, 99, 101, ...new Uint8Array(new Float64Array([i]).buffer)]);
        const buf = new Uint8Array(base.length + nonce.length);
        buf.set(base);
        buf.set(nonce, base.length);
        const t0 = performance.now();
        await WebAssembly.compile(buf);
        out.push(performance.now() - t0);
      }
      return out;
    },
    { b64: bytes, n: Number(samples) },
  );
  console.log(JSON.stringify(times));
} finally {
  await browser.close();
}
