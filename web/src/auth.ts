// Signing in and keeping a session. A guest's token lives in localStorage (it is all a guest
// has). A member's session lives in cookies the server sets: the refresh token in an HttpOnly
// cookie no script here can read, and `piano_csrf`, which the page sends back as a header to
// prove it is our page asking. The member's short-lived access token is kept in memory only;
// localStorage holds nothing more than the member's name and the token's expiry.

export interface Session {
  /** The access token (a member's: memory only). */
  token: string;
  name: string;
  /** Seconds since the epoch. */
  expires: number;
  /** A member: renewed through the session cookie. */
  member: boolean;
  /** `user:<username>` (members; guests get theirs from the server). */
  userId?: string;
  username?: string;
}

export interface Provider {
  id: string;
  name: string;
  kind: string;
}

const KEY = "piano.session";
const CSRF_COOKIE = "piano_csrf";

let current: Session | undefined;
/** The last `csrf_token` answer, for a browser that would not let the page read its cookie. */
let lastCsrf = "";
/** One refresh at a time in this tab: a refresh token used twice ends the session. */
let refreshing: Promise<Session | undefined> | undefined;

/** Signed-in identity without secrets, for display and the tests (`window.__piano.me`). */
export const me = { name: "", member: false, userId: "" };

function publish(s: Session | undefined): Session | undefined {
  current = s;
  me.name = s?.name ?? "";
  me.member = !!s?.member;
  me.userId = s?.userId ?? "";
  return s;
}

function readCookie(name: string): string | undefined {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return undefined;
}

const hasCookieSession = () => !!readCookie(CSRF_COOKIE);

interface AuthBody {
  token?: string;
  access_token?: string;
  expires_at: number;
  csrf_token?: string;
  user?: { id?: string; name?: string; username?: string };
}

/** Keeps what an answer gives; never a refresh token (a cookie answer has none anyway). */
function keep(body: AuthBody, member: boolean): Session {
  if (body.csrf_token) lastCsrf = body.csrf_token;
  const s: Session = {
    token: body.access_token ?? body.token ?? "",
    name: body.user?.name ?? current?.name ?? "",
    expires: body.expires_at,
    member,
    userId: body.user?.id,
    username: body.user?.username,
  };
  // A guest keeps its token; a member only what is not secret.
  const stored = member ? { name: s.name, expires: s.expires, member: true } : { token: s.token, name: s.name, expires: s.expires };
  localStorage.setItem(KEY, JSON.stringify(stored));
  return publish(s) as Session;
}

function forget(): void {
  localStorage.removeItem(KEY);
  lastCsrf = "";
  publish(undefined);
}

/** The session now, if any (a member's access token may need a refresh: see `freshToken`). */
export function session(): Session | undefined {
  return current;
}

async function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

/** Renews a member's access token with the session cookie (and its CSRF token). */
function refresh(): Promise<Session | undefined> {
  const run = async () => {
    const csrf = readCookie(CSRF_COOKIE) ?? lastCsrf;
    if (!csrf) return void forget();
    try {
      const resp = await post("/api/auth/refresh", {}, { "x-csrf-token": csrf });
      if (resp.ok) return keep(await resp.json(), true);
      // Ended or expired: signed out. A refusal (403: another tab's refresh raced this one), a
      // 429 or a 5xx keeps the session for the next try.
      if (resp.status === 401) forget();
    } catch {
      // Offline: try again at the next connect.
    }
    return undefined;
  };
  // Tabs share the cookie: with Web Locks, one tab refreshes at a time (the next one reads the
  // rotated cookie).
  const locked = () => (navigator.locks ? navigator.locks.request("piano-refresh", run) : run());
  refreshing ??= locked().finally(() => (refreshing = undefined));
  return refreshing;
}

/** A token that is valid now: refreshes a member's access token shortly before it expires.
 * `renew`: the server ended the token (4001) or the roles changed (4002): a member refreshes
 * at once, a guest signs in again with the same name. */
export async function freshToken(renew = false): Promise<string | undefined> {
  const s = current;
  if (!s) return undefined;
  if (!renew && s.expires * 1000 > Date.now() + 60_000) return s.token;
  if (s.member) return (await refresh())?.token;
  if (!renew) return undefined;
  try {
    return (await signIn("guest", s.name, "")).token;
  } catch {
    forget();
    return undefined;
  }
}

/** Guest sign-in with a nickname, or a member's login or registration (session in cookies). */
export async function signIn(mode: string, name: string, password: string): Promise<Session> {
  const guest = mode === "guest";
  const [path, body] = guest
    ? ["/api/auth/guest", { name }]
    : [`/api/auth/${mode === "register" ? "register" : "login"}`, { username: name, password, cookie: true }];
  const resp = await post(path, body);
  const json = await resp.json();
  if (!resp.ok) throw new Error(json?.error?.message ?? `sign-in failed (${resp.status})`);
  return keep(json, !guest);
}

/** Ends the session: a member's on the server (which clears the cookies), a guest's here. */
export async function signOut(): Promise<void> {
  const member = current?.member;
  const csrf = readCookie(CSRF_COOKIE) ?? lastCsrf;
  forget();
  if (!member || !csrf) return;
  await post("/api/auth/logout", {}, { "x-csrf-token": csrf }).catch(() => undefined);
}

/** At page load: a member session from the cookies (how a sign-in through a provider arrives),
 * else a guest's stored token. Entries of earlier versions that kept a refresh token go. */
export async function restore(): Promise<Session | undefined> {
  let stored: { token?: string; name?: string; expires?: number; member?: boolean; refresh?: unknown } | null = null;
  try {
    stored = JSON.parse(localStorage.getItem(KEY) ?? "null");
  } catch {
    // Unreadable: dropped below.
  }
  if (!stored || typeof stored !== "object" || "refresh" in stored) {
    localStorage.removeItem(KEY);
    stored = null;
  }
  if (hasCookieSession()) {
    publish({ token: "", name: stored?.name ?? "", expires: 0, member: true });
    const s = await refresh();
    if (s) return s;
  }
  if (stored && !stored.member && stored.token && (stored.expires ?? 0) * 1000 > Date.now() + 60_000) {
    return publish({ token: stored.token, name: stored.name ?? "", expires: stored.expires ?? 0, member: false });
  }
  forget();
  return undefined;
}

/** Bearer requests for the account panel; JSON answers (or undefined for 204). */
export async function api<T>(method: string, path: string): Promise<T> {
  const token = await freshToken();
  const resp = await fetch(path, { method, headers: { authorization: `Bearer ${token ?? ""}` } });
  const json = resp.status === 204 ? undefined : await resp.json().catch(() => undefined);
  if (!resp.ok) {
    const err = new Error(json?.error?.message ?? `${method} ${path} failed (${resp.status})`);
    (err as Error & { code?: string }).code = json?.error?.code;
    throw err;
  }
  return json as T;
}

/** The sign-in providers the server has (none: an empty list), Discord first. */
export async function providers(): Promise<Provider[]> {
  try {
    const resp = await fetch("/api/auth/providers");
    if (!resp.ok) return [];
    const list = ((await resp.json()).providers ?? []) as Provider[];
    return list.sort((a, b) => Number(b.kind === "discord") - Number(a.kind === "discord"));
  } catch {
    return [];
  }
}

/** Where the provider sends the player back: this page, room included. */
export const returnTo = () => location.pathname + location.search + location.hash;

export const startUrl = (id: string) =>
  `/api/auth/oauth/${encodeURIComponent(id)}/start?return_to=${encodeURIComponent(returnTo())}`;
