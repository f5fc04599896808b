//! How connections end besides a plain disconnect, and what a room leaves behind.
//!
//! Sessions reach open sockets: a logout or revocation ([`Input::SessionEnded`]) and token or
//! session expiry ([`Input::Tick`] at [`Room::next_deadline`]) close them with 4001, a role
//! change ([`Input::IdentityChanged`]) with 4002, so an open socket never keeps powers its
//! token lost. A room whose last participant leaves while its durable state is still a fresh
//! room's asks the host to delete its storage ([`Change::Discard`]).
//!
//! [`Input::SessionEnded`]: super::Input::SessionEnded
//! [`Input::Tick`]: super::Input::Tick
//! [`Input::IdentityChanged`]: super::Input::IdentityChanged

use super::stored::{Change, Stored};
use super::{Conn, ConnId, Effect, Out, Room};
use crate::Millis;
use crate::limits::close;

impl Room {
    /// When the host should feed [`super::Input::Tick`] next: the earliest expiry of a
    /// connected identity, or when gathered activity is due (`None`: no deadline).
    pub fn next_deadline(&self) -> Option<Millis> {
        let stats = self.stats.due.filter(|_| self.has_stats());
        self.conns
            .values()
            .filter_map(|c| c.identity.expires_at)
            .chain(stats)
            .chain(self.next_expiry())
            .min()
    }

    /// Forgets `conn` and tells the host to close it with `code`.
    pub(super) fn close_conn(
        &mut self,
        conn: ConnId,
        code: u16,
        reason: &'static str,
        now: Millis,
        out: &mut Out,
    ) {
        self.on_disconnect(conn, now, out);
        out.push(Effect::Close { conn, code, reason });
    }

    fn close_where(
        &mut self,
        code: u16,
        reason: &'static str,
        which: impl Fn(&Conn) -> bool,
        now: Millis,
        out: &mut Out,
    ) {
        let victims: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| which(c))
            .map(|(id, _)| *id)
            .collect();
        for conn in victims {
            self.close_conn(conn, code, reason, now, out);
        }
    }

    pub(super) fn on_session_ended(
        &mut self,
        user: &str,
        session: Option<&str>,
        now: Millis,
        out: &mut Out,
    ) {
        self.close_where(
            close::SESSION_ENDED,
            "session ended",
            |c| {
                c.identity.user_id == user
                    && session.is_none_or(|s| c.identity.session_id.as_deref() == Some(s))
            },
            now,
            out,
        );
    }

    pub(super) fn on_identity_changed(&mut self, user: &str, now: Millis, out: &mut Out) {
        self.close_where(
            close::IDENTITY_CHANGED,
            "identity changed",
            |c| c.identity.user_id == user,
            now,
            out,
        );
    }

    pub(super) fn on_tick(&mut self, now: Millis, out: &mut Out) {
        self.close_where(
            close::SESSION_ENDED,
            "session expired",
            |c| c.identity.expires_at.is_some_and(|t| t <= now),
            now,
            out,
        );
    }

    /// Persistent abuse: the connection goes (1008).
    pub(super) fn close_abusive(&mut self, conn: ConnId, now: Millis, out: &mut Out) {
        self.close_conn(
            conn,
            close::POLICY_VIOLATION,
            "over budget: slow down",
            now,
            out,
        );
    }

    /// The last participant left: a room nobody configured leaves no storage behind.
    pub(super) fn discard_if_fresh(&mut self, out: &mut Out) {
        if !self.members.is_empty() || !self.stored.is_fresh(self.kind) {
            return;
        }
        self.stored = Stored::new(self.kind);
        out.push(Effect::Persist(Change::Discard));
    }
}
