// The REST calls the SDK needs: a guest token and the room directory (README "HTTP API").
// Every error body is `{"error": {"code", "message"}}`: it becomes a PianoError with that code.

import { PianoError } from "./errors.js";

export type Fetch = (input: string, init?: { method?: string; headers?: Record<string, string>; body?: string; signal?: AbortSignal }) => Promise<{
  ok: boolean;
  status: number;
  json(): Promise<unknown>;
}>;

/** One room as `GET /api/rooms` lists it. */
export interface RoomInfo {
  name: string;
  players: number;
  capacity: number;
  visible: boolean;
  locked: boolean;
  owner_name: string;
  kind: string;
  last_activity: number;
}

export interface GuestToken {
  token: string;
  expires_at: number;
  user: { id: string; name: string; roles: string[] };
}

export function apiUrl(base: string, path: string): string {
  return new URL(path, base.endsWith("/") ? base : `${base}/`).toString();
}

/** How long a REST call may take, answer body included, unless the caller says otherwise. */
export const HTTP_TIMEOUT_MS = 30_000;

async function call<T>(fetcher: Fetch, url: string, init: Parameters<Fetch>[1] = {}, timeoutMs = HTTP_TIMEOUT_MS): Promise<T> {
  // The abort ends a real fetch; the race also bounds a fetch (or body) that ignores it. (Not
  // AbortSignal.timeout: its timer is unref'd, and a Node process would exit mid-wait.)
  const abort = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      abort.abort();
      reject(new PianoError("TIMEOUT", `no answer from ${url} within ${timeoutMs} ms`, "timeout"));
    }, timeoutMs);
  });
  let resp: Awaited<ReturnType<Fetch>>;
  let body: { b: { error?: { code?: string; message?: string } } | undefined } | undefined;
  try {
    resp = await Promise.race([fetcher(url, { ...init, signal: abort.signal }), timedOut]);
    body = await Promise.race([resp.json().then((b) => ({ b: b as { error?: { code?: string; message?: string } } }), () => undefined), timedOut]);
  } finally {
    clearTimeout(timer);
  }
  if (!resp.ok) {
    const e = body?.b?.error;
    throw new PianoError(e?.code ?? "HTTP_ERROR", e?.message ?? `HTTP ${resp.status}`, "http", 0, resp.status);
  }
  if (!body) throw new PianoError("HTTP_ERROR", `HTTP ${resp.status} without a JSON body`, "http", 0, resp.status);
  return body.b as T;
}

const defaultFetch = (): Fetch => (globalThis as unknown as { fetch: Fetch }).fetch;

/** `POST /api/auth/guest`: a guest token for `name` (valid 24 h). */
export function guestToken(base: string, name: string, fetcher: Fetch = defaultFetch(), timeoutMs = HTTP_TIMEOUT_MS): Promise<GuestToken> {
  return call(fetcher, apiUrl(base, "api/auth/guest"), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  }, timeoutMs);
}

/** `GET /api/rooms`: the visible, non-empty rooms, most players first (cached up to 2 s). */
export function listRooms(base: string, fetcher: Fetch = defaultFetch(), timeoutMs = HTTP_TIMEOUT_MS): Promise<RoomInfo[]> {
  return call(fetcher, apiUrl(base, "api/rooms"), {}, timeoutMs);
}
