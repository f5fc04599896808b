// Browser test: signing in through an OpenID Connect provider (the rig's oidc-provider, provider
// id `local`) in Debian's Chromium, driven by playwright-core. Run by the Rust e2e harness
// (tests/oauth_browser.rs), which keeps a WebSocket client in `room` to hear the note played:
//   node tests/web/oauth_signin.mjs <base url> <screenshot dir> <room> <listener name> <server log>...
// Signs in (login form, consent), plays, signs out, signs in again with the same login (same
// account), and again from a fresh browser. At every step the refresh token (read here from the
// browser's cookie jar and from every Set-Cookie the browser received: the test may, the page
// may not) is nowhere a page script can reach, and never in the server's logs.
// Prints `ACCOUNT <user id>` and `PLAYED <user id>`; exits non-zero on the first failed check.
import { launchChromium } from "./chromium.mjs";
import { mkdirSync, readFileSync } from "node:fs";
import assert from "node:assert/strict";

const [base, shots, room, listener, ...logs] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const origin = new URL(base).origin;
const login = `oidc-${Date.now() % 1e9}-${Math.floor(Math.random() * 1e6)}`;
const errors = [];
/** Every refresh token the browser was ever given. */
const seen = new Set();

const browser = await launchChromium();

async function newPage(name) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => errors.push(`${name}: ${e.message}`));
  // Refusals the test asks for (409 last_way_in) show as "Failed to load resource": not errors.
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && errors.push(`${name} console: ${m.text()}`));
  // Every Set-Cookie of ours, redirects included: refresh tokens the jar no longer holds count too.
  ctx.on("response", async (resp) => {
    if (new URL(resp.url()).origin !== origin) return;
    for (const h of await resp.headersArray().catch(() => [])) {
      const m = h.name.toLowerCase() === "set-cookie" && /(?:^|\n)\s*piano_refresh=([^;\n]*)/.exec(h.value);
      if (m && m[1]) seen.add(m[1]);
    }
  });
  return { ctx, page };
}

/** The refresh token's parts that must never show: the whole, and its secret (`user.sid.secret`). */
const secrets = () => [...seen].flatMap((t) => {
  const secret = t.split(".").pop();
  return secret && secret.length >= 16 && secret !== t ? [t, secret] : [t];
});

/** The checks of every step: the jar's refresh cookie is HttpOnly; the page's storage, cookies
 * and globals, and the server's logs, hold no refresh token. */
async function noLeak(ctx, page, step) {
  for (const c of await ctx.cookies()) {
    if (c.name !== "piano_refresh" || !c.value) continue;
    seen.add(c.value);
    assert.ok(c.httpOnly, `${step}: piano_refresh is HttpOnly`);
    assert.equal(c.path, "/api/auth", `${step}: piano_refresh is scoped to /api/auth`);
  }
  const reach = await page.evaluate(() => {
    // Maps and protobuf's BigInts serialize too.
    const json = (v) => JSON.stringify(v, (_, x) => (typeof x === "bigint" ? String(x) : x instanceof Map || x instanceof Set ? [...x] : x));
    const out = [];
    for (const store of [localStorage, sessionStorage]) {
      for (let i = 0; i < store.length; i++) out.push(store.key(i), store.getItem(store.key(i)));
    }
    out.push(document.cookie, json(window.__piano ?? null));
    // Any global a script left: strings, and whatever serializes.
    for (const k of Object.getOwnPropertyNames(window)) {
      let v;
      try {
        v = window[k];
      } catch {
        continue;
      }
      if (typeof v === "string") out.push(v);
      else if (v && typeof v === "object" && v !== window && !(v instanceof Node)) {
        try {
          out.push(String(json(v)).slice(0, 1_000_000));
        } catch {
          // Circular or refuses: nothing a token could hide in that the checks above miss.
        }
      }
    }
    return { cookie: document.cookie, text: out.join("\n") };
  });
  assert.ok(!reach.cookie.includes("piano_refresh"), `${step}: document.cookie shows piano_refresh`);
  const logText = logs.map((p) => {
    try {
      return readFileSync(p, "utf8");
    } catch {
      return "";
    }
  }).join("\n");
  for (const s of secrets()) {
    assert.ok(!reach.text.includes(s), `${step}: a page script can read the refresh token`);
    assert.ok(!logText.includes(s), `${step}: the server's log holds the refresh token`);
  }
}

/** A page of the site (not the API's, not a provider's). */
const siteUrl = (u) => u.origin === origin && !/^\/(api|oidc|discord)\//.test(u.pathname);
const onSite = (page) => siteUrl(new URL(page.url()));

/** Clicks "Continue with" the local provider and goes through its pages (a login form, then
 * consent; a provider that remembers the browser may skip them) back to the site, signed in. */
async function signIn(page) {
  const button = page.locator('[data-provider="local"]');
  await button.waitFor({ timeout: 15000 });
  await page.screenshot({ path: `${shots}/signin-providers.png` });
  assert.match(await button.innerText(), /^Continue with /);
  await Promise.all([page.waitForNavigation({ timeout: 30000 }), button.click()]);
  const end = Date.now() + 60000;
  while (!onSite(page)) {
    assert.ok(Date.now() < end, `back on the site within 60 s; at ${page.url()}: ${(await page.content()).slice(0, 2000)}`);
    const prompt = await page.locator('input[name="prompt"]').getAttribute("value", { timeout: 1000 }).catch(() => null);
    if (prompt === "login") {
      await page.fill('input[name="login"]', login);
      await page.fill('input[name="password"]', "any password will do");
    }
    if (prompt === "login" || prompt === "consent") {
      const submit = page.locator(`form:has(input[name="prompt"][value="${prompt}"]) button[type="submit"]`);
      await Promise.all([page.waitForNavigation({ timeout: 30000 }), submit.click()]);
    } else {
      await page.waitForTimeout(100);
    }
  }
  await page.waitForFunction((r) => window.__piano?.me?.member && window.__piano.you?.id && window.__piano.room === r, room, { timeout: 30000 });
  return page.evaluate(() => ({ userId: window.__piano.me.userId, you: window.__piano.you.userId }));
}

/** Opens the account panel; its username (`@name`). */
async function openAccount(page) {
  await page.click("#account-open");
  await page.locator("#account").waitFor({ state: "visible" });
  await page.waitForFunction(() => document.querySelector("#account-username")?.textContent?.startsWith("@") && document.querySelector('[data-unlink="local"]'), null, { timeout: 10000 });
  return (await page.locator("#account-username").innerText()).slice(1);
}

try {
  const { ctx, page } = await newPage("first");
  // An earlier version's entry with a refresh token is removed at load.
  await page.goto(`${base}/#${encodeURIComponent(room)}`);
  await page.evaluate(() => localStorage.setItem("piano.session", JSON.stringify({ token: "t", name: "Old", expires: 4e9, refresh: "stale.refresh.token" })));
  await page.reload();
  await page.locator("#signin").waitFor({ state: "visible" });
  assert.equal(await page.evaluate(() => localStorage.getItem("piano.session")), null, "the stale session entry is removed");
  await noLeak(ctx, page, "before sign-in");

  // Signed in through the provider, back in the room the page was showing.
  const first = await signIn(page);
  assert.match(first.userId, /^user:/, "a member account");
  assert.equal(first.you, first.userId, "the room sees the account");
  assert.ok(seen.size > 0, "the browser got a refresh token cookie");
  await noLeak(ctx, page, "signed in");
  console.log(`ACCOUNT ${first.userId}`);

  // It plays a note the Rust listener in the room hears.
  await page.waitForFunction((n) => [...window.__piano.participants.values()].some((p) => p.name === n), listener, { timeout: 15000 });
  const key = page.locator('.key[data-note="60"]');
  await key.scrollIntoViewIfNeeded();
  const box = await key.boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height * 0.8);
  await page.mouse.down();
  await page.waitForTimeout(300);
  await page.mouse.up();
  console.log(`PLAYED ${first.userId}`);
  await noLeak(ctx, page, "played");

  // A reload renews the access token through the cookie (the refresh token rotates).
  const before = seen.size;
  await page.reload();
  await page.waitForFunction(() => window.__piano?.me?.member && window.__piano.you?.id, null, { timeout: 30000 });
  assert.ok(seen.size > before, "the reload's refresh rotated the refresh token");
  await noLeak(ctx, page, "reloaded");

  // The account panel: the username, the provider linked; unlinking the only way in is refused.
  const username = await openAccount(page);
  assert.equal(`user:${username}`, first.userId, "the panel shows the account");
  for (const p of (await (await page.request.get(`${base}/api/auth/providers`)).json()).providers) {
    if (p.id !== "local") assert.equal(await page.locator(`[data-link="${p.id}"]`).count(), 1, `a Link button for ${p.id}`);
  }
  await page.click('[data-unlink="local"]');
  await page.locator("#account-msg", { hasText: "only way in" }).waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${shots}/account.png` });
  await noLeak(ctx, page, "account panel");

  // Linking Discord (the rig's stand-in approves as the user the address names: the test adds
  // it on the way) comes back to the page with Discord listed; unlinking it takes it away.
  const discordUser = `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
  await page.route(/\/discord\/oauth2\/authorize\?/, (route) =>
    route.continue({ url: `${route.request().url()}&as=${discordUser}:linked${discordUser.slice(-6)}` }));
  await Promise.all([page.waitForNavigation({ timeout: 30000 }), page.click('[data-link="discord"]')]);
  await page.waitForURL(siteUrl, { timeout: 30000 });
  await page.waitForFunction(() => window.__piano?.me?.member && window.__piano.you?.id, null, { timeout: 30000 });
  await openAccount(page);
  await page.locator('[data-unlink="discord"]').waitFor({ timeout: 10000 });
  assert.equal(await page.locator('[data-link="discord"]').count(), 0, "Discord is linked");
  assert.equal(await page.evaluate(() => window.__piano.me.userId), first.userId, "linked to the same account");
  await noLeak(ctx, page, "linked");
  await page.click('[data-unlink="discord"]');
  await page.locator('[data-link="discord"]').waitFor({ timeout: 10000 });
  assert.equal(await page.locator('[data-unlink="discord"]').count(), 0, "Discord is unlinked");
  await noLeak(ctx, page, "unlinked");

  // Signing out ends the session and clears its cookies.
  await page.click("#signout");
  await page.locator("#signin").waitFor({ state: "visible" });
  const left = (await ctx.cookies()).filter((c) => c.name.startsWith("piano_") && c.value).map((c) => c.name);
  assert.deepEqual(left, [], "no session cookies after signing out");
  assert.equal(await page.evaluate(() => window.__piano.me.member), false, "signed out");
  await noLeak(ctx, page, "signed out");

  // The same login again: the same account.
  const again = await signIn(page);
  assert.equal(again.userId, first.userId, "signing in again gives the same account");
  await noLeak(ctx, page, "signed in again");
  await page.click("#account-open");
  await page.click("#signout");
  await page.locator("#signin").waitFor({ state: "visible" });
  await noLeak(ctx, page, "signed out again");

  // And from another browser (the provider does not know it yet: its login form again).
  const other = await newPage("second browser");
  await other.page.goto(`${base}/#${encodeURIComponent(room)}`);
  const third = await signIn(other.page);
  assert.equal(third.userId, first.userId, "another browser, same login: the same account");
  await noLeak(other.ctx, other.page, "another browser");

  assert.deepEqual(errors, [], `no page errors: ${errors.join("; ")}`);
  console.log(`oauth browser: ok (${seen.size} refresh tokens checked; screenshots in ${shots})`);
} catch (e) {
  console.error(`page errors so far: ${errors.join("; ") || "none"}`);
  throw e;
} finally {
  await browser.close();
}
