//! The room task's life: its loop over inputs, timers and the lease; retiring when empty.

use super::*;

impl Task {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<RoomMsg>, initial: Vec<Effect>) {
        self.execute(initial, None);
        let period = match &self.ctx.cluster {
            Some(c) => c.lease_ttl / 6,
            // Nothing to renew; the tick flushes stats and lets an idle room notice it is empty.
            None => IDLE_TICK,
        };
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        // The core's next deadline (a token or session expiring): `Input::Tick` then.
        let deadline = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(deadline);
        let mut armed = None;
        let release = loop {
            let next = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => self.on_msg(m),
                    None => Next::Stop { release: true },
                },
                _ = tick.tick() => self.on_tick(),
                _ = &mut deadline, if armed.is_some() => {
                    armed = None;
                    self.on_msg(RoomMsg::Tick)
                }
            };
            let wanted = self.room.next_deadline();
            if wanted != armed {
                armed = wanted;
                if let Some(at) = wanted {
                    // A few ms late rather than early: the core closes what is due by `now`.
                    let wait = at.saturating_sub(now_ms()) + 5;
                    deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + Duration::from_millis(wait));
                }
            }
            if let Next::Stop { release } = next {
                self.retire(&mut rx);
                break release;
            }
            // A room keeps running while a dropped player may still come back.
            if self.local.is_empty() && self.remote.is_empty() && self.room.suspended_count() == 0 {
                // Save everything first, while still in the map: a player arriving now waits
                // in the queue for the flush, and a later start (here or, with Redis, on
                // another replica) loads the room with every change written.
                self.writer.flush().await;
                // Retire, unless something arrived meanwhile (checked under the map's lock,
                // so no sender can find this task in the map after it left).
                let pending = {
                    let mut rooms = self.ctx.rooms.lock();
                    match rx.try_recv() {
                        Ok(m) => Some(m),
                        Err(_) => {
                            if rooms.get(&self.name).is_some_and(|e| e.id == self.id) {
                                rooms.remove(&self.name);
                            }
                            None
                        }
                    }
                };
                match pending {
                    Some(m) => {
                        if let Next::Stop { release } = self.on_msg(m) {
                            self.retire(&mut rx);
                            break release;
                        }
                    }
                    None => {
                        self.retire(&mut rx);
                        break true;
                    }
                }
            }
        };
        if let Some(k) = &self.keeper {
            k.abort();
        }
        if !self.subscribed_users.is_empty() {
            self.end_subscriptions();
        }
        // What only memory holds (activity, presence) goes out; a room handed to another
        // replica (no release) leaves presence to the next holder.
        let stop = self.room.handle(Input::Stop, now_ms());
        let stop = stop
            .into_iter()
            .filter(|e| release || !matches!(e, Effect::Presence { .. }))
            .collect();
        self.execute(stop, None);
        if self.room.connection_count() == 0 {
            // Nobody can resume here: the replay entries kept for it go.
            self.forget_kept();
        }
        // Everything for other replicas and for resuming is in Redis before the lease goes.
        self.flush_publisher().await;
        if let Some(p) = self.presence.take() {
            // Before the lease goes: the next holder's "joined" must land after our "left".
            p.close().await;
        }
        self.writer.flush().await;
        if let Some(m) = &self.mirror {
            // Best effort: MongoDB may be slow or down; the room store already has it all.
            let (reply, done) = oneshot::channel();
            if m.send(MirrorMsg::Flush(reply)) {
                let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
            }
        }
        if release && let Some(c) = &self.ctx.cluster {
            // A player may have come back while we were saving: a new task for the room on
            // this replica then holds the same lease (it names the replica), and keeps it.
            // Room starts take the same lock, so none can slip in between check and release.
            let _starting = self.ctx.rooms.starting.lock().await;
            if !self.ctx.rooms.lock().contains_key(&self.name) {
                c.release_if(&self.name, &self.ctx.replica).await;
            }
        }
        METRICS.rooms.fetch_sub(1, Relaxed);
        METRICS.players.fetch_sub(self.players as i64, Relaxed);
        self.players = 0;
        tracing::info!(room = self.name, "room stopped");
    }

    /// Leaves the map and turns away whatever was still queued (those players reconnect).
    fn retire(&mut self, rx: &mut mpsc::Receiver<RoomMsg>) {
        {
            let mut rooms = self.ctx.rooms.lock();
            if rooms.get(&self.name).is_some_and(|e| e.id == self.id) {
                rooms.remove(&self.name);
            }
        }
        rx.close();
        while let Ok(m) = rx.try_recv() {
            if let RoomMsg::Connect { conn, origin, .. } = m {
                self.close(
                    conn,
                    origin.as_deref(),
                    SERVICE_RESTART,
                    "the room restarted: reconnect",
                );
            }
        }
        for conn in std::mem::take(&mut self.local) {
            self.ctx
                .sockets
                .close(conn, SERVICE_RESTART, "the room restarted: reconnect");
        }
        for (conn, replica) in std::mem::take(&mut self.remote) {
            self.close(
                conn,
                Some(&replica),
                SERVICE_RESTART,
                "the room restarted: reconnect",
            );
        }
    }

    fn on_msg(&mut self, msg: RoomMsg) -> Next {
        self.handle_msg(msg)
    }

    fn handle_msg(&mut self, msg: RoomMsg) -> Next {
        let now = now_ms();
        match msg {
            RoomMsg::Connect {
                conn,
                identity,
                origin,
                protocol,
            } => {
                match origin {
                    Some(r) => {
                        self.remote.insert(conn, r);
                    }
                    None => {
                        self.local.insert(conn);
                    }
                }
                tracing::info!(
                    event = piano_core::logging::event::JOIN,
                    room = self.name,
                    user = identity.user_id,
                    conn,
                    "connected to the room"
                );
                let input = match protocol {
                    Protocol::Protobuf => Input::Connect { conn, identity },
                    Protocol::Mpp => Input::ConnectMpp { conn, identity },
                };
                let effects = self.room.handle(input, now);
                self.execute(effects, None);
            }
            RoomMsg::Frame {
                conn,
                data,
                binary,
                at_us,
            } => {
                let frame = match std::str::from_utf8(&data) {
                    Ok(text) if !binary => Frame::Text(text),
                    _ => Frame::Binary(&data),
                };
                let effects = self.room.handle(Input::Frame { conn, frame }, now);
                self.execute(effects, Some(at_us));
            }
            RoomMsg::Disconnect { conn, dropped } => {
                tracing::info!(
                    event = piano_core::logging::event::LEAVE,
                    room = self.name,
                    conn,
                    dropped,
                    "left the room"
                );
                self.local.remove(&conn);
                self.remote.remove(&conn);
                let input = match dropped {
                    true => Input::Dropped { conn },
                    false => Input::Disconnect { conn },
                };
                let effects = self.room.handle(input, now);
                self.execute(effects, None);
            }
            RoomMsg::RoomListChanged(delta) => {
                if self.room.has_subscribers() {
                    let effects = self.room.handle(Input::RoomListChanged(delta), now);
                    self.execute(effects, None);
                }
            }
            RoomMsg::ReplicasChecked { gone } => {
                self.checking_replicas = false;
                let conns: Vec<ConnId> = self
                    .remote
                    .iter()
                    .filter(|(_, r)| gone.contains(r))
                    .map(|(c, _)| *c)
                    .collect();
                if !conns.is_empty() {
                    tracing::info!(
                        room = self.name,
                        players = conns.len(),
                        "a follower replica is gone; its players left"
                    );
                }
                // Their sockets went with the replica, without a goodbye.
                for conn in conns {
                    self.on_msg(RoomMsg::Disconnect {
                        conn,
                        dropped: true,
                    });
                }
            }
            RoomMsg::Admit { identity, reply } => {
                let _ = reply.send(self.room.admit_connection(&identity));
            }
            RoomMsg::Reach(event) => {
                let input = match event {
                    Reach::SessionEnded {
                        user_id,
                        session_id,
                    } => Input::SessionEnded {
                        user_id,
                        session_id,
                    },
                    Reach::IdentityChanged { user_id } => Input::IdentityChanged { user_id },
                };
                let effects = self.room.handle(input, now);
                self.execute(effects, None);
            }
            RoomMsg::PasswordChecked { conn, ok } => {
                let effects = self.room.handle(Input::PasswordChecked { conn, ok }, now);
                self.execute(effects, None);
            }
            RoomMsg::Tick => {
                let effects = self.room.handle(Input::Tick, now);
                self.execute(effects, None);
            }
            RoomMsg::SubscribeChecked { conn, user_id, ok } => {
                let effects = if ok {
                    self.subscribed_users.insert(user_id);
                    let rooms = self.ctx.directory.listing();
                    self.room.handle(Input::RoomList { conn, rooms }, now)
                } else {
                    self.room.handle(Input::SubscribeRefused { conn }, now)
                };
                self.execute(effects, None);
            }
            RoomMsg::Info(reply) => {
                let _ = reply.send(RoomInfo {
                    participants: self.room.participant_count(),
                    connections: self.room.connection_count(),
                    started_at: self.started_at,
                });
            }
            RoomMsg::Shutdown {
                code,
                reason,
                release,
            } => {
                for conn in std::mem::take(&mut self.local) {
                    self.ctx.sockets.close(conn, code, &reason);
                }
                for (conn, replica) in std::mem::take(&mut self.remote) {
                    self.close(conn, Some(&replica), code, &reason);
                }
                return Next::Stop { release };
            }
        }
        Next::Continue
    }

    /// Checks the lease (kept by [`keep_lease`], so the room never waits on Redis) and asks,
    /// in the background, whether the replicas holding its remote players are still there.
    fn on_tick(&mut self) -> Next {
        let Some(c) = &self.ctx.cluster else {
            return Next::Continue;
        };
        let lease = *self.lease.borrow();
        // Stop a little before the lease could lapse in Redis (renewals are timed from when
        // they were sent): another replica may take the room from then on.
        let safe_until = lease.valid_until.checked_sub(c.lease_ttl / 5);
        if lease.lost || safe_until.is_none_or(|t| Instant::now() >= t) {
            METRICS.leases_lost.fetch_add(1, Relaxed);
            tracing::warn!(
                room = self.name,
                lost_to_another = lease.lost,
                "lease not held any more; stopping the room"
            );
            return self.on_msg(RoomMsg::Shutdown {
                code: SERVICE_RESTART,
                reason: "the room moved: reconnect".into(),
                release: false,
            });
        }
        if !self.remote.is_empty() && !self.checking_replicas {
            let mut replicas: Vec<String> = self.remote.values().cloned().collect();
            replicas.sort();
            replicas.dedup();
            self.checking_replicas = true;
            let c = c.clone();
            let me = self.me.clone();
            tokio::spawn(async move {
                let gone = match c.alive(&replicas).await {
                    Ok(alive) => replicas
                        .into_iter()
                        .zip(alive)
                        .filter(|(_, a)| !a)
                        .map(|(r, _)| r)
                        .collect(),
                    Err(e) => {
                        redis_error("checking follower replicas", &e);
                        Vec::new()
                    }
                };
                let _ = me.send(RoomMsg::ReplicasChecked { gone }).await;
            });
        }
        Next::Continue
    }
}
