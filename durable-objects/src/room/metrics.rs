//! The room's metrics, pushed to the aggregator (`crate::metrics`, in the Lobby) because a
//! hibernated room cannot be asked: what the core counted (`Room::drain_counters`), the room's
//! connections and players, and its outbox's head per lane. When a push is due is the core's
//! rule (`piano_core::metrics::push::Pusher`); a push still due when the room goes quiet is
//! made by the alarm ([`Room::deadline`](super::Room)), before the runtime may evict the object.

use super::{Room, now};
use piano_core::metrics::Fam;
use piano_core::metrics::push::Present;

impl Room {
    /// Counts what the host itself does (frames skipped for a slow reader, slow readers
    /// closed): pushed with the core's counts.
    pub(super) fn count(&self, fam: Fam) {
        self.pusher.borrow_mut().counters.add(fam, 0, 1);
    }

    /// Pushes what is due. `force`: what was counted goes now (the alarm, or a room without
    /// storage, which sets no alarm).
    pub(super) async fn push_metrics(&self, force: bool) {
        let at = now();
        let (source, mut present) = {
            let mut loaded = self.loaded.borrow_mut();
            let Some(l) = loaded.as_mut() else { return };
            let mut pusher = self.pusher.borrow_mut();
            l.room
                .drain_counters(|slot, n| pusher.counters.add_slot(slot, n));
            let present = Present {
                connections: l.room.connection_count() as u64,
                players: l.room.participant_count() as u64,
                outbox: Default::default(),
            };
            (format!("room:{}", l.room.name()), present)
        };
        if self.has_storage.get() == Some(true) && self.outbox.backends().is_some() {
            // Read again only when they may have changed or a push goes anyway: not per note.
            let last = self.pusher.borrow().last_outbox();
            let read = force
                || self.outbox.has_new_rows()
                || self.pusher.borrow().counted_due(at)
                || last.is_none();
            match (read, last) {
                (false, Some(heads)) => present.outbox = heads,
                _ => match self.outbox.heads(&self.state.storage().sql()) {
                    Ok(heads) => present.outbox = heads,
                    Err(e) => crate::log::warn("storage")
                        .error(e)
                        .msg("outbox heads unreadable")
                        .emit(),
                },
            }
        }
        let force = force || self.has_storage.get() != Some(true);
        let Some(push) = self.pusher.borrow_mut().due(&source, present, at, force) else {
            return;
        };
        if let Err(e) = crate::lobby::send_metrics(&self.env, &push).await {
            // Kept for the next push: counters only go up.
            crate::log::warn("metrics")
                .error(e)
                .msg("metrics push failed")
                .emit();
            let mut pusher = self.pusher.borrow_mut();
            pusher.counters.add_sparse(&push.counters);
            pusher.forget_present();
        }
    }
}
