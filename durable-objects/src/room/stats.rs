//! What the Room object does with players' activity and presence as the core hands them over:
//! activity ([`Effect::Stats`]) becomes analytics events (`crate::analytics`), members' totals
//! in their Account objects (`crate::account_stats`) and, with MongoDB, per-room totals in
//! `user_stats` through the outbox; presence ([`Effect::Presence`]) goes to Redis through the
//! outbox. When they come is the core's decision.
//!
//! [`Effect::Stats`]: piano_core::room::Effect::Stats
//! [`Effect::Presence`]: piano_core::room::Effect::Presence

use super::{Room, now};
use crate::storage;
use piano_backends::layout;
use piano_core::proto::Participant;
use piano_core::room::StatsDelta;
use std::collections::BTreeMap;

/// Account calls in flight at once per hand-over (the runtime allows six open subrequests).
const ACCOUNT_CALLS: usize = 6;

impl Room {
    /// Records the analytics events, keeps members' activity for their Account objects
    /// ([`Room::send_activity`], after the event) and, with MongoDB, adds the players' activity
    /// to their totals in this room (SQLite) and queues the new totals.
    pub(super) fn add_stats(&self, room: &str, stats: BTreeMap<String, StatsDelta>) {
        let at = now();
        if self.analytics.on() {
            self.analytics
                .record(piano_core::analytics::events(room, &stats, at), at);
        }
        // Members' totals live in their Account objects (guests keep nothing).
        self.member_stats.borrow_mut().extend(
            stats
                .iter()
                .filter(|(u, d)| {
                    piano_core::analytics::is_member(u) && **d != StatsDelta::default()
                })
                .map(|(u, d)| (u.clone(), d.clone())),
        );
        let Some(deployment) = self.outbox.backends().map(|b| b.deployment.clone()) else {
            return;
        };
        let sql = self.state.storage().sql();
        let mut ops = Vec::new();
        for (user, delta) in &stats {
            match storage::add_stats(&sql, user, delta) {
                Ok(totals) => ops.push(layout::user_stats(&deployment, room, user, &totals)),
                Err(e) => crate::log::error(piano_core::logging::event::BACKEND_ERROR)
                    .msg(format!("stats write failed: {e}"))
                    .emit(),
            }
        }
        if let Err(e) = self.outbox.enqueue(&sql, ops, at) {
            crate::log::error("outbox")
                .msg(format!("outbox write failed: {e}"))
                .emit();
        }
    }

    /// After the event: the HTTP analytics batch, and members' activity to their Account
    /// objects, [`ACCOUNT_CALLS`] at a time. A failed call loses that member's hand-over
    /// (logged; analytics and MongoDB's per-room totals still have it).
    pub(super) async fn send_activity(&self) {
        self.analytics.deliver(now()).await;
        let rows = std::mem::take(&mut *self.member_stats.borrow_mut());
        for chunk in rows.chunks(ACCOUNT_CALLS) {
            let calls = chunk.iter().map(|(user, delta)| async move {
                if let Err(e) = self.add_to_account(user, delta).await {
                    crate::log::warn(piano_core::logging::event::BACKEND_ERROR)
                        .user(user.clone())
                        .error(e)
                        .msg("activity not added to the member's totals")
                        .emit();
                }
            });
            futures_util::future::join_all(calls).await;
        }
    }

    /// Queues presence writes for who arrived and who left, and keeps the published set in
    /// SQLite (the core resumes from it after a restart).
    pub(super) fn publish_presence(&self, room: &str, joined: Vec<Participant>, left: Vec<String>) {
        let Some(backends) = self.outbox.backends() else {
            return;
        };
        let at = now();
        let mut ops = Vec::with_capacity(joined.len() + left.len());
        for p in &joined {
            let entry = layout::PresenceEntry {
                room,
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
        for gone in &left {
            ops.push(layout::presence_left(
                &backends.keys,
                &backends.deployment,
                room,
                gone,
            ));
        }
        let joined: Vec<String> = joined.into_iter().map(|p| p.user_id).collect();
        let sql = self.state.storage().sql();
        if let Err(e) = storage::set_present(&sql, &joined, &left)
            .and_then(|()| self.outbox.enqueue(&sql, ops, at))
        {
            crate::log::error(piano_core::logging::event::BACKEND_ERROR)
                .msg(format!("presence write failed: {e}"))
                .emit();
        }
    }
}
