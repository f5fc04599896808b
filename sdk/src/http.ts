// The REST calls the SDK needs: a guest token and the room directory (README "HTTP API").
// Every error body is `{"error": {"code", "message"}}`: it becomes a PianoError with that code.

import { PianoError } from "./errors.js";

export type Fetch = (input: string, init?: { method?: string; headers?: Record<string, string>; body?: string }) => Promise<{
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

async function call<T>(fetcher: Fetch, url: string, init?: Parameters<Fetch>[1]): Promise<T> {
  const resp = await fetcher(url, init);
  const body = (await resp.json().catch(() => undefined)) as { error?: { code?: string; message?: string } } | undefined;
  if (!resp.ok) {
    const e = body?.error;
    throw new PianoError(e?.code ?? "HTTP_ERROR", e?.message ?? `HTTP ${resp.status}`, "http", 0, resp.status);
  }
  return body as T;
}

const defaultFetch = (): Fetch => (globalThis as unknown as { fetch: Fetch }).fetch;

/** `POST /api/auth/guest`: a guest token for `name` (valid 24 h). */
export function guestToken(base: string, name: string, fetcher: Fetch = defaultFetch()): Promise<GuestToken> {
  return call(fetcher, apiUrl(base, "api/auth/guest"), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
}

/** `GET /api/rooms`: the visible, non-empty rooms, most players first (cached up to 2 s). */
export function listRooms(base: string, fetcher: Fetch = defaultFetch()): Promise<RoomInfo[]> {
  return call(fetcher, apiUrl(base, "api/rooms"));
}
