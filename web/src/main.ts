// The browser client: sign-in, the live room list, rooms (join, create, password), the piano,
// playback of everyone's notes with their timing, participants, chat, owner controls, quota.

import { create } from "@bufbuild/protobuf";
// The protocol's types and the connection, clock and playback schedule are the SDK's (sdk/):
// one copy for the page and every other client; this file is the UI.
import {
  ErrorCode,
  JoinFailure,
  NotesDroppedReason,
  UpdateSettingsSchema,
  type ChatMessage,
  type Joined,
  type NoteBatch,
  type Ownership,
  type Participant,
  type Quota,
  type RoomSettings,
  type RoomSummary,
  type UpdateSettings,
  Connection,
  Scheduler,
  type ClientMsg,
  type ServerMsg,
  type Status,
} from "../../sdk/src/index.js";
import { openAccount, showProviders } from "./account";
import { freshToken, me, restore, session, signIn } from "./auth";
import { $, el } from "./dom";
import { Piano, noteName } from "./piano";
import { Synth } from "./synth";

/** How many entries each test-visible log keeps. */
const LOG_MAX = 500;

/** State the browser tests read (window.__piano); also handy in the console. */
const state = {
  room: "",
  you: undefined as Participant | undefined,
  participants: new Map<string, Participant>(),
  ownership: undefined as Ownership | undefined,
  settings: undefined as RoomSettings | undefined,
  rooms: new Map<string, RoomSummary>(),
  chat: [] as ChatMessage[],
  quota: undefined as Quota | undefined,
  /** Every remote note-on scheduled for playback: who, which note, when it arrived and when it
   * plays (local ms). */
  scheduled: [] as { from: string; note: number; receivedAt: number; at: number }[],
  /** Remote note-ons received too late to play (the Scheduler's `late`): a replay's past, dropped. */
  missed: [] as { from: string; note: number; receivedAt: number; at: number }[],
  /** How many times the page took a Joined (a first join, or a join after a failed resume). */
  joins: 0,
  /** Each resume: complete (replayed) or a snapshot. */
  resumes: [] as { complete: boolean; replayed: number }[],
  /** Arrivals ("+id") and departures ("-id") in the order the page saw them. */
  presence: [] as string[],
  /** Bumped when the connection fell behind: key lights scheduled before it are dropped. */
  behind: 0,
  status: "signed out",
  /** Who is signed in (nothing secret: the tests check no session secret is reachable here). */
  me,
};
(window as unknown as { __piano: typeof state }).__piano = state;

let synth: Synth | undefined;
/** The synth, created on first use; a browser without WebAudio still shows and sends notes. */
const audio = (): Pick<Synth, "noteOn" | "noteOff" | "sustain" | "releaseOthers" | "at" | "resume"> => {
  try {
    return (synth ??= new Synth());
  } catch {
    return { noteOn() {}, noteOff() {}, sustain() {}, releaseOthers() {}, at: () => 0, resume() {} };
  }
};
document.addEventListener("pointerdown", () => audio().resume(), { capture: true });
document.addEventListener("keydown", () => audio().resume(), { capture: true });

const conn = new Connection(onMessage, onStatus);
/** Remote notes play a fixed time after their sender played them (the SDK's default buffer,
 * which keeps the performance's timing); note-ons due too long ago are skipped. */
const scheduler = new Scheduler(conn.clock);
// Test hooks: drop the socket as the network would (held down `holdMs`), end the hold.
Object.assign(window, {
  __pianoDrop: (holdMs?: number, unknownToken?: boolean) => conn.simulateDrop(holdMs, unknownToken),
  __pianoReconnect: () => conn.reconnectNow(),
});
const piano = new Piano($("#piano"), {
  press(note, velocity) {
    if (!state.you) return;
    audio().noteOn("me", note, velocity);
    piano.light(note, "me", state.you.color);
    conn.note({ case: "noteOn", value: { note, velocity, channel: 0 } });
  },
  release(note) {
    if (!state.you) return;
    audio().noteOff("me", note);
    piano.unlight(note, "me");
    conn.note({ case: "noteOff", value: { note, channel: 0 } });
  },
  sustain(down) {
    if (!state.you) return;
    audio().sustain("me", down);
    $("#pedal").classList.toggle("on", down);
    conn.note({ case: "controlChange", value: { control: 64, value: down ? 127 : 0, channel: 0 } });
  },
});

// -- session ------------------------------------------------------------------------------------

async function nextLobby(): Promise<string> {
  const token = await freshToken();
  const resp = await fetch("/api/lobby/next", { method: "POST", headers: { authorization: `Bearer ${token}` } });
  const body = await resp.json();
  return resp.ok ? body.room : "lobby";
}

function enter(room: string, join: ClientMsg = { case: "join", value: { password: "" } }): void {
  const s = session();
  if (!s) return showSignIn();
  state.room = room;
  state.participants.clear();
  state.you = undefined;
  $("#room-name").textContent = room;
  history.replaceState(null, "", `#${encodeURIComponent(room)}`);
  conn.connect({ url: location.origin, room, token: freshToken, join });
}

// -- messages -----------------------------------------------------------------------------------

function onMessage(msg: ServerMsg): void {
  switch (msg.case) {
    case "joined":
      state.joins++;
      return showRoom(msg.value);
    case "resumed": {
      // Back in the same place: nothing to clear or redraw unless the room could not replay
      // what we missed, in which case its snapshot replaces our view.
      const r = msg.value;
      log(state.resumes, { complete: r.complete, replayed: r.replayed });
      if (r.you) state.you = r.you;
      if (!r.complete && r.snapshot) {
        // Others' note-offs may be among what was lost: nothing of theirs is left sounding.
        state.behind++;
        audio().releaseOthers("me");
        piano.unlightOthers("me");
        showRoom(r.snapshot);
        toast("Reconnected: some of what happened meanwhile could not be replayed");
      } else {
        // The room list subscription ended with the old socket.
        conn.send({ case: "subscribeRooms", value: {} });
        renderParticipants();
      }
      break;
    }
    case "joinFailed":
      return joinFailed(msg.value.reason, msg.value.message, Number(msg.value.retryAfterMs));
    case "participantJoined":
    case "participantUpdated":
      if (msg.case === "participantJoined" && msg.value.participant) log(state.presence, `+${msg.value.participant.id}`);
      if (msg.value.participant) state.participants.set(msg.value.participant.id, msg.value.participant);
      if (msg.value.participant?.id === state.you?.id) state.you = msg.value.participant;
      renderParticipants();
      break;
    case "participantLeft":
      log(state.presence, `-${msg.value.participantId}`);
      state.participants.delete(msg.value.participantId);
      renderParticipants();
      break;
    case "notes":
      return play(msg.value);
    case "chat":
      state.chat.push(msg.value);
      state.chat = state.chat.slice(-100);
      renderChat();
      break;
    case "chatDeleted":
      state.chat = state.chat.filter((c) => c.id !== msg.value.id);
      renderChat();
      break;
    case "chatCleared":
      state.chat = [];
      renderChat();
      break;
    case "typing":
      return typing(msg.value.participantId, msg.value.typing);
    case "settingsChanged":
      state.settings = msg.value.settings;
      renderRoomInfo();
      break;
    case "ownerChanged":
      state.ownership = msg.value.ownership;
      renderParticipants();
      renderRoomInfo();
      break;
    case "quota":
      state.quota = msg.value;
      renderQuota();
      break;
    case "notesDropped": {
      const why = { [NotesDroppedReason.QUOTA]: "note quota used up", [NotesDroppedReason.MUTED]: "you are muted", [NotesDroppedReason.OWNER_ONLY]: "only the owner may play here" } as Record<number, string>;
      toast(`${msg.value.dropped} notes not played: ${why[msg.value.reason] ?? "refused"}`);
      break;
    }
    case "fellBehind":
      // The connection fell behind and note batches were skipped; their note-offs may have
      // been among them, so nothing of the others' is left sounding.
      // The player's own notes are "me" and keep sounding.
      state.behind++;
      audio().releaseOthers("me");
      piano.unlightOthers("me");
      toast(`Your connection fell behind: ${msg.value.skipped} note batches were skipped`);
      break;
    case "kicked":
      toast(msg.value.bannedUntil ? `You were kicked and banned for ${Math.ceil((Number(msg.value.bannedUntil) - conn.clock.serverNow()) / 60000)} min` : "You were kicked");
      break;
    case "roomList":
      state.rooms = new Map(msg.value.rooms.map((r) => [r.name, r]));
      renderRooms();
      break;
    case "roomListChanged":
      for (const r of msg.value.upserted) state.rooms.set(r.name, r);
      for (const name of msg.value.removed) state.rooms.delete(name);
      renderRooms();
      break;
    case "error":
      // A rate-limit notice is brief: the server sends one per kind per second at most.
      if (msg.value.code === ErrorCode.RATE_LIMITED) toast(`Slow down: ${msg.value.message}`, 2000);
      else if (msg.value.code !== ErrorCode.NOT_JOINED) toast(msg.value.message);
      break;
    default:
      break;
  }
}

/** Replaces the page's view of the room with a Joined (a join, or a resume's snapshot). */
function showRoom(j: Joined): void {
  state.you = j.you;
  state.participants = new Map(j.participants.map((p) => [p.id, p]));
  state.settings = j.settings;
  state.ownership = j.ownership;
  state.quota = j.quota;
  state.chat = [...j.chatHistory];
  conn.send({ case: "subscribeRooms", value: {} });
  renderAll();
}

function log<T>(list: T[], entry: T): void {
  list.push(entry);
  if (list.length > LOG_MAX) list.shift();
}

function onStatus(status: Status, detail?: string): void {
  state.status = status;
  // Reconnecting keeps the room on screen as it was: only this small sign says the socket is
  // down (the room keeps our place meanwhile).
  $("#status").textContent = status === "open" ? "connected" : status === "reconnecting" ? "reconnecting…" : status;
  $("#status").className = `status ${status}`;
  if (status === "kicked") {
    toast(detail ? `Removed from the room: ${detail}` : "Removed from the room");
    state.you = undefined;
    void nextLobby().then((room) => enter(room));
  } else if (status === "refused") {
    // The connection reconnects by itself, much later (net.ts).
    toast(`${detail ?? "Refused"}; trying again later`);
    state.you = undefined;
  } else if (status === "closed" && detail === "signed out") {
    state.you = undefined;
    showSignIn();
  }
}

/** Sends a Join after `wait` ms (the server said when), unless the room changed meanwhile. */
function joinLater(join: ClientMsg, wait: number): void {
  const room = state.room;
  window.setTimeout(() => state.room === room && !state.you && conn.send(join), wait);
}

function joinFailed(reason: JoinFailure, message: string, retryAfterMs: number): void {
  if (reason === JoinFailure.WRONG_PASSWORD) {
    const pw = window.prompt(`${message}. Password for ${state.room}:`);
    // After a wrong guess the server makes the next one wait: send it when it may be checked.
    if (pw !== null) joinLater({ case: "join", value: { password: pw } }, retryAfterMs);
    return;
  }
  if (reason === JoinFailure.RATE_LIMITED) {
    // Too many attempts: try once more when the server says (0: an earlier join is still
    // being checked, and its answer will come).
    toast(message, 2000);
    if (retryAfterMs > 0) joinLater({ case: "join", value: { password: "" } }, retryAfterMs);
    return;
  }
  toast(`Cannot join ${state.room}: ${message}`);
  // Back to a lobby, unless a lobby itself refused (a ban there): then stay put, no retry loop.
  if (session() && !state.room.startsWith("lobby")) {
    void nextLobby().then((room) => enter(room));
  } else {
    conn.close();
  }
}

/** Schedules a remote batch with its sender's timing (the SDK's Scheduler: server time + delay
 * + our clock offset + the buffer). */
function play(batch: NoteBatch): void {
  const from = batch.senderId;
  const color = state.participants.get(from)?.color ?? "#888";
  const { receivedAt, events } = scheduler.schedule(batch);
  const behind = state.behind;
  for (const { event, at: local, late } of events) {
    const when = audio().at(local);
    const wait = Math.max(0, local - Date.now());
    const k = event.kind;
    if (k.case === "noteOn") {
      const note = k.value.note;
      if (late) {
        log(state.missed, { from, note, receivedAt, at: local });
        continue;
      }
      log(state.scheduled, { from, note, receivedAt, at: local });
      audio().noteOn(from, note, k.value.velocity, when);
      window.setTimeout(() => behind === state.behind && piano.light(note, from, color), wait);
    } else if (k.case === "noteOff") {
      const note = k.value.note;
      audio().noteOff(from, note, when);
      window.setTimeout(() => behind === state.behind && piano.unlight(note, from), wait);
    } else if (k.case === "controlChange" && k.value.control === 64) {
      audio().sustain(from, k.value.value >= 64, when);
    }
  }
}

// -- rendering ----------------------------------------------------------------------------------

const isOwner = () => !!state.you && state.ownership?.ownerId === state.you.id;
const isStaff = () => !!state.you?.roles.some((r) => r === "moderator" || r === "admin");

function renderAll(): void {
  renderParticipants();
  renderChat();
  renderRoomInfo();
  renderQuota();
  renderRooms();
}

function renderParticipants(): void {
  const list = $("#participants");
  list.textContent = "";
  const mayModerate = isOwner() || isStaff();
  for (const p of state.participants.values()) {
    const crown = state.ownership?.ownerId === p.id ? "♛ " : "";
    const row = el("li", { className: "participant" }, el("span", { className: "swatch" }), `${crown}${p.name}`);
    (row.firstChild as HTMLElement).style.background = p.color;
    if (p.status) row.append(el("small", {}, ` ${p.status}`));
    if (p.mutedChat || p.mutedNotes) row.append(el("small", {}, " (muted)"));
    if (mayModerate && p.id !== state.you?.id) {
      const act = (label: string, msg: () => ClientMsg | undefined) =>
        el("button", { type: "button", textContent: label, onclick: () => { const m = msg(); if (m) conn.send(m); } });
      row.append(
        act("Give crown", () => ({ case: "transferOwnership", value: { participantId: p.id } })),
        act(p.mutedChat ? "Unmute" : "Mute", () => ({ case: "mute", value: { participantId: p.id, notes: !p.mutedChat, chat: !p.mutedChat } })),
        act("Kick", () => {
          const mins = window.prompt(`Kick ${p.name}. Ban for how many minutes (0-60)?`, "0");
          if (mins === null) return undefined;
          const banMs = BigInt(Math.max(0, Math.min(60, Number(mins) || 0)) * 60_000);
          return { case: "kick", value: { participantId: p.id, banMs } };
        }),
      );
    }
    list.append(row);
  }
  $("#player-count").textContent = String(state.participants.size);
  const dropped = !state.ownership?.ownerId && state.settings?.kind === "normal";
  $("#claim").hidden = !dropped;
  $("#drop").hidden = !isOwner();
  $("#settings-open").hidden = !(isOwner() || isStaff());
}

function renderChat(): void {
  const box = $("#chat-log");
  box.textContent = "";
  for (const c of state.chat) {
    const who = el("b", { textContent: c.participantId ? c.name : `${c.name} ·` });
    who.style.color = c.color;
    const line = el("div", { className: "chat-line" }, who, " ", c.text);
    if (c.participantId && c.participantId === state.you?.id) {
      line.append(el("button", { type: "button", className: "link", textContent: "delete", onclick: () => conn.send({ case: "deleteChat", value: { id: c.id } }) }));
    }
    box.append(line);
  }
  box.scrollTop = box.scrollHeight;
}

const typers = new Map<string, number>();
function typing(id: string, on: boolean): void {
  window.clearTimeout(typers.get(id));
  typers.delete(id);
  if (on) typers.set(id, window.setTimeout(() => typing(id, false), 5000));
  const names = [...typers.keys()].map((t) => state.participants.get(t)?.name).filter(Boolean);
  $("#typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

function renderRoomInfo(): void {
  const s = state.settings;
  const owner = state.ownership?.ownerName;
  $("#room-meta").textContent = s ? `${s.kind}${s.hasPassword ? " · 🔒" : ""}${s.visible ? "" : " · private"} · max ${s.maxPlayers}${owner ? ` · owner ${owner}` : ""}` : "";
}

function renderQuota(): void {
  const q = state.quota;
  const meter = $<HTMLMeterElement>("#quota");
  if (!q || q.unlimited) {
    meter.hidden = true;
    $("#quota-label").textContent = q?.unlimited ? "Black MIDI: no note limit" : "";
    return;
  }
  meter.hidden = false;
  meter.max = q.max;
  meter.value = q.points;
  $("#quota-label").textContent = `note quota ${q.allowance} per ${q.intervalMs / 1000} s, up to ${q.max}`;
}

function renderRooms(): void {
  const list = $("#rooms");
  list.textContent = "";
  const rooms = [...state.rooms.values()].sort((a, b) => b.players - a.players || a.name.localeCompare(b.name));
  for (const r of rooms) {
    const button = el("button", { type: "button", className: r.name === state.room ? "room current" : "room", onclick: () => enter(r.name) });
    button.append(el("span", { className: "room-name", textContent: `${r.locked ? "🔒 " : ""}${r.name}` }), el("span", { className: "room-count", textContent: `${r.players}/${r.capacity}` }));
    list.append(el("li", {}, button));
  }
}

let toastTimer: number | undefined;
function toast(text: string, ms = 4000): void {
  const t = $("#toast");
  t.textContent = text;
  t.hidden = false;
  window.clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => (t.hidden = true), ms);
}

// -- forms --------------------------------------------------------------------------------------

function showSignIn(): void {
  const dialog = $<HTMLDialogElement>("#signin");
  if (!dialog.open) dialog.showModal();
  void showProviders();
}

/** Shows who is signed in and takes them to the room in the address, or a lobby. */
async function signedIn(name: string): Promise<void> {
  $("#me").textContent = name;
  $("#account-open").hidden = false;
  const wanted = decodeURIComponent(location.hash.slice(1));
  enter(wanted || (await nextLobby()));
}

function signedOut(): void {
  conn.close();
  state.you = undefined;
  state.participants.clear();
  renderAll();
  $("#me").textContent = "";
  $("#account-open").hidden = true;
  onStatus("closed");
  showSignIn();
}

$("#account-open").addEventListener("click", () => void openAccount(signedOut));

$("#signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $<HTMLInputElement>("#nickname").value;
  const password = $<HTMLInputElement>("#password").value;
  const mode = (document.querySelector('input[name="mode"]:checked') as HTMLInputElement | null)?.value ?? "guest";
  try {
    const s = await signIn(mode, name, password);
    $<HTMLDialogElement>("#signin").close();
    await signedIn(s.name);
  } catch (err) {
    $("#signin-error").textContent = (err as Error).message;
  }
});

$("#chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>("#chat-input");
  if (!input.value.trim()) return;
  conn.sendKept({ case: "chat", value: { text: input.value } });
  conn.send({ case: "typing", value: { typing: false } });
  input.value = "";
});

let typingSent = 0;
$("#chat-input").addEventListener("input", () => {
  if (Date.now() - typingSent > 3000) {
    typingSent = Date.now();
    conn.send({ case: "typing", value: { typing: true } });
  }
});

$("#create-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const f = e.target as HTMLFormElement;
  const data = new FormData(f);
  const name = String(data.get("name") ?? "").trim();
  if (!name) return;
  const settings = create(UpdateSettingsSchema, {
    visible: data.get("visible") === "on",
    maxPlayers: Number(data.get("max")) || 20,
    ...(data.get("password") ? { password: String(data.get("password")) } : {}),
  });
  enter(name, { case: "join", value: { password: String(data.get("password") ?? ""), createSettings: settings } });
  f.reset();
});

$("#settings-open").addEventListener("click", () => {
  const s = state.settings;
  if (!s) return;
  const f = $<HTMLFormElement>("#settings-form");
  (f.elements.namedItem("visible") as HTMLInputElement).checked = s.visible;
  (f.elements.namedItem("max") as HTMLInputElement).value = String(s.maxPlayers);
  (f.elements.namedItem("ownerOnlyChat") as HTMLInputElement).checked = s.ownerOnlyChat;
  (f.elements.namedItem("ownerOnlyPlay") as HTMLInputElement).checked = s.ownerOnlyPlay;
  (f.elements.namedItem("allowGuests") as HTMLInputElement).checked = s.allowGuests;
  (f.elements.namedItem("allowBlackMidi") as HTMLInputElement).checked = s.allowBlackMidi;
  (f.elements.namedItem("welcome") as HTMLInputElement).value = s.welcomeMessage;
  $<HTMLDialogElement>("#settings").showModal();
});

$("#settings-form").addEventListener("submit", (e) => {
  const f = e.target as HTMLFormElement;
  if ((e as SubmitEvent).submitter?.getAttribute("value") !== "save") return;
  const d = new FormData(f);
  const patch: Partial<UpdateSettings> = {
    visible: d.get("visible") === "on",
    maxPlayers: Number(d.get("max")),
    ownerOnlyChat: d.get("ownerOnlyChat") === "on",
    ownerOnlyPlay: d.get("ownerOnlyPlay") === "on",
    allowGuests: d.get("allowGuests") === "on",
    allowBlackMidi: d.get("allowBlackMidi") === "on",
    welcomeMessage: String(d.get("welcome") ?? ""),
  };
  const pw = String(d.get("password") ?? "");
  if (pw || d.get("clearPassword") === "on") patch.password = pw;
  conn.send({ case: "updateSettings", value: create(UpdateSettingsSchema, patch) });
});

$("#claim").addEventListener("click", () => conn.send({ case: "claimOwnership", value: {} }));
$("#drop").addEventListener("click", () => conn.send({ case: "dropOwnership", value: {} }));

// -- start --------------------------------------------------------------------------------------

// A member's session comes back from its cookies (a sign-in through a provider arrives so),
// a guest's from localStorage.
void restore().then((s) => (s ? signedIn(s.name) : showSignIn()));
for (const radio of document.querySelectorAll<HTMLInputElement>('input[name="mode"]')) {
  radio.addEventListener("change", () => {
    const guest = radio.value === "guest" && radio.checked;
    $("#password-row").hidden = guest;
    $("#name-label").textContent = guest ? "Your name" : "Username";
  });
}
// Start the keyboard around middle C on narrow screens.
const pianoBox = $("#piano");
const middleC = pianoBox.querySelector<HTMLElement>('[data-note="60"]');
if (middleC) pianoBox.scrollLeft = middleC.offsetLeft - pianoBox.clientWidth / 2;
$("#legend").textContent = `Keys: z-row from ${noteName(48)}, q-row from ${noteName(60)}; ←/→ octave; space = sustain pedal; MIDI keyboards work too.`;
