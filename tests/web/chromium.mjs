// Debian's Chromium for the browser tests, driven by playwright-core (no browser download).
import { chromium } from "playwright-core";

export const launchChromium = () =>
  chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
    ],
  });

/** A page of its own (a browser context each) signed in as `name` and joined to `room`: a
 * guest, or a member registered with `password`. Page errors and console errors go to `errors`. */
export async function openPlayer(browser, { base, room, name, errors, viewport = { width: 1280, height: 800 }, password = null }) {
  const ctx = await browser.newContext({ viewport });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => errors.push(`${name}: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && errors.push(`${name} console: ${m.text()}`));
  await page.goto(`${base}/#${encodeURIComponent(room)}`);
  if (password) {
    // A member: register through the sign-in dialog.
    await page.check('input[name="mode"][value="register"]');
    await page.fill("#password", password);
  }
  await page.fill("#nickname", name);
  await page.click("#signin-form button[type=submit]");
  // A member's sign-up hashes the password (PBKDF2, 100k rounds): seconds in the fallback's
  // debug build on a busy test machine.
  await page.waitForFunction(() => window.__piano?.you?.id, null, { timeout: password ? 60000 : 15000 });
  return page;
}

/** Presses (and by default releases) the key of MIDI `note` on `page` with the mouse. */
export async function pressKey(page, note, { release = true } = {}) {
  const key = page.locator(`.key[data-note="${note}"]`);
  await key.scrollIntoViewIfNeeded();
  const box = await key.boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height * 0.8);
  await page.mouse.down();
  if (release) await page.mouse.up();
}
