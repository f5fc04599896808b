//! Carrying out the room's effects: frames to local queues and other replicas, closes,
//! durable writes, the directory, presence and activity.

use super::*;

impl Task {
    /// Nobody here follows the room list any more: the users' subscriptions here end.
    pub(super) fn end_subscriptions(&mut self) {
        let users: Vec<String> = self.subscribed_users.drain().collect();
        let (dir, room) = (self.ctx.directory.clone(), self.name.clone());
        tokio::spawn(async move { dir.unsubscribe_room(&room, users).await });
    }

    pub(super) fn publish(&self, replica: &str, wire: Wire) {
        self.to_publisher(Pub::Frame(replica_channel(replica), wire.encode()));
    }

    fn to_publisher(&self, item: Pub) {
        if let Some(p) = &self.publisher
            && let Err(mpsc::error::TrySendError::Full(_)) = p.try_send(item)
        {
            METRICS.queue_full.fetch_add(1, Relaxed);
            tracing::warn!(
                room = self.name,
                "publish queue full: a broadcast to a replica was dropped"
            );
        }
    }

    /// Resume state: in cluster mode through the publisher (ordered with the broadcasts),
    /// standalone through the room's SQLite writer (`crate::kept`).
    fn keep(&self, keep: Keep) {
        match &self.publisher {
            Some(_) => self.to_publisher(Pub::Keep(Box::new(keep))),
            None => self.writer.keep(keep),
        }
    }

    /// Forgets the room's kept replay entries if no session is left.
    pub(super) fn forget_kept(&self) {
        match &self.publisher {
            Some(_) => self.to_publisher(Pub::ForgetKept),
            None => self.writer.forget_kept(),
        }
    }

    /// Waits until the publisher wrote everything queued so far (before the lease goes).
    pub(super) async fn flush_publisher(&self) {
        let Some(p) = &self.publisher else { return };
        let (reply, done) = oneshot::channel();
        if p.send(Pub::Flush(reply)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
        }
    }

    pub(super) fn close(&self, conn: ConnId, replica: Option<&str>, code: u16, reason: &str) {
        match replica {
            Some(r) => self.publish(
                r,
                Wire::Close {
                    conn,
                    code,
                    reason: reason.into(),
                },
            ),
            None => self.ctx.sockets.close(conn, code, reason),
        }
    }

    /// Carries out the room's effects in order. `at_us`: when the frame that caused them was
    /// read, for the relay latency histogram.
    pub(super) fn execute(&mut self, effects: Vec<Effect>, at_us: Option<u64>) {
        // What the room counted goes to the process's metrics; the players gauge moves by
        // this room's change.
        self.room.drain_counters(crate::metrics::add_slot);
        let players = self.room.participant_count();
        if players != self.players {
            let delta = players as i64 - self.players as i64;
            METRICS.players.fetch_add(delta, Relaxed);
            self.players = players;
        }
        if let Some(m) = &self.mirror {
            m.persisted(&effects);
        }
        for effect in effects {
            match effect {
                Effect::Keep(k) => self.keep(k),
                Effect::Send {
                    to,
                    frame,
                    delivery,
                } => {
                    let mut by_replica: HashMap<&str, Vec<ConnId>> = HashMap::new();
                    let mut local = false;
                    for conn in to.as_slice() {
                        match self.remote.get(conn) {
                            Some(r) => by_replica.entry(r.as_str()).or_default().push(*conn),
                            None => local |= self.ctx.sockets.deliver(*conn, &frame, delivery),
                        }
                    }
                    for (replica, conns) in by_replica {
                        self.publish(
                            replica,
                            Wire::Deliver {
                                at_us: at_us.unwrap_or(0),
                                conns,
                                data: frame.clone(),
                                delivery,
                            },
                        );
                    }
                    if local && let Some(at) = at_us {
                        METRICS
                            .relay_latency
                            .observe_us(now_us().saturating_sub(at));
                    }
                }
                Effect::Close { conn, code, reason } => {
                    log_close(&self.name, conn, code, reason);
                    self.local.remove(&conn);
                    let replica = self.remote.remove(&conn);
                    self.close(conn, replica.as_deref(), code, reason);
                }
                // An MPP socket asked for another room: its reader (here, or on the replica
                // holding it) takes it there.
                Effect::ChangeRoom { conn, room, frame } => {
                    if let Some(replica) = self.remote.remove(&conn) {
                        self.publish(&replica, Wire::Move { conn, room, frame });
                    } else if !(self.local.remove(&conn)
                        && self.ctx.sockets.change_room(conn, room, frame))
                    {
                        let code = piano_core::limits::close::INTERNAL_ERROR;
                        self.ctx.sockets.close(conn, code, "the room change failed");
                    }
                }
                // Connection records serve hibernation on the edge; here a room that restarts
                // (another replica, a new process) has lost its sockets and players rejoin.
                Effect::Remember(_) => {}
                // Players' activity: the analytics events, members' totals in the store
                // (guests keep none), and MongoDB's `user_stats` through the mirror.
                Effect::Stats(stats) => {
                    if let Some(a) = &self.ctx.analytics {
                        a.send(piano_core::analytics::events(&self.name, &stats, now_ms()));
                    }
                    self.ctx.store.add_user_stats(&stats);
                    if let Some(m) = &self.mirror {
                        m.send(MirrorMsg::Stats(stats));
                    }
                }
                Effect::Presence { joined, left } => {
                    if let Some(p) = &self.presence {
                        p.apply(&joined, &left);
                    }
                }
                Effect::Persist(change) => {
                    // The room's storage goes: its resume state too (the last participant
                    // left, so no session should remain; if one does, it is kept).
                    if matches!(change, piano_core::room::stored::Change::Discard) {
                        self.forget_kept();
                    }
                    self.writer.write(change);
                }
                Effect::Directory(DirectoryOp::Report(report)) => self.ctx.directory.report(report),
                // The per-user cap first (off the room's task), then the full list.
                Effect::Directory(DirectoryOp::Subscribe { conn, user_id }) => {
                    let dir = self.ctx.directory.clone();
                    let (me, room) = (self.me.clone(), self.name.clone());
                    tokio::spawn(async move {
                        let ok = dir.subscribe_user(&room, &user_id).await;
                        let _ = me
                            .send(RoomMsg::SubscribeChecked { conn, user_id, ok })
                            .await;
                    });
                }
                Effect::Directory(DirectoryOp::Unsubscribe) => self.end_subscriptions(),
                Effect::Directory(DirectoryOp::UnsubscribeUser { user_id }) => {
                    if self.subscribed_users.remove(&user_id) {
                        let (dir, room) = (self.ctx.directory.clone(), self.name.clone());
                        tokio::spawn(async move { dir.unsubscribe_user(&room, &user_id).await });
                    }
                }
                Effect::VerifyPassword {
                    conn,
                    password,
                    hash,
                } => {
                    // A KDF on a blocking thread, never on the room's task: the room keeps
                    // relaying while it runs (the core caps how many a room asks for).
                    let me = self.me.clone();
                    tokio::spawn(async move {
                        let ok = tokio::task::spawn_blocking(move || hash.verify(&password))
                            .await
                            .unwrap_or(false);
                        let _ = me.send(RoomMsg::PasswordChecked { conn, ok }).await;
                    });
                }
            }
        }
    }
}

/// A closed socket, at the level the core gives its code (kicks, floods, caps).
fn log_close(room: &str, conn: ConnId, code: u16, reason: &str) {
    use piano_core::logging::{Level, for_close};
    let (level, name) = for_close(code);
    match level {
        Level::Error | Level::Warn => {
            tracing::warn!(event = name, room, conn, code, reason, "socket closed")
        }
        Level::Info => tracing::info!(event = name, room, conn, code, reason, "socket closed"),
        Level::Debug => tracing::debug!(event = name, room, conn, code, reason, "socket closed"),
    }
}
