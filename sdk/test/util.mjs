// Shared by the SDK's trials (run by tests/sdk.rs: `node sdk/test/<name>.mjs <base url>`).
import WebSocket from "ws";
import { connect } from "@pianorhythm/sdk";

export const base = process.argv[2];
if (!base) throw new Error("usage: node <script> <base url>");

// A trial that hangs is a failure with a message, not a harness timeout.
setTimeout(() => {
  console.error("trial still running after 90 s");
  process.exit(1);
}, 90_000).unref();

/** Names no other trial uses (the targets are shared). */
export const unique = (prefix) => `${prefix}-${Date.now() % 1e9}-${Math.floor(Math.random() * 1e6)}`;

/** A guest client (Node 20 has no global WebSocket: the ws package). */
export const guest = (name) => connect({ url: base, guestName: name }, { WebSocket });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `test` until it is truthy (returns its value) or fails after `ms` with `what`. */
export async function until(what, test, ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await test();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/** The promise rejects with a PianoError of `code` (and `kind`, when given); returns it. */
export async function rejectsWith(promise, code, kind) {
  try {
    await promise;
  } catch (e) {
    if (e?.name !== "PianoError") throw new Error(`expected PianoError ${code}, got ${e?.stack ?? e}`);
    if (e.code !== code || (kind && e.kind !== kind)) {
      throw new Error(`expected PianoError ${code}${kind ? `/${kind}` : ""}, got ${e.code}/${e.kind}: ${e.message}`);
    }
    return e;
  }
  throw new Error(`expected PianoError ${code}, but it succeeded`);
}
