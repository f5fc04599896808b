// The worker's entry module: everything worker-build generated (the edge worker and the Durable
// Object classes, compiled from Rust), with one transport-level filter in front of the Room.
//
// Why: a socket the room has closed (a flood's 1008, a slow reader's 1013, …) still has every
// frame its client sent before our close arrived queued in the runtime, and workerd dispatches
// each of them to the object (a flood: ~10,000 frames, all sent before the first was read).
// Dropping them here, before the call into wasm and the generated bindings, halves what they
// cost the room's other players (docs/architecture.md §3, README "Limits and abuse").
// No room rule lives here: the room decided to close; this only stops listening afterwards.
import { Room as CompiledRoom } from "../build/index.js";

export * from "../build/index.js";
export { default } from "../build/index.js";

const CLOSING = 2; // WebSocket.CLOSING: our close was sent

export class Room {
  constructor(state, env) {
    this.room = new CompiledRoom(state, env);
  }
  fetch(request) {
    return this.room.fetch(request);
  }
  alarm(info) {
    return this.room.alarm(info);
  }
  webSocketMessage(ws, message) {
    if (ws.readyState >= CLOSING) return;
    return this.room.webSocketMessage(ws, message);
  }
  webSocketClose(ws, code, reason, wasClean) {
    return this.room.webSocketClose(ws, code, reason, wasClean);
  }
  webSocketError(ws, error) {
    return this.room.webSocketError(ws, error);
  }
}
