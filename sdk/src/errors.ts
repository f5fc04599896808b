// Typed failures: every refusal the protocol can express (an Error's code, a JoinFailed's
// reason, a close code, an HTTP error body) becomes one PianoError with a string code, so a
// caller can `switch (err.code)` without knowing which layer said no.

import { ErrorCode, JoinFailure, type Error as ErrorMsg, type JoinFailed } from "./gen/pianorhythm/v1/room_pb.js";
import { Close } from "./connection.js";

/** Close codes by name (README "Close codes"); 1006 is a socket lost without a close frame. */
export const CLOSE_NAMES = {
  1000: "NORMAL_CLOSURE",
  1006: "CONNECTION_LOST",
  [Close.POLICY_VIOLATION]: "POLICY_VIOLATION",
  1009: "FRAME_TOO_LARGE",
  1011: "SERVER_ERROR",
  1012: "SERVICE_RESTART",
  1013: "TRY_AGAIN_LATER",
  [Close.SESSION_ENDED]: "SESSION_ENDED",
  [Close.IDENTITY_CHANGED]: "IDENTITY_CHANGED",
  [Close.KICKED]: "KICKED",
  [Close.TOO_MANY_CONNECTIONS]: "TOO_MANY_CONNECTIONS",
  [Close.RESUMED_ELSEWHERE]: "RESUMED_ELSEWHERE",
} as const;

type Named<E> = Exclude<keyof E, "UNSPECIFIED" | number>;
/** An `Error` message's code (`ErrorCode` without its prefix). */
export type ProtocolErrorCode = Named<typeof ErrorCode>;
/** A `JoinFailed` reason (`JoinFailure` without its prefix). */
export type JoinFailureCode = Named<typeof JoinFailure>;
export type CloseCodeName = (typeof CLOSE_NAMES)[keyof typeof CLOSE_NAMES];

export type PianoErrorCode =
  | ProtocolErrorCode
  | JoinFailureCode
  | CloseCodeName
  /** The socket closed with a code this SDK does not name (see `closeCode`). */
  | "CLOSED"
  /** No answer in time. */
  | "TIMEOUT"
  /** Not joined to a room (or the socket is down) when the call needed it. */
  | "NOT_CONNECTED"
  /** An HTTP error without a JSON error body; else the body's own code (e.g. `invalid_name`). */
  | "HTTP_ERROR"
  // The REST API's codes are lower-case strings (README "HTTP API").
  | (string & {});

/** Which layer refused. */
export type PianoErrorKind = "error" | "joinFailed" | "close" | "http" | "timeout" | "state";

export class PianoError extends Error {
  override readonly name = "PianoError";
  constructor(
    readonly code: PianoErrorCode,
    message: string,
    readonly kind: PianoErrorKind,
    /** For RATE_LIMITED and BANNED: how long until trying again makes sense. */
    readonly retryAfterMs = 0,
    /** For kind "close": the WebSocket close code. For kind "http": the HTTP status. */
    readonly status = 0,
  ) {
    super(message || code);
  }

  static fromError(e: ErrorMsg): PianoError {
    return new PianoError(ErrorCode[e.code] ?? "UNSPECIFIED", e.message, "error", Number(e.retryAfterMs));
  }

  static fromJoinFailed(f: JoinFailed): PianoError {
    return new PianoError(JoinFailure[f.reason] ?? "UNSPECIFIED", f.message, "joinFailed", Number(f.retryAfterMs));
  }

  static fromClose(code: number, reason = ""): PianoError {
    const name = (CLOSE_NAMES as Record<number, CloseCodeName>)[code] ?? "CLOSED";
    return new PianoError(name, reason || `connection closed (${code})`, "close", 0, code);
  }
}
