// @pianorhythm/sdk: a client for the multiplayer piano server (either host: the Cloudflare edge
// or the native fallback), in browsers and Node ≥ 20. `connect()` and `PianoClient` are the
// high-level API; `Connection`, `Clock` and `Scheduler` are the parts it is built of (the
// browser client in web/ uses them directly). The protocol's types are generated from proto/.

export { connect, PianoClient } from "./client.js";
export type { ClientOptions, Credentials, JoinOptions, PianoEvents, ProfilePatch, SettingsPatch } from "./client.js";
export { BATCH_MS, Close, Connection, roomSocketUrl } from "./connection.js";
export type { ClientMsg, ConnectOptions, ServerMsg, Status } from "./connection.js";
export { Clock } from "./clock.js";
export { DEFAULT_LATE_MS, DEFAULT_LATENCY_MS, MAX_AHEAD_MS, Scheduler } from "./scheduler.js";
export type { ScheduledBatch, ScheduledEvent } from "./scheduler.js";
export { CLOSE_NAMES, PianoError } from "./errors.js";
export type { CloseCodeName, JoinFailureCode, PianoErrorCode, PianoErrorKind, ProtocolErrorCode } from "./errors.js";
export { apiUrl, guestToken, HTTP_TIMEOUT_MS, listRooms } from "./http.js";
export type { Fetch, GuestToken, RoomInfo } from "./http.js";
export { MAX_KEPT } from "./unacked.js";
export type { WebSocketConstructor, WebSocketLike } from "./socket.js";
export { PROTOCOL_VERSION } from "./version.js";
// The protocol: messages, schemas (for create/toBinary) and enums.
export * from "./gen/pianorhythm/v1/room_pb.js";
