// Browser test: the API reference page (/docs/api/, Swagger UI from npm, served by the target
// itself) renders docs/openapi.yaml under the site's own security headers: no CSP violation,
// no page or console error, and one entry per operation of the document. Run by the Rust e2e
// harness (tests/api_description.rs):
//   node tests/web/api_docs.mjs <base url> <screenshot dir> <operations in the document>
// Exits non-zero with a message on the first failed check.
import { launchChromium } from "./chromium.mjs";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";

const [base, shots, operations] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const errors = [];
const browser = await launchChromium();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && errors.push(`console: ${m.text()}`));
  page.on("response", (r) => r.status() >= 400 && errors.push(`${r.status()} ${r.url()}`));
  // CSP violations as the page sees them (Chromium also logs them as console errors).
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const resp = await page.goto(`${base}/docs/api/`);
  assert.equal(resp.status(), 200, "the page is served");
  const csp = resp.headers()["content-security-policy"] ?? "";
  assert.match(csp, /script-src 'self'/, `the page is served with the site's CSP: ${csp}`);
  await page.waitForSelector(".opblock", { timeout: 30000 });
  const title = await page.textContent(".info .title");
  assert.match(title, /Multiplayer piano server/, `the document's title is shown: ${title}`);
  const shown = await page.locator(".opblock").count();
  assert.equal(shown, Number(operations), "one entry per operation of the document");
  // An operation opens and shows its responses (the error schema is there).
  await page.click("#operations-auth-guest .opblock-summary");
  await page.waitForSelector("#operations-auth-guest .responses-table", { timeout: 10000 });
  await page.screenshot({ path: `${shots}/api-docs.png`, fullPage: false });
  const violations = await page.evaluate(() => window.__csp);
  assert.deepEqual(violations, [], "no CSP violation");
  assert.deepEqual(errors, [], "no page or console error");
  console.log(`api_docs: ${shown} operations rendered, no CSP violation`);
} finally {
  await browser.close();
}
