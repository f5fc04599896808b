//! Protocol-wide limits and close codes. Clients and operators rely on these numbers, so they are
//! documented in README.md too; change both together.

/// Version of the wire protocol spoken on `/api/rooms/{name}/ws` (the `pianorhythm.v1` package).
pub const PROTOCOL_VERSION: u32 = 2;

/// The WebSocket subprotocol a browser offers (next to its `bearer.<token>` entry).
pub const SUBPROTOCOL: &str = "pianorhythm.v1";

/// Largest WebSocket frame a room accepts. A full note batch (300 events) encodes to roughly
/// 3 KiB and a chat message to under 2 KiB; 32 KiB leaves room for growth while bounding what one
/// client can make the room decode.
pub const MAX_FRAME_BYTES: usize = 32 * 1024;

/// How long after the crown drops anyone (not just the previous owner) may claim it.
pub const CROWN_CLAIM_DELAY_MS: u64 = 15_000;

/// WebSocket close codes the server uses.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// RFC 6455 "going away": the socket sent nothing, not even a pong, for the idle timeout
    /// (a host's transport closes it).
    pub const GOING_AWAY: u16 = 1001;
    /// RFC 6455 "message too big": a frame over [`super::MAX_FRAME_BYTES`].
    pub const FRAME_TOO_LARGE: u16 = 1009;
    /// RFC 6455 "internal error": the server could not serve this connection.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// RFC 6455 "service restart": the server is draining or the room moved to another
    /// replica; reconnect (with the same token) and the room is there.
    pub const SERVICE_RESTART: u16 = 1012;
    /// RFC 6455 "try again later": the connection fell too far behind (a slow reader) or the
    /// server cannot reach what it needs (Redis); reconnect after a pause.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// RFC 6455 "policy violation": persistent abuse, the connection kept sending over its
    /// budgets (see `room::budget`) after being told with `RATE_LIMITED` notices.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// The token or session behind the socket ended (logout, revocation, session or token
    /// expiry). The client must get a new token before reconnecting.
    pub const SESSION_ENDED: u16 = 4001;
    /// The user's roles changed: reconnect with a fresh token to get the new powers.
    pub const IDENTITY_CHANGED: u16 = 4002;
    /// Removed from the room by its owner or a moderator (a `Kicked` message came first).
    pub const KICKED: u16 = 4003;
    /// The user (or the client's network) already holds the most sockets allowed in this room
    /// (an `Error TOO_MANY_CONNECTIONS` came first).
    pub const TOO_MANY_CONNECTIONS: u16 = 4004;
    /// A `Resume` on a newer connection took this one's place (docs/resume.md): the client
    /// already lives on elsewhere and must not reconnect this one.
    pub const RESUMED_ELSEWHERE: u16 = 4005;
}

/// How long a dropped connection keeps its place by default (docs/resume.md); hosts read
/// `RESUME_GRACE_MS` over it, 0 turns resuming off.
pub const RESUME_GRACE_MS: u64 = 15_000;
