//! The catalog: every counter family, its label and the closed list of its label values.
//! Label values are indexed by the protocol's own numbers where there are some (message field
//! numbers, `ErrorCode`, `JoinFailure`), so counting needs no lookup.

use super::Family;

/// Client message kinds, by `ClientMessage` field number (0: a frame refused before it
/// decoded: too large, over the frame budget, text, empty, malformed).
pub const IN_KINDS: &[&str] = &[
    "undecoded",
    "join",
    "notes",
    "ping",
    "update_profile",
    "chat",
    "typing",
    "delete_chat",
    "clear_chat",
    "update_settings",
    "transfer_ownership",
    "drop_ownership",
    "claim_ownership",
    "kick",
    "unban",
    "mute",
    "cursor",
    "subscribe_rooms",
    "unsubscribe_rooms",
    "resume",
];

/// Server message kinds, by `ServerMessage` field number (0: anything else).
pub const OUT_KINDS: &[&str] = &[
    "other",
    "welcome",
    "joined",
    "participant_joined",
    "participant_left",
    "notes",
    "pong",
    "error",
    "join_failed",
    "participant_updated",
    "chat",
    "typing",
    "chat_deleted",
    "chat_cleared",
    "settings_changed",
    "owner_changed",
    "quota",
    "notes_dropped",
    "kicked",
    "cursor",
    "room_list",
    "room_list_changed",
    "fell_behind",
    "resumed",
    "resume_failed",
];

/// Why note events were not relayed: the proto's `NotesDroppedReason` (1-3), and the
/// per-connection note-event budget (answered with a rate-limit error, not `NotesDropped`).
pub const DROP_REASONS: &[&str] = &["unspecified", "quota", "muted", "owner_only", "budget"];
pub const DROP_BUDGET: usize = 4;

/// The proto's `JoinFailure`, by value.
pub const JOIN_FAILURES: &[&str] = &[
    "unspecified",
    "room_full",
    "wrong_password",
    "guests_not_allowed",
    "banned",
    "not_allowed",
    "invalid_room_name",
    "rate_limited",
    "too_many_connections",
];

/// The proto's `ErrorCode`, by value (the typed errors a room sends).
pub const ERROR_CODES: &[&str] = &[
    "unspecified",
    "malformed_frame",
    "text_frame",
    "not_joined",
    "already_joined",
    "invalid_notes",
    "empty_message",
    "not_allowed",
    "invalid_value",
    "rate_limited",
    "not_found",
    "muted",
    "not_yet",
    "too_many_connections",
    "too_many_subscriptions",
];

/// Outcomes of the accounts endpoints ([`Auth`]).
pub const AUTH_OUTCOMES: &[&str] = &[
    "login_ok",
    "login_refused",
    "register_ok",
    "register_refused",
    "refresh_ok",
    "refresh_refused",
    "rate_limited",
];

/// An outcome of an accounts endpoint, counted by the host that answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    LoginOk,
    LoginRefused,
    RegisterOk,
    RegisterRefused,
    RefreshOk,
    RefreshRefused,
    RateLimited,
}

impl Auth {
    /// The outcome of an answer of `endpoint` (`login`, `register`, `refresh`; others are not
    /// counted): 2xx is ok, 429 is the auth rate limit, anything else refused.
    pub fn of(endpoint: &str, status: u16) -> Option<Auth> {
        let ok = (200..300).contains(&status);
        Some(match (endpoint, ok) {
            (_, false) if status == 429 => Auth::RateLimited,
            ("login", true) => Auth::LoginOk,
            ("login", false) => Auth::LoginRefused,
            ("register", true) => Auth::RegisterOk,
            ("register", false) => Auth::RegisterRefused,
            ("refresh", true) => Auth::RefreshOk,
            ("refresh", false) => Auth::RefreshRefused,
            _ => return None,
        })
    }
}

/// HTTP error statuses counted by the host's router (`other`: any other 4xx/5xx).
pub const HTTP_STATUSES: &[&str] = &[
    "400", "401", "403", "404", "405", "408", "409", "413", "415", "429", "500", "502", "503",
    "other",
];

/// The families, in rendering order; [`Fam`] indexes this list.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "piano_messages_in_total",
        help: "Frames received from players, by message kind.",
        label: Some(("kind", IN_KINDS)),
    },
    Family {
        name: "piano_messages_out_total",
        help: "Messages the rooms sent to players, by kind (one per receiving connection).",
        label: Some(("kind", OUT_KINDS)),
    },
    Family {
        name: "piano_notes_relayed_total",
        help: "Note events relayed to the other players of a room (counted once per batch sent).",
        label: None,
    },
    Family {
        name: "piano_notes_dropped_total",
        help: "Note events not relayed, by reason.",
        label: Some(("reason", DROP_REASONS)),
    },
    Family {
        name: "piano_join_failures_total",
        help: "Joins refused, by reason.",
        label: Some(("reason", JOIN_FAILURES)),
    },
    Family {
        name: "piano_errors_total",
        help: "Typed errors the rooms sent to players, by code.",
        label: Some(("code", ERROR_CODES)),
    },
    Family {
        name: "piano_auth_total",
        help: "Outcomes of login, registration and token refresh requests.",
        label: Some(("outcome", AUTH_OUTCOMES)),
    },
    Family {
        name: "piano_http_errors_total",
        help: "HTTP error responses, by status.",
        label: Some(("status", HTTP_STATUSES)),
    },
    Family {
        name: "piano_slow_consumer_closes_total",
        help: "Connections closed because they did not keep up with their room (slow readers).",
        label: None,
    },
    Family {
        name: "piano_frames_skipped_total",
        help: "Note batches and cursor moves not sent to connections that fell behind (they are told how many).",
        label: None,
    },
    Family {
        name: "piano_redis_errors_total",
        help: "Failed Redis commands and lost pub/sub connections (fallback).",
        label: None,
    },
    Family {
        name: "piano_leases_acquired_total",
        help: "Room leases this replica acquired (fallback with Redis).",
        label: None,
    },
    Family {
        name: "piano_leases_lost_total",
        help: "Room leases lost while running the room (fallback with Redis).",
        label: None,
    },
    Family {
        name: "piano_store_errors_total",
        help: "Failed writes or reads of room state (fallback).",
        label: None,
    },
    Family {
        name: "piano_mongo_errors_total",
        help: "Failed MongoDB writes (each retry counts).",
        label: None,
    },
    Family {
        name: "piano_mongo_writes_dropped_total",
        help: "MongoDB writes set aside (refused by MongoDB, or a queue was full).",
        label: None,
    },
    Family {
        name: "piano_http_header_timeouts_total",
        help: "HTTP connections closed because request headers did not arrive in time (fallback).",
        label: None,
    },
    Family {
        name: "piano_http_body_timeouts_total",
        help: "Requests answered 408 because the body did not arrive in time (fallback).",
        label: None,
    },
    Family {
        name: "piano_websocket_idle_closes_total",
        help: "WebSockets closed for sending nothing, not even a pong, for WS_IDLE_TIMEOUT_SECS (fallback).",
        label: None,
    },
    Family {
        name: "piano_session_closes_total",
        help: "Sockets closed because their session ended or their roles changed (4001/4002).",
        label: None,
    },
    Family {
        name: "piano_queue_full_total",
        help: "Messages dropped because a bounded internal queue was full.",
        label: None,
    },
    Family {
        name: "piano_analytics_events_delivered_total",
        help: "Analytics events the HTTP sink (ANALYTICS_URL) accepted (fallback).",
        label: None,
    },
    Family {
        name: "piano_analytics_events_dropped_total",
        help: "Analytics events dropped: a queue was full, or their batch failed (fallback).",
        label: None,
    },
    Family {
        name: "piano_analytics_batches_failed_total",
        help: "Analytics batches the sink refused or that could not be sent (fallback).",
        label: None,
    },
    Family {
        name: "piano_connections_refused_total",
        help: "Connections refused by a cap.",
        label: Some((
            "reason",
            &["max_connections", "max_connections_per_ip", "websockets"],
        )),
    },
];

/// A family of [`FAMILIES`], by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Fam {
    MessagesIn,
    MessagesOut,
    NotesRelayed,
    NotesDropped,
    JoinFailures,
    Errors,
    Auth,
    HttpErrors,
    SlowConsumerCloses,
    FramesSkipped,
    RedisErrors,
    LeasesAcquired,
    LeasesLost,
    StoreErrors,
    MongoErrors,
    MongoDropped,
    HeaderTimeouts,
    BodyTimeouts,
    IdleCloses,
    SessionCloses,
    QueueFull,
    AnalyticsDelivered,
    AnalyticsDropped,
    AnalyticsFailedBatches,
    Refused,
}
