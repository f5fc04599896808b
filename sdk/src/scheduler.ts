// Received note batches → local playback times. A batch carries its start on the server clock
// and each event's delay; listeners play every batch the same fixed time after its sender
// played it, which keeps the performance's rhythm whatever the network's jitter.

import type { NoteBatch, NoteEvent } from "./gen/pianorhythm/v1/room_pb.js";
import type { Clock } from "./clock.js";
import { BATCH_MS } from "./connection.js";

/** Default buffer: a batch leaves its sender up to BATCH_MS after its first note, plus room for
 * network jitter. */
export const DEFAULT_LATENCY_MS = BATCH_MS + 100;
/** A note-on due longer ago than this is not played (a replay after a resume, or a live batch
 * held up by a stall, plays what is still to come, not the past in a rush). Releases always
 * apply. */
export const DEFAULT_LATE_MS = 500;
/** `play` never waits longer than this: a batch time far ahead (a hostile or broken server; past
 * 2^31 ms setTimeout would fire at once) plays then. */
export const MAX_AHEAD_MS = 60_000;

export interface ScheduledEvent {
  event: NoteEvent;
  /** When to play it, in local `Date.now()` milliseconds. */
  at: number;
  /** A note-on too late to play (see `lateMs`); releases and controls are never late. */
  late: boolean;
}

export interface ScheduledBatch {
  /** The sender's participant id. */
  from: string;
  receivedAt: number;
  events: ScheduledEvent[];
}

export class Scheduler {
  constructor(
    private clock: Clock,
    public latencyMs = DEFAULT_LATENCY_MS,
    public lateMs = DEFAULT_LATE_MS,
  ) {}

  /** Each event's local playback time: batch time on the server clock, minus our clock offset,
   * plus its delay and the fixed latency. */
  schedule(batch: NoteBatch, receivedAt = Date.now()): ScheduledBatch {
    const base = this.clock.toLocal(Number(batch.time)) + this.latencyMs;
    const events = batch.events.map((event) => {
      const at = base + event.delay;
      return { event, at, late: event.kind.case === "noteOn" && at < receivedAt - this.lateMs };
    });
    return { from: batch.senderId, receivedAt, events };
  }

  /** Calls `play` for each event that is not late, at its time (timers; for audio, schedule on
   * the audio clock from `at` instead). Returns a function that cancels what has not played. */
  play(batch: ScheduledBatch, play: (ev: ScheduledEvent) => void): () => void {
    const timers = batch.events
      .filter((e) => !e.late)
      .map((e) => setTimeout(() => play(e), Math.min(MAX_AHEAD_MS, Math.max(0, e.at - Date.now()))));
    return () => timers.forEach(clearTimeout);
  }
}
