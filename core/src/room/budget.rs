//! Abuse limits in one place: what one connection may send, how many sockets a user or a
//! network may hold in a room, and how fast passwords may be guessed. Every number here is a
//! default a host may override ([`super::Room::set_limits`]); README's "Limits and abuse"
//! lists them with what a client sees.
//!
//! Budgets are token buckets, refilled lazily from the `now` the host passes in (no timers, so
//! a room can hibernate). Over budget, a message is dropped and the sender gets one
//! `RATE_LIMITED` notice per kind per [`NOTICE_INTERVAL_MS`] (a notice per dropped message
//! would let a flood amplify itself); [`ABUSE_DROPS`] drops within [`ABUSE_WINDOW_MS`] close
//! the connection with 1008. Honest clients never come near them: the web client sends a note
//! batch every 150 ms, a ping a second at most, a typing notice every 3 s.

use crate::Millis;

/// A budget: bursts of `burst` messages, refilled with one token every `every_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub every_ms: u32,
}

impl Rate {
    /// `per_second` sustained, bursts of `burst`.
    pub const fn per_second(per_second: u32, burst: u32) -> Rate {
        Rate {
            burst,
            every_ms: 1000 / per_second,
        }
    }

    /// One every `every_ms`, bursts of `burst`.
    pub const fn every(every_ms: u32, burst: u32) -> Rate {
        Rate { burst, every_ms }
    }

    /// How many per second it allows, sustained.
    pub const fn sustained_per_second(&self) -> u32 {
        1000 / if self.every_ms == 0 { 1 } else { self.every_ms }
    }
}

/// Frames of any kind, per connection, counted before decoding (the cheapest refusal):
/// 125/s, bursts of 250 (above the sum of the per-kind budgets a client uses at once).
pub const FRAMES: Rate = Rate::every(8, 250);
/// Note batches per connection: 50/s, bursts of 100 (the web client sends under 7/s; a MIDI
/// bridge that sends every event alone stays under it too).
pub const NOTE_BATCHES: Rate = Rate::per_second(50, 100);
/// Note events that are not note-ons (those pay the note quota) and not note-offs of sounding
/// notes (those are free): control changes (sustain pedal), pitch bend, program change, and
/// note-offs of notes that are not sounding. 500/s, bursts of 1000 (a pitch-bend sweep sends a
/// few hundred a second).
pub const NOTE_EVENTS: Rate = Rate::per_second(500, 1000);
/// Pings: 5/s, bursts of 20 (the web client pings once a second while syncing, then every 10 s).
pub const PING: Rate = Rate::per_second(5, 20);
/// Join attempts per connection: one every 2 s, bursts of 5.
pub const JOIN: Rate = Rate::every(2000, 5);
/// Typing indicators: 2/s, bursts of 10 (the web client sends one every 3 s while typing).
pub const TYPING: Rate = Rate::every(500, 10);
/// Profile updates: one every 2 s, bursts of 5.
pub const PROFILE: Rate = Rate::every(2000, 5);
/// Cursor positions: 40/s, bursts of 80 (20/s are relayed; positions in between are dropped
/// silently, as before: only sending faster than this counts as abuse).
pub const CURSOR: Rate = Rate::per_second(40, 80);
/// Settings changes: one a second, bursts of 10.
pub const SETTINGS: Rate = Rate::every(1000, 10);
/// Room-list subscribe and unsubscribe: one every 2 s, bursts of 5.
pub const SUBSCRIBE: Rate = Rate::every(2000, 5);
/// Moderation, crown and chat-deletion actions (kick, unban, mute, transfer, drop, claim,
/// delete, clear): 2/s, bursts of 10.
pub const MODERATION: Rate = Rate::every(500, 10);

// Chat keeps its own per-participant window (4 per 6 s, 10 per 2 s for the owner and staff:
// `super::CHAT_RATE`); over it, the message is dropped like any other over-budget one.

/// At most one `RATE_LIMITED` notice per message kind per this interval.
pub const NOTICE_INTERVAL_MS: u64 = 1000;
/// More than this many dropped over-budget messages within [`ABUSE_WINDOW_MS`] close the
/// connection with 1008 (policy violation).
pub const ABUSE_DROPS: u32 = 200;
pub const ABUSE_WINDOW_MS: u64 = 10_000;

/// Sockets one user may hold in one room (tabs, a MIDI bridge): 4.
pub const MAX_CONNS_PER_USER: usize = 4;
/// Sockets one network (client IP, as the host keys it) may hold in one room: 16. Staff are
/// not counted against it (load tests, moderators behind one address).
pub const MAX_CONNS_PER_NETWORK: usize = 16;

/// Password checks per room, whoever asks: 5/s, bursts of 10 (guests are free to make, so a
/// per-user delay alone does not bound guessing).
pub const PASSWORD_CHECKS: Rate = Rate::every(200, 10);
/// After a second wrong password in a row the user (and, for a guest, its whole network) waits
/// this long before the next guess (the first miss is free: typos happen), doubling with each wrong guess in a row up to
/// [`PASSWORD_DELAY_MAX_MS`]; a right password resets the user's delay, and a quiet
/// [`PASSWORD_DELAY_MAX_MS`] after the wait resets both.
pub const PASSWORD_DELAY_FIRST_MS: u64 = 1000;
pub const PASSWORD_DELAY_MAX_MS: u64 = 60_000;

/// What a budget is spent on. One bucket per kind per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Frames,
    NoteBatches,
    NoteEvents,
    Ping,
    Join,
    Typing,
    Profile,
    Cursor,
    Settings,
    Subscribe,
    Moderation,
    Chat,
}

impl Kind {
    const COUNT: usize = 12;

    fn index(self) -> usize {
        self as usize
    }

    /// How notices name it.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Frames => "messages",
            Kind::NoteBatches => "note batches",
            Kind::NoteEvents => "note events (control changes, pitch bends, note-offs)",
            Kind::Ping => "pings",
            Kind::Join => "join attempts",
            Kind::Typing => "typing notices",
            Kind::Profile => "profile updates",
            Kind::Cursor => "cursor moves",
            Kind::Settings => "settings changes",
            Kind::Subscribe => "room-list subscriptions",
            Kind::Moderation => "moderation actions",
            Kind::Chat => "chat messages",
        }
    }
}

/// Every abuse limit a room applies; [`Limits::default`] is the table above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub frames: Rate,
    pub note_batches: Rate,
    pub note_events: Rate,
    pub ping: Rate,
    pub join: Rate,
    pub typing: Rate,
    pub profile: Rate,
    pub cursor: Rate,
    pub settings: Rate,
    pub subscribe: Rate,
    pub moderation: Rate,
    pub notice_interval_ms: u64,
    pub abuse_drops: u32,
    pub abuse_window_ms: u64,
    pub conns_per_user: usize,
    pub conns_per_network: usize,
    pub password_checks: Rate,
    pub password_delay_first_ms: u64,
    pub password_delay_max_ms: u64,
    /// How long a dropped connection keeps its place (docs/resume.md); 0: resuming is off.
    pub resume_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            frames: FRAMES,
            note_batches: NOTE_BATCHES,
            note_events: NOTE_EVENTS,
            ping: PING,
            join: JOIN,
            typing: TYPING,
            profile: PROFILE,
            cursor: CURSOR,
            settings: SETTINGS,
            subscribe: SUBSCRIBE,
            moderation: MODERATION,
            notice_interval_ms: NOTICE_INTERVAL_MS,
            abuse_drops: ABUSE_DROPS,
            abuse_window_ms: ABUSE_WINDOW_MS,
            conns_per_user: MAX_CONNS_PER_USER,
            conns_per_network: MAX_CONNS_PER_NETWORK,
            password_checks: PASSWORD_CHECKS,
            password_delay_first_ms: PASSWORD_DELAY_FIRST_MS,
            password_delay_max_ms: PASSWORD_DELAY_MAX_MS,
            resume_grace_ms: crate::limits::RESUME_GRACE_MS,
        }
    }
}

impl Limits {
    /// The budget of a kind; `None` for chat, which keeps its own window.
    pub fn rate(&self, kind: Kind) -> Option<Rate> {
        Some(match kind {
            Kind::Frames => self.frames,
            Kind::NoteBatches => self.note_batches,
            Kind::NoteEvents => self.note_events,
            Kind::Ping => self.ping,
            Kind::Join => self.join,
            Kind::Typing => self.typing,
            Kind::Profile => self.profile,
            Kind::Cursor => self.cursor,
            Kind::Settings => self.settings,
            Kind::Subscribe => self.subscribe,
            Kind::Moderation => self.moderation,
            Kind::Chat => return None,
        })
    }

    /// The wait after `failures` wrong passwords in a row (at least one).
    pub fn password_delay(&self, failures: u32) -> u64 {
        // The first wrong guess is free: a typo followed at once by the right password must
        // not make a player wait. Guessing pays from the second miss on.
        if failures <= 1 {
            return 0;
        }
        let doublings = failures.saturating_sub(2).min(32);
        self.password_delay_first_ms
            .saturating_mul(1u64 << doublings)
            .min(self.password_delay_max_ms)
    }
}

/// A token bucket, full when new. 12 bytes.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: u32,
    /// When the next token started accruing (only meaningful while not full).
    at: Millis,
}

impl Bucket {
    pub fn full(rate: Rate, now: Millis) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Millis) {
        let every = u64::from(rate.every_ms.max(1));
        if self.tokens >= rate.burst {
            self.tokens = rate.burst;
            self.at = now;
            return;
        }
        // A clock that steps back gains nothing (and loses nothing).
        let gained = now.saturating_sub(self.at) / every;
        if gained == 0 {
            return;
        }
        let tokens = u64::from(self.tokens) + gained;
        if tokens >= u64::from(rate.burst) {
            self.tokens = rate.burst;
            self.at = now;
        } else {
            self.tokens = tokens as u32;
            self.at += gained * every;
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, rate: Rate, now: Millis) -> Result<(), u64> {
        self.refill(rate, now);
        if self.tokens > 0 {
            self.tokens -= 1;
            return Ok(());
        }
        let every = u64::from(rate.every_ms.max(1));
        Err((self.at + every).saturating_sub(now).max(1))
    }
}

/// What happens to an over-budget message beyond being dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Over {
    /// Send a notice (with this retry-after): the first drop of its kind in the interval.
    pub notice: Option<u64>,
    /// Persistent abuse: close the connection (1008).
    pub close: bool,
}

/// One connection's budgets, notice times and recent drops: 160 bytes, since every open
/// socket carries one. Times are kept as milliseconds after `base` in 32 bits.
#[derive(Debug, Clone)]
pub struct ConnBudget {
    base: Millis,
    /// Tokens left and when the next one started accruing, per kind.
    buckets: [(u32, u32); Kind::COUNT],
    /// When each kind was last noticed ([`NEVER`]: not yet).
    noticed: [u32; Kind::COUNT],
    drops: u32,
    drops_since: u32,
}

const NEVER: u32 = u32::MAX;
/// Past this age (about 24 days) the budgets start afresh, so the 32-bit times never wrap.
const REBASE_AFTER_MS: u64 = 1 << 31;

impl ConnBudget {
    pub fn new(limits: &Limits, now: Millis) -> ConnBudget {
        let mut buckets = [(0, 0); Kind::COUNT];
        for kind in ALL_KINDS {
            if let Some(rate) = limits.rate(kind) {
                buckets[kind.index()] = (rate.burst, 0);
            }
        }
        ConnBudget {
            base: now,
            buckets,
            noticed: [NEVER; Kind::COUNT],
            drops: 0,
            drops_since: 0,
        }
    }

    /// `now` as an offset from `base` (a clock stepping back counts as `base`).
    fn offset(&mut self, limits: &Limits, now: Millis) -> u32 {
        if now.saturating_sub(self.base) >= REBASE_AFTER_MS {
            *self = ConnBudget::new(limits, now);
        }
        now.saturating_sub(self.base) as u32
    }

    /// Charges one message of `kind`; `Err(retry_after_ms)` when over budget (the caller
    /// drops the message and reports it with [`ConnBudget::dropped`]).
    pub fn charge(&mut self, limits: &Limits, kind: Kind, now: Millis) -> Result<(), u64> {
        let Some(rate) = limits.rate(kind) else {
            return Ok(());
        };
        let offset = self.offset(limits, now); // may rebase: read `base` after it
        let now = self.base + u64::from(offset);
        let (tokens, at) = self.buckets[kind.index()];
        let mut bucket = Bucket {
            tokens,
            at: self.base + u64::from(at),
        };
        let taken = bucket.take(rate, now);
        self.buckets[kind.index()] = (bucket.tokens, (bucket.at - self.base) as u32);
        taken
    }

    /// Records a dropped message of `kind`: whether to tell the sender, whether to close.
    pub fn dropped(&mut self, limits: &Limits, kind: Kind, retry_after: u64, now: Millis) -> Over {
        let t = self.offset(limits, now);
        if u64::from(t.saturating_sub(self.drops_since)) >= limits.abuse_window_ms {
            self.drops = 0;
            self.drops_since = t;
        }
        self.drops = self.drops.saturating_add(1);
        let last = &mut self.noticed[kind.index()];
        let due = *last == NEVER || u64::from(t.saturating_sub(*last)) >= limits.notice_interval_ms;
        let notice = due.then(|| {
            *last = t;
            retry_after
        });
        Over {
            notice,
            close: self.drops > limits.abuse_drops,
        }
    }
}

const ALL_KINDS: [Kind; Kind::COUNT] = [
    Kind::Frames,
    Kind::NoteBatches,
    Kind::NoteEvents,
    Kind::Ping,
    Kind::Join,
    Kind::Typing,
    Kind::Profile,
    Kind::Cursor,
    Kind::Settings,
    Kind::Subscribe,
    Kind::Moderation,
    Kind::Chat,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bursts_refills_and_caps() {
        let rate = Rate::every(100, 3);
        let mut b = Bucket::full(rate, 0);
        for _ in 0..3 {
            assert_eq!(b.take(rate, 0), Ok(()));
        }
        assert_eq!(b.take(rate, 0), Err(100));
        assert_eq!(b.take(rate, 40), Err(60));
        assert_eq!(b.take(rate, 100), Ok(()));
        assert_eq!(
            b.take(rate, 150),
            Err(50),
            "the remainder of a period is kept"
        );
        assert_eq!(b.take(rate, 200), Ok(()));
        // A long pause refills to the burst, never beyond.
        for _ in 0..3 {
            assert_eq!(b.take(rate, 1_000_000), Ok(()));
        }
        assert!(b.take(rate, 1_000_000).is_err());
        // A clock stepping back neither refills nor panics.
        assert!(b.take(rate, 5).is_err());
    }

    #[test]
    fn one_notice_per_kind_per_interval_and_close_after_persistent_drops() {
        let limits = Limits::default();
        let mut b = ConnBudget::new(&limits, 0);
        let first = b.dropped(&limits, Kind::Typing, 7, 0);
        assert_eq!(
            first,
            Over {
                notice: Some(7),
                close: false
            }
        );
        assert_eq!(b.dropped(&limits, Kind::Typing, 7, 999).notice, None);
        assert_eq!(
            b.dropped(&limits, Kind::Cursor, 3, 999).notice,
            Some(3),
            "per kind"
        );
        assert_eq!(b.dropped(&limits, Kind::Typing, 7, 1000).notice, Some(7));
        // 4 drops so far; the window is 10 s.
        let mut closed_at = None;
        for i in 5..=ABUSE_DROPS + 1 {
            if b.dropped(&limits, Kind::Frames, 1, 2000).close {
                closed_at = Some(i);
                break;
            }
        }
        assert_eq!(closed_at, Some(ABUSE_DROPS + 1));
        // A new window forgives.
        let mut b = ConnBudget::new(&limits, 0);
        for t in 0..ABUSE_DROPS as u64 {
            assert!(!b.dropped(&limits, Kind::Frames, 1, t).close);
        }
        assert!(!b.dropped(&limits, Kind::Frames, 1, ABUSE_WINDOW_MS).close);
    }

    #[test]
    fn a_budget_older_than_its_clock_starts_afresh() {
        let limits = Limits::default();
        let mut b = ConnBudget::new(&limits, 0);
        for _ in 0..TYPING.burst {
            b.charge(&limits, Kind::Typing, 5).unwrap();
        }
        assert!(b.charge(&limits, Kind::Typing, 5).is_err());
        let late = REBASE_AFTER_MS + 5;
        for _ in 0..TYPING.burst {
            assert_eq!(b.charge(&limits, Kind::Typing, late), Ok(()));
        }
        assert_eq!(b.charge(&limits, Kind::Typing, late), Err(500));
        assert_eq!(
            b.dropped(&limits, Kind::Typing, 500, late).notice,
            Some(500)
        );
        // A clock stepping back before the base neither panics nor refills.
        assert!(b.charge(&limits, Kind::Typing, 0).is_err());
    }

    #[test]
    fn password_delay_doubles_to_the_cap() {
        let l = Limits::default();
        let delays: Vec<u64> = (1..=10).map(|n| l.password_delay(n)).collect();
        assert_eq!(
            delays,
            [
                0, 1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(l.password_delay(u32::MAX), 60_000);
    }

    #[test]
    fn a_connections_budgets_stay_small() {
        let size = std::mem::size_of::<ConnBudget>();
        eprintln!("ConnBudget: {size} bytes");
        assert!(size <= 160, "{size} bytes per connection");
    }

    #[test]
    fn every_kind_but_chat_has_a_budget() {
        let l = Limits::default();
        for kind in ALL_KINDS {
            assert_eq!(l.rate(kind).is_none(), kind == Kind::Chat, "{kind:?}");
            assert!(!kind.noun().is_empty());
        }
        assert_eq!(FRAMES.every_ms, 8);
        assert_eq!(NOTE_BATCHES.every_ms, 20);
        assert_eq!(NOTE_BATCHES.sustained_per_second(), 50);
    }
}
