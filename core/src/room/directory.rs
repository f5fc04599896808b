//! The room and the room directory (docs/architecture.md §3; the directory itself is `lobby`).
//!
//! Outbound, the room reports its [`Summary`] whenever what the directory lists about it
//! changes (players, capacity, visibility, lock, owner): checked after every input, but compared
//! field by field so a note costs no report. Inbound, connections that subscribe receive the
//! full list ([`Input::RoomList`]) and then each change ([`Input::RoomListChanged`]); the room
//! registers with the directory while any connection is subscribed.
//!
//! [`Input::RoomList`]: super::Input::RoomList
//! [`Input::RoomListChanged`]: super::Input::RoomListChanged

use super::stored::RoomKind;
use super::{ConnId, DirectoryOp, Effect, Out, Room, S, error, send_many, send_one};
use crate::Millis;
use crate::listing::{Delta, Report, Summary};
use crate::proto::{self, ErrorCode};

impl Room {
    /// The directory's full list, fetched for a connection that subscribed (if it still is).
    pub(super) fn on_room_list(&mut self, conn: ConnId, rooms: &[Summary], out: &mut Out) {
        if self.conns.get(&conn).is_some_and(|c| c.subscribed) {
            let rooms = rooms.iter().map(Summary::to_proto).collect();
            out.push(send_one(conn, S::RoomList(proto::RoomList { rooms })));
        }
    }

    /// A change to the directory's list: to every subscribed connection, encoded once.
    pub(super) fn on_room_list_changed(&mut self, delta: &Delta, out: &mut Out) {
        let targets: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.subscribed)
            .map(|(id, _)| *id)
            .collect();
        if !targets.is_empty() && !delta.is_empty() {
            out.push(send_many(targets, S::RoomListChanged(delta.to_proto())));
        }
    }

    /// Makes the next input report to the directory even if nothing changed (the directory
    /// asked: its entry for this room is old).
    pub fn refresh_report(&mut self, now: Millis) -> Out {
        self.reported = None;
        let mut out = Vec::new();
        self.report_if_changed(now, &mut out);
        out
    }

    /// Whether any connection receives the directory.
    pub fn has_subscribers(&self) -> bool {
        self.conns.values().any(|c| c.subscribed)
    }

    /// The room as the directory lists it.
    pub fn summary(&self, last_activity: Millis) -> Summary {
        let crown = &self.stored.crown;
        Summary {
            name: self.name.clone(),
            players: self.members.len() as u32,
            capacity: self.stored.settings.max_players,
            visible: self.stored.settings.visible,
            locked: self.stored.password.is_some(),
            owner_name: if crown.owner_user.is_some() {
                crown.owner_name.clone()
            } else {
                String::new()
            },
            kind: self.kind,
            last_activity,
        }
    }

    /// Reports to the directory when what it lists about the room changed. Compared field by
    /// field without building a summary, since this runs after every input (notes included).
    pub(super) fn report_if_changed(&mut self, now: Millis, out: &mut Out) {
        let crown = &self.stored.crown;
        let owner = if crown.owner_user.is_some() {
            crown.owner_name.as_str()
        } else {
            ""
        };
        let s = &self.stored.settings;
        let same = self.reported.as_ref().is_some_and(|r| {
            r.players as usize == self.members.len()
                && r.capacity == s.max_players
                && r.visible == s.visible
                && r.locked == self.stored.password.is_some()
                && r.owner_name == owner
        });
        if same {
            return;
        }
        let summary = self.summary(now);
        self.report_version = now.max(self.report_version + 1);
        let users = match self.kind {
            RoomKind::Lobby => self
                .members
                .iter()
                .map(|m| m.info.user_id.clone())
                .collect(),
            RoomKind::Normal => Vec::new(),
        };
        self.reported = Some(summary.clone());
        out.push(Effect::Directory(DirectoryOp::Report(Report {
            summary,
            users,
            version: self.report_version,
            received_at: 0,
        })));
    }

    pub(super) fn on_subscribe(&mut self, conn: ConnId, subscribe: bool, out: &mut Out) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let was_subscribed = std::mem::replace(&mut c.subscribed, subscribe);
        out.extend(self.record(conn).map(Effect::Remember));
        if subscribe {
            let user_id = self
                .conns
                .get(&conn)
                .map(|c| c.identity.user_id.clone())
                .unwrap_or_default();
            out.push(Effect::Directory(DirectoryOp::Subscribe { conn, user_id }));
        } else if was_subscribed {
            let user_id = self.conns.get(&conn).map(|c| c.identity.user_id.clone());
            self.subscription_ended(user_id, out);
        }
    }

    /// A subscribed connection stopped (unsubscribed or went): tell the directory whether the
    /// room, or just this user, no longer follows the list.
    pub(super) fn subscription_ended(&self, user_id: Option<String>, out: &mut Out) {
        if !self.has_subscribers() {
            out.push(Effect::Directory(DirectoryOp::Unsubscribe));
        } else if let Some(user_id) = user_id
            && !self
                .conns
                .values()
                .any(|c| c.subscribed && c.identity.user_id == user_id)
        {
            out.push(Effect::Directory(DirectoryOp::UnsubscribeUser { user_id }));
        }
    }

    /// The directory refused `conn`'s subscription (its user follows the list from too many
    /// rooms): undone, and told.
    pub(super) fn on_subscribe_refused(&mut self, conn: ConnId, out: &mut Out) {
        if !self.conns.get(&conn).is_some_and(|c| c.subscribed) {
            return;
        }
        self.on_subscribe(conn, false, out);
        error(
            out,
            conn,
            ErrorCode::TooManySubscriptions,
            "you follow the room list from too many rooms: close one first",
        );
    }
}
