//! The Room object's writes for the shared backends: players' activity totals (MongoDB
//! `user_stats`) and presence (Redis), both queued in the outbox.

use super::{Room, STATS_EVERY_MS, now};
use crate::storage;
use piano_backends::layout;
use piano_backends::outbox::Lane;
use std::collections::HashSet;
use worker::*;

impl Room {
    /// Adds the players' activity to their totals in this room (SQLite) and queues the new
    /// totals for MongoDB: every [`STATS_EVERY_MS`] while they play, at once when someone
    /// joins or leaves (`now`), and from the alarm after the room falls quiet.
    pub(crate) fn flush_stats(&self, now_please: bool) {
        if !self.outbox.wants(Lane::Mongo) {
            return;
        }
        let at = now();
        if !now_please && at.saturating_sub(self.stats_flushed_at.get()) < STATS_EVERY_MS {
            return;
        }
        let (room, stats) = match self.loaded.borrow_mut().as_mut() {
            Some(l) if l.room.has_stats() => (l.room.name().to_owned(), l.room.take_stats()),
            _ => return,
        };
        self.stats_flushed_at.set(at);
        let Some(deployment) = self.outbox.backends().map(|b| b.deployment.clone()) else {
            return;
        };
        let sql = self.state.storage().sql();
        let mut ops = Vec::new();
        for (user, delta) in &stats {
            match storage::add_stats(&sql, user, delta) {
                Ok(totals) => ops.push(layout::user_stats(&deployment, &room, user, &totals)),
                Err(e) => console_error!("stats write failed: {e}"),
            }
        }
        if let Err(e) = self.outbox.enqueue(&sql, ops, at) {
            console_error!("outbox write failed: {e}");
        }
    }

    /// Queues presence writes for who joined and who left since the last sync (only called
    /// when the participant count changed: nothing per note).
    pub(crate) fn sync_presence(&self) {
        let Some(backends) = self.outbox.backends() else {
            return;
        };
        let mut loaded = self.loaded.borrow_mut();
        let Some(l) = loaded.as_mut() else { return };
        let at = now();
        let room = l.room.name().to_owned();
        let mut current = HashSet::new();
        let mut ops = Vec::new();
        for p in l.room.participants() {
            current.insert(p.user_id.clone());
            if !l.present.contains(&p.user_id) {
                let entry = layout::PresenceEntry {
                    room: &room,
                    user_id: &p.user_id,
                    name: &p.name,
                    color: &p.color,
                };
                ops.push(layout::presence_joined(
                    &backends.keys,
                    &backends.deployment,
                    &entry,
                    at,
                ));
            }
        }
        let joined: Vec<String> = current.difference(&l.present).cloned().collect();
        let left: Vec<String> = l.present.difference(&current).cloned().collect();
        for gone in &left {
            ops.push(layout::presence_left(
                &backends.keys,
                &backends.deployment,
                &room,
                gone,
            ));
        }
        if ops.is_empty() {
            return;
        }
        l.present = current;
        let sql = self.state.storage().sql();
        if let Err(e) = storage::set_present(&sql, &joined, &left)
            .and_then(|()| self.outbox.enqueue(&sql, ops, at))
        {
            console_error!("presence write failed: {e}");
        }
    }
}
