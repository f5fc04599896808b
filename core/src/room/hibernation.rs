//! Hibernation and restarts: a room rebuilt from its durable state ([`super::stored`]), the
//! records its host kept per socket ([`super::ConnRecord`]) and what it kept for resuming
//! ([`super::Kept`]) looks the same to its players.

use super::budget::Limits;
use super::{ConnRecord, Kept, Out, Room, Stored};
use crate::Millis;

impl Room {
    /// Rebuilds a room from its durable state and the records its host kept; the room looks to
    /// its players exactly as before (same participants, order, ids, settings, crown, chat).
    /// If the owner is no longer connected (the host restarted), the crown drops now, and the
    /// returned effects persist that.
    pub fn restore(
        name: impl Into<String>,
        stored: Option<Stored>,
        records: impl IntoIterator<Item = ConnRecord>,
        now: Millis,
        seed: [u8; 32],
    ) -> (Room, Out) {
        Room::restore_with(name, stored, records, Kept::default(), now, seed)
    }

    /// [`Room::restore`] with the sessions and replay entries the host kept: connections whose
    /// sockets were lost with the room's memory come back suspended, so their players may
    /// still resume (docs/resume.md).
    pub fn restore_with(
        name: impl Into<String>,
        stored: Option<Stored>,
        records: impl IntoIterator<Item = ConnRecord>,
        kept: Kept,
        now: Millis,
        seed: [u8; 32],
    ) -> (Room, Out) {
        Room::restore_configured(name, stored, records, kept, Limits::default(), now, seed)
    }

    /// [`Room::restore_with`] under the host's limits from the start: the grace periods the
    /// restore starts for connections lost with the room's memory are the configured ones.
    pub fn restore_configured(
        name: impl Into<String>,
        stored: Option<Stored>,
        records: impl IntoIterator<Item = ConnRecord>,
        kept: Kept,
        limits: Limits,
        now: Millis,
        seed: [u8; 32],
    ) -> (Room, Out) {
        let mut room = Room::blank(name.into(), seed);
        room.limits = limits;
        if let Some(s) = stored {
            room.stored = s;
        }
        let mut records: Vec<ConnRecord> = records.into_iter().collect();
        let mut out = Vec::new();
        // Suspended connections take their places in the join order with the others.
        let lost = room.lost_sessions(&records, &kept, now, &mut out);
        let lost_ids: Vec<_> = lost.iter().map(|r| r.conn).collect();
        records.extend(lost);
        records.sort_by_key(|r| (r.joined.is_none(), r.joined, r.conn));
        for r in records {
            room.add_conn(r.conn, r.identity, r.profile, r.protocol, now);
            if let Some(c) = room.conns.get_mut(&r.conn) {
                c.subscribed = r.subscribed;
            }
            if let Some(seq) = r.joined {
                room.join_member(r.conn, seq, now);
                room.next_join_seq = room.next_join_seq.max(seq + 1);
            }
        }
        room.restore_kept(kept, &lost_ids, now, &mut out);
        if let Some(owner) = room.stored.crown.owner_user.clone()
            && room.member_index_by_user(&owner).is_none()
        {
            room.drop_crown(owner, now, &mut out);
        }
        // Waking up, the room corrects its directory entry (it may have emptied meanwhile).
        room.report_if_changed(now, &mut out);
        // Rebuilding is not activity: the joins above were counted when they happened.
        room.stats.by_user.clear();
        (room, out)
    }
}
