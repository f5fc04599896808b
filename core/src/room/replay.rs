//! The room's replay buffer (docs/resume.md §2-3): the newest broadcasts every joined connection
//! was sent, numbered by `ServerMessage.seq`, so a connection that resumes gets, in order, what
//! it missed, or is told it cannot.
//!
//! A broadcast is encoded once with its number and the same `Bytes` go to the listeners and
//! into the buffer: replaying costs no encoding. Entries also remember who sent the message
//! that caused them and its `ClientMessage.seq`, so a room rebuilt from kept entries still knows
//! what it processed from each connection (no duplicates after a failover).

use super::ConnId;
use crate::Millis;
use bytes::Bytes;
use std::collections::VecDeque;

/// Entries the buffer holds at most: a full room's notes for several seconds.
pub const REPLAY_MAX_ENTRIES: usize = 2048;
/// Bytes the buffer holds at most (frames only).
pub const REPLAY_MAX_BYTES: usize = 512 * 1024;
/// On the first suspension, how many of the newest entries in memory a
/// [`ReplayDurability::WhileSuspended`] host is asked to keep (what was in flight on the dying
/// socket when the drop was noticed).
pub const REPLAY_KEEP_ON_SUSPEND: usize = 256;

/// Which of its entries the room asks the host to keep ([`super::Effect::Keep`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplayDurability {
    /// None: a room that loses its memory answers resumes from before with a snapshot.
    #[default]
    Memory,
    /// While some connection is suspended (the edge: a Room object may hibernate or restart
    /// during a grace period; at other times the cost of a write per broadcast buys nothing).
    WhileSuspended,
    /// Every entry (a host whose room can move to another process at any moment).
    Always,
}

/// One replayable broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayEntry {
    pub seq: u64,
    /// The encoded `ServerMessage` (with `seq`), as sent.
    pub frame: Bytes,
    /// The connection not sent it (the sender of a relayed batch); every other joined one was.
    /// Connections are named by their chain of resumes (`resume::Session::chain`).
    pub except: Option<ConnId>,
    /// The connection (chain) whose numbered message caused it, and that number.
    pub origin: Option<(ConnId, u64)>,
}

const NONE: u64 = u64::MAX;

impl ReplayEntry {
    /// A compact form for a host's storage: 32 bytes of header, then the frame.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32 + self.frame.len());
        let (oc, os) = self.origin.unwrap_or((NONE, 0));
        for n in [self.seq, self.except.unwrap_or(NONE), oc, os] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v.extend_from_slice(&self.frame);
        v
    }

    /// The inverse of [`ReplayEntry::to_bytes`]; `None` for anything else.
    pub fn from_bytes(b: &[u8]) -> Option<ReplayEntry> {
        let n = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let (seq, except, oc, os) = (n(0)?, n(1)?, n(2)?, n(3)?);
        Some(ReplayEntry {
            seq,
            frame: Bytes::copy_from_slice(b.get(32..)?),
            except: (except != NONE).then_some(except),
            origin: (oc != NONE).then_some((oc, os)),
        })
    }

    /// Whether the connection of chain `chain` was meant to get this entry.
    pub fn reached(&self, chain: ConnId) -> bool {
        self.except != Some(chain)
    }
}

/// The bounded buffer: oldest first.
#[derive(Debug, Default)]
pub(super) struct Replay {
    pub entries: VecDeque<ReplayEntry>,
    bytes: usize,
    /// The buffer holds every replayable broadcast numbered above this (entries evicted, or
    /// lost with the room's memory, lie at or below it).
    pub complete_after: u64,
}

impl Replay {
    /// Appends; returns the lowest seq still held when entries had to go (the host trims).
    pub fn push(&mut self, entry: ReplayEntry) -> Option<u64> {
        self.bytes += entry.frame.len();
        self.entries.push_back(entry);
        let mut evicted = false;
        while self.entries.len() > REPLAY_MAX_ENTRIES || self.bytes > REPLAY_MAX_BYTES {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.frame.len();
            self.complete_after = self.complete_after.max(old.seq);
            evicted = true;
        }
        evicted.then(|| self.complete_after + 1)
    }

    /// The entries after `last_seq` meant for the connection of chain `chain`, or `None` when
    /// some may be missing.
    pub fn after(&self, last_seq: u64, chain: ConnId) -> Option<Vec<&ReplayEntry>> {
        if last_seq < self.complete_after {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(|e| e.seq > last_seq && e.reached(chain))
                .collect(),
        )
    }

    /// The highest client seq an entry records for the chain `chain`.
    pub fn origin_seq(&self, chain: ConnId) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| e.origin.filter(|(c, _)| *c == chain).map(|(_, s)| s))
            .max()
            .unwrap_or(0)
    }

    /// The newest `n` entries.
    pub fn newest(&self, n: usize) -> impl Iterator<Item = &ReplayEntry> {
        self.entries
            .iter()
            .skip(self.entries.len().saturating_sub(n))
    }
}

/// The first sequence number of a room loaded at `now`: above anything numbered before by a
/// room whose clock was not ahead (numbers are `now × 1000` plus one per broadcast, and no room
/// broadcasts a thousand messages a millisecond for long), below 2^53 for JavaScript clients.
pub(super) fn first_seq(now: Millis) -> u64 {
    now.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, len: usize) -> ReplayEntry {
        ReplayEntry {
            seq,
            frame: Bytes::from(vec![7u8; len]),
            except: Some(3),
            origin: Some((3, seq)),
        }
    }

    #[test]
    fn bytes_round_trip() {
        for e in [
            entry(5, 10),
            ReplayEntry {
                seq: 1,
                frame: Bytes::new(),
                except: None,
                origin: None,
            },
        ] {
            assert_eq!(ReplayEntry::from_bytes(&e.to_bytes()), Some(e));
        }
        assert_eq!(ReplayEntry::from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn eviction_moves_the_complete_point() {
        let mut r = Replay::default();
        for s in 1..=(REPLAY_MAX_ENTRIES as u64 + 2) {
            r.push(entry(s, 1));
        }
        assert_eq!(r.complete_after, 2);
        assert!(r.after(1, 9).is_none());
        assert_eq!(r.after(2, 9).map(|v| v.len()), Some(REPLAY_MAX_ENTRIES));
        // The sender is not sent its own batch.
        assert_eq!(r.after(2, 3).map(|v| v.len()), Some(0));
        let mut big = Replay::default();
        big.push(entry(1, REPLAY_MAX_BYTES));
        assert_eq!(big.push(entry(2, 1)), Some(2));
        assert_eq!(big.entries.len(), 1);
    }
}
