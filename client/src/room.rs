//! The high-level API: [`Client::connect`] (a token, or a guest name that gets one), then
//! [`Client::join`] a room. A [`Room`] drives its connection whenever it is read
//! ([`Room::next`]): the Ping/Pong clock (a burst of 16, then one every 10 s), the note batches
//! due, the resume bookkeeping. Requests (chat, settings, crown, moderation) wait for the room's
//! confirmation or its `Error`, keeping what else arrived meanwhile for `next`. Reconnecting
//! resumes the place (re-sending what the room did not acknowledge) or joins afresh.

use crate::batch::Batcher;
use crate::clock::{Clock, now_ms};
use crate::conn::{Connection, Dial, Event};
use crate::error::ClientError;
use crate::http::{Api, Summary};
pub use crate::retry::{MAX_RETRY_AFTER, may_reconnect};
use crate::retry::{retry_after, retryable};
use crate::scheduler::{Scheduled, Scheduler};
use piano_core::proto::{self, client_message, note_event, server_message};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// How long a request waits for the room's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages kept for `next` while a request waits (a flood beyond it is dropped, counted).
const MAX_PENDING: usize = 4096;

/// How to authenticate.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A token (a member's session, a guest token, a bot's).
    Token(String),
    /// A guest name: the token comes from `POST /api/auth/guest`.
    Guest(String),
}

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The server's base URL, `http://host:port` (both hosts serve the same API).
    pub url: String,
    pub auth: Auth,
}

#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    pub password: String,
    /// The settings of the room if this join creates it.
    pub settings: Option<proto::UpdateSettings>,
}

/// An authenticated client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    pub api: Api,
    pub token: String,
}

impl Client {
    pub async fn connect(opts: ConnectOptions) -> Result<Client, ClientError> {
        let api = Api::new(&opts.url)?;
        let token = match opts.auth {
            Auth::Token(t) => t,
            Auth::Guest(name) => api.guest_token(&name).await?,
        };
        Ok(Client { api, token })
    }

    /// The room directory (`GET /api/rooms`).
    pub async fn rooms(&self) -> Result<Vec<Summary>, ClientError> {
        self.api.rooms().await
    }

    /// A socket into `room`, welcomed but not joined (enough to ping and to subscribe to the
    /// room list).
    pub async fn open(&self, room: &str) -> Result<Room, ClientError> {
        let conn = Connection::connect(Dial::new(&self.api.ws_url(room, &self.token))).await?;
        Ok(Room::new(conn))
    }

    /// Opens a socket into `room` and joins it.
    pub async fn join(&self, room: &str, opts: JoinOptions) -> Result<Room, ClientError> {
        let mut r = self.open(room).await?;
        r.join(opts).await?;
        Ok(r)
    }
}

/// How a reconnect got back in.
#[derive(Debug)]
pub enum Reentry {
    /// The same place: what was missed follows (or a snapshot if it could not be replayed).
    Resumed(proto::Resumed),
    /// The place was gone: a fresh join.
    Rejoined(proto::Joined),
}

/// One live connection into a room.
pub struct Room {
    pub conn: Connection,
    /// The room as it was at the join (or the resume's snapshot).
    pub joined: Option<proto::Joined>,
    pub clock: Clock,
    pub scheduler: Scheduler,
    batcher: Batcher,
    pending: VecDeque<server_message::Msg>,
    /// Messages dropped from `pending` (a server flooding a waiting request).
    pub overflowed: u64,
    /// Numbered messages sent again after resumes and rejoins.
    pub resent: u64,
    next_ping: Instant,
    /// The `client_time` of the last Ping sent: each is later, so a Pong tells which it answers.
    last_ping_time: f64,
    join_opts: JoinOptions,
}

impl Room {
    pub fn new(conn: Connection) -> Room {
        Room {
            conn,
            joined: None,
            clock: Clock::default(),
            scheduler: Scheduler::default(),
            batcher: Batcher::default(),
            pending: VecDeque::new(),
            overflowed: 0,
            resent: 0,
            next_ping: Instant::now(),
            last_ping_time: 0.0,
            join_opts: JoinOptions::default(),
        }
    }

    /// This participant's id.
    pub fn id(&self) -> &str {
        self.conn.id()
    }

    /// Joins (or creates) the room on this socket.
    pub async fn join(&mut self, opts: JoinOptions) -> Result<&proto::Joined, ClientError> {
        self.join_opts = opts.clone();
        let join = proto::Join {
            password: opts.password,
            create_settings: opts.settings,
        };
        let joined = self
            .request(client_message::Msg::Join(join), false, |m| match m {
                server_message::Msg::Joined(j) => Some(Ok(j.clone())),
                server_message::Msg::JoinFailed(f) => Some(Err(ClientError::from_join_failed(f))),
                _ => None,
            })
            .await??;
        Ok(self.joined.insert(joined))
    }

    /// The server's clock now, as estimated (ms).
    pub fn server_now(&self) -> f64 {
        self.clock.server_now(now_ms())
    }

    /// Queues a note event played now; batches go out every 150 ms (or when full).
    pub async fn send_note(&mut self, kind: note_event::Kind) -> Result<(), ClientError> {
        self.send_note_at(kind, self.server_now()).await
    }

    /// Queues a note event at server time `at` (a sequencer placing notes ahead, within a
    /// second of the batch's first).
    pub async fn send_note_at(
        &mut self,
        kind: note_event::Kind,
        at: f64,
    ) -> Result<(), ClientError> {
        if let Some(batch) = self.batcher.push(kind, at, Instant::now()) {
            self.send_kept(client_message::Msg::Notes(batch)).await?;
        }
        Ok(())
    }

    /// Sends the open note batch now.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if let Some(batch) = self.batcher.take() {
            self.send_kept(client_message::Msg::Notes(batch)).await?;
        }
        Ok(())
    }

    /// Sends a message the room must not lose to a drop (note batches, chat): numbered, kept
    /// until acknowledged, re-sent after a resume; lost with a dead socket until then.
    pub async fn send_kept(&mut self, msg: client_message::Msg) -> Result<u64, ClientError> {
        self.conn
            .send_numbered(msg, now_ms() as u64)
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))
    }

    /// Sends one unnumbered message.
    pub async fn send(&mut self, msg: client_message::Msg) -> Result<(), ClientError> {
        self.conn
            .send(msg)
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))
    }

    /// The local playback times of a received batch.
    pub fn schedule(&mut self, batch: &proto::NoteBatch) -> Vec<Scheduled> {
        self.scheduler.schedule(batch, &self.clock, now_ms())
    }

    /// The next message within `within` (`Ok(None)`: none came), running the pings and the
    /// note batches due meanwhile. A close or a broken socket is an error (reconnect with
    /// [`Room::reconnect`] if its reason allows).
    pub async fn next(
        &mut self,
        within: Duration,
    ) -> Result<Option<server_message::Msg>, ClientError> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(Some(m));
        }
        let deadline = crate::conn::deadline_in(within);
        loop {
            self.run_timers().await?;
            let batch_due = self.batcher.due_at();
            let wake = [Some(deadline), Some(self.next_ping), batch_due]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(deadline);
            match self
                .conn
                .next_event(wake.saturating_duration_since(Instant::now()))
                .await
            {
                Some(Event::Msg(m)) => {
                    self.observe(&m);
                    return Ok(Some(m));
                }
                Some(Event::Closed(f)) => return Err(ClientError::closed(f.as_ref())),
                Some(Event::Broken(e)) => return Err(ClientError::Broken(e)),
                None if Instant::now() >= deadline => return Ok(None),
                None => {}
            }
        }
    }

    /// Keeps the connection going for `d` (pings, batches), keeping what arrives for `next`.
    pub async fn idle(&mut self, d: Duration) -> Result<(), ClientError> {
        let deadline = crate::conn::deadline_in(d);
        // `next` hands back what is pending first: read past it, keep the rest after it.
        let kept = std::mem::take(&mut self.pending);
        let mut meanwhile = Vec::new();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Ok(Some(m)) if meanwhile.len() < MAX_PENDING => meanwhile.push(m),
                Ok(Some(_)) => self.overflowed += 1,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.pending = kept;
        for m in meanwhile {
            self.keep(m);
        }
        result
    }

    fn keep(&mut self, m: server_message::Msg) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.overflowed += 1;
        }
        self.pending.push_back(m);
    }

    fn observe(&mut self, m: &server_message::Msg) {
        match m {
            server_message::Msg::Pong(p) => self.clock.pong(p.client_time, p.server_time, now_ms()),
            server_message::Msg::Resumed(r) => {
                if let Some(s) = &r.snapshot {
                    self.joined = Some(s.clone());
                }
            }
            _ => {}
        }
    }

    async fn run_timers(&mut self) -> Result<(), ClientError> {
        // A listener that only reads proves it reads (a host that cannot see its queue would
        // take it for a stalled reader): a ping after every ACK_EVERY_BYTES, not too often.
        let acks = self.conn.read_since_send >= piano_core::backlog::ACK_EVERY_BYTES
            && self.conn.last_send.elapsed()
                >= Duration::from_millis(piano_core::backlog::ACK_MIN_INTERVAL_MS);
        let scheduled = Instant::now() >= self.next_ping;
        if acks || scheduled {
            let ping = self.ping();
            self.send(client_message::Msg::Ping(ping)).await?;
            if scheduled {
                self.next_ping = Instant::now() + self.clock.next_ping_in();
            }
        }
        if let Some(batch) = self.batcher.take_due(Instant::now()) {
            self.send_kept(client_message::Msg::Notes(batch)).await?;
        }
        Ok(())
    }

    /// Sends `msg` (numbered and kept if `kept`) and waits for the answer `pick` accepts or an
    /// `Error`, keeping the other messages for `next`.
    ///
    /// A limit of the protocol: an `Error` names no request, so any `Error` arriving meanwhile
    /// fails the request, even one about something else sent around then (a note batch
    /// refused as RATE_LIMITED, a typing notice refused as MUTED). Confirmations are matched
    /// to the request (`pick`), so another participant's change does not confirm it.
    pub async fn request<T>(
        &mut self,
        msg: client_message::Msg,
        kept: bool,
        pick: impl Fn(&server_message::Msg) -> Option<T>,
    ) -> Result<T, ClientError> {
        if kept {
            self.send_kept(msg).await?;
        } else {
            self.send(msg).await?;
        }
        self.wait_for(pick).await
    }

    async fn wait_for<T>(
        &mut self,
        pick: impl Fn(&server_message::Msg) -> Option<T>,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        // `next` hands back what is pending first: read past it, keep the rest after it.
        let kept = std::mem::take(&mut self.pending);
        let mut meanwhile = Vec::new();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Ok(Some(m)) => {
                    if let Some(t) = pick(&m) {
                        break Ok(t);
                    }
                    if let server_message::Msg::Error(e) = &m {
                        break Err(ClientError::from_error(e));
                    }
                    if meanwhile.len() >= MAX_PENDING {
                        self.overflowed += 1;
                    } else {
                        meanwhile.push(m);
                    }
                }
                Ok(None) => break Err(ClientError::Timeout("the room's answer")),
                Err(e) => break Err(e),
            }
        };
        self.pending = kept;
        for m in meanwhile {
            self.keep(m);
        }
        result
    }

    /// Sends a chat message; the room's echo of it (the text as the room kept it: trimmed,
    /// maybe filtered).
    pub async fn chat(&mut self, text: &str) -> Result<proto::ChatMessage, ClientError> {
        let me = self.id().to_owned();
        let msg = client_message::Msg::Chat(proto::SendChat { text: text.into() });
        self.request(msg, true, |m| match m {
            server_message::Msg::Chat(c) if c.participant_id == me => Some(c.clone()),
            _ => None,
        })
        .await
    }

    /// Changes the room's settings; the settings as they are then: the first change showing
    /// the values asked for ([`settings_show`]; another moderator's change does not).
    pub async fn update_settings(
        &mut self,
        s: proto::UpdateSettings,
    ) -> Result<proto::RoomSettings, ClientError> {
        let asked = s.clone();
        self.request(client_message::Msg::UpdateSettings(s), false, |m| match m {
            server_message::Msg::SettingsChanged(c) => {
                c.settings.clone().filter(|now| settings_show(&asked, now))
            }
            _ => None,
        })
        .await
    }

    /// Changes this participant's profile.
    pub async fn update_profile(
        &mut self,
        p: proto::UpdateProfile,
    ) -> Result<proto::Participant, ClientError> {
        let me = self.id().to_owned();
        self.request(
            client_message::Msg::UpdateProfile(p),
            false,
            move |m| match m {
                server_message::Msg::ParticipantUpdated(u) => {
                    u.participant.clone().filter(|p| p.id == me)
                }
                _ => None,
            },
        )
        .await
    }

    async fn crown(
        &mut self,
        msg: client_message::Msg,
        owner: Option<String>,
    ) -> Result<proto::Ownership, ClientError> {
        self.request(msg, false, |m| match m {
            server_message::Msg::OwnerChanged(o) => o
                .ownership
                .clone()
                .filter(|o| owner.as_ref().is_none_or(|want| &o.owner_id == want)),
            _ => None,
        })
        .await
    }

    /// Hands the crown to `participant_id`.
    pub async fn transfer_crown(
        &mut self,
        participant_id: &str,
    ) -> Result<proto::Ownership, ClientError> {
        let msg = client_message::Msg::TransferOwnership(proto::TransferOwnership {
            participant_id: participant_id.into(),
        });
        self.crown(msg, Some(participant_id.into())).await
    }

    /// Drops the crown.
    pub async fn drop_crown(&mut self) -> Result<proto::Ownership, ClientError> {
        self.crown(
            client_message::Msg::DropOwnership(proto::DropOwnership {}),
            Some(String::new()),
        )
        .await
    }

    /// Takes a dropped crown.
    pub async fn claim_crown(&mut self) -> Result<proto::Ownership, ClientError> {
        let me = self.id().to_owned();
        self.crown(
            client_message::Msg::ClaimOwnership(proto::ClaimOwnership {}),
            Some(me),
        )
        .await
    }

    /// Removes a participant (banned for `ban_ms` if not 0); done once they left.
    pub async fn kick(&mut self, participant_id: &str, ban_ms: u64) -> Result<(), ClientError> {
        let who = participant_id.to_owned();
        let msg = client_message::Msg::Kick(proto::Kick {
            participant_id: who.clone(),
            ban_ms,
        });
        self.request(msg, false, |m| match m {
            server_message::Msg::ParticipantLeft(l) if l.participant_id == who => Some(()),
            _ => None,
        })
        .await
    }

    /// Mutes (or unmutes) a participant's notes and chat; the participant as it is then.
    pub async fn mute(
        &mut self,
        participant_id: &str,
        notes: bool,
        chat: bool,
    ) -> Result<proto::Participant, ClientError> {
        let who = participant_id.to_owned();
        let msg = client_message::Msg::Mute(proto::Mute {
            participant_id: who.clone(),
            notes,
            chat,
        });
        self.request(msg, false, |m| match m {
            server_message::Msg::ParticipantUpdated(u) => {
                u.participant.clone().filter(|p| p.id == who)
            }
            _ => None,
        })
        .await
    }

    /// Lifts a user's ban. The room confirms nothing: a Ping after it fences the answer (an
    /// `Error` comes before that Ping's `Pong`; an earlier ping's Pong is not the fence).
    pub async fn unban(&mut self, user_id: &str) -> Result<(), ClientError> {
        self.send(client_message::Msg::Unban(proto::Unban {
            user_id: user_id.into(),
        }))
        .await?;
        let ping = self.ping();
        let fence = ping.client_time;
        self.request(client_message::Msg::Ping(ping), false, |m| {
            matches!(m, server_message::Msg::Pong(p) if p.client_time == fence).then_some(())
        })
        .await
    }

    /// A Ping stamped now, later than every Ping before it on this room.
    fn ping(&mut self) -> proto::Ping {
        self.last_ping_time = unique_after(self.last_ping_time, now_ms());
        proto::Ping {
            client_time: self.last_ping_time,
        }
    }

    /// Deletes a chat message (own, or any for moderators).
    pub async fn delete_chat(&mut self, id: u64) -> Result<(), ClientError> {
        self.request(
            client_message::Msg::DeleteChat(proto::DeleteChat { id }),
            false,
            |m| match m {
                server_message::Msg::ChatDeleted(d) if d.id == id => Some(()),
                _ => None,
            },
        )
        .await
    }

    /// Clears the chat (moderators and admins).
    pub async fn clear_chat(&mut self) -> Result<(), ClientError> {
        self.request(
            client_message::Msg::ClearChat(proto::ClearChat {}),
            false,
            |m| matches!(m, server_message::Msg::ChatCleared(_)).then_some(()),
        )
        .await
    }

    /// Subscribes to the live room list (allowed before joining); the full list now. The
    /// changes follow as `RoomListChanged` messages.
    pub async fn subscribe_rooms(&mut self) -> Result<proto::RoomList, ClientError> {
        self.request(
            client_message::Msg::SubscribeRooms(proto::SubscribeRooms {}),
            false,
            |m| match m {
                server_message::Msg::RoomList(l) => Some(l.clone()),
                _ => None,
            },
        )
        .await
    }

    pub async fn unsubscribe_rooms(&mut self) -> Result<(), ClientError> {
        self.send(client_message::Msg::UnsubscribeRooms(
            proto::UnsubscribeRooms {},
        ))
        .await
    }

    /// After a close that allows it (or a broken socket): a new socket, `Resume` (then, in
    /// order, what the room did not acknowledge), or a fresh `Join` when the place is gone.
    /// Tries `attempts` times, waiting 250 ms, 500 ms, … up to 4 s between tries (a
    /// RATE_LIMITED answer: as long as it says, at most [`MAX_RETRY_AFTER`]).
    pub async fn reconnect(&mut self, attempts: u32) -> Result<Reentry, ClientError> {
        let mut wait = Duration::from_millis(250);
        let mut last = ClientError::Timeout("reconnect");
        for _ in 0..attempts.max(1) {
            let e = match self.reenter().await {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let pause = match retry_after(&e) {
                Some(after) => after.max(wait),
                None if retryable(&e) => wait,
                None => return Err(e),
            };
            last = e;
            tokio::time::sleep(pause).await;
            wait = (wait * 2).min(Duration::from_secs(4));
        }
        Err(last)
    }

    async fn reenter(&mut self) -> Result<Reentry, ClientError> {
        self.conn.cut();
        self.conn = self.conn.redial().await?;
        // A new socket: a new burst of pings, as at the first open.
        self.next_ping = Instant::now();
        self.clock.restart_burst();
        if self.conn.resume.can_resume() {
            let resume = self.conn.resume.resume_message();
            let answer = self
                .request(client_message::Msg::Resume(resume), false, |m| match m {
                    server_message::Msg::Resumed(r) => Some(Ok(r.clone())),
                    server_message::Msg::ResumeFailed(f) => Some(Err(f.clone())),
                    _ => None,
                })
                .await?;
            if let Ok(resumed) = answer {
                self.resend().await?;
                return Ok(Reentry::Resumed(resumed));
            }
        }
        // The place is gone: what already went out may have reached it, so only the rest goes.
        self.conn.resume.unacked.forget_sent();
        let joined = self.join(self.join_opts.clone()).await?.clone();
        self.resend().await?;
        Ok(Reentry::Rejoined(joined))
    }

    async fn resend(&mut self) -> Result<(), ClientError> {
        let now = self.server_now() as u64;
        self.resent += self
            .conn
            .resend_unacked(now)
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))?;
        Ok(())
    }

    /// Flushes the notes and says goodbye (the room frees the place at once).
    pub async fn close(mut self) {
        let _ = self.flush().await;
        self.conn.close().await;
    }
}

/// Whether `now` shows every value `asked` sets that the room reports back as it was asked
/// (the flags, the player limit, whether there is a password; the texts are left out: the
/// room may filter or normalise them).
pub fn settings_show(asked: &proto::UpdateSettings, now: &proto::RoomSettings) -> bool {
    let same = |a: Option<bool>, b: bool| a.is_none_or(|a| a == b);
    same(asked.visible, now.visible)
        && same(asked.owner_only_chat, now.owner_only_chat)
        && same(asked.owner_only_play, now.owner_only_play)
        && same(asked.allow_guests, now.allow_guests)
        && same(asked.allow_bots, now.allow_bots)
        && same(asked.allow_black_midi, now.allow_black_midi)
        && same(asked.profanity_filter, now.profanity_filter)
        && same(
            asked.password.as_ref().map(|p| !p.is_empty()),
            now.has_password,
        )
        && asked.max_players.is_none_or(|m| m == now.max_players)
}

/// `now`, or just after `last` if the clock did not move past it (the f64 survives the round
/// trip exactly, so the Pong names its Ping).
fn unique_after(last: f64, now: f64) -> f64 {
    if now > last { now } else { last + 0.001 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_change_confirms_only_the_values_asked_for() {
        let asked = proto::UpdateSettings {
            visible: Some(false),
            max_players: Some(5),
            password: Some("pw".into()),
            ..Default::default()
        };
        let now = proto::RoomSettings {
            visible: false,
            max_players: 5,
            has_password: true,
            allow_guests: true,
            ..Default::default()
        };
        assert!(settings_show(&asked, &now));
        // Another moderator's change: the room as it was before ours.
        let other = proto::RoomSettings {
            visible: true,
            ..now.clone()
        };
        assert!(!settings_show(&asked, &other));
        let removed = proto::UpdateSettings {
            password: Some(String::new()),
            ..Default::default()
        };
        assert!(!settings_show(&removed, &now));
        assert!(settings_show(&proto::UpdateSettings::default(), &other));
    }

    #[test]
    fn each_ping_is_later_than_the_one_before() {
        let t = 1_764_560_000_000.5;
        assert_eq!(unique_after(0.0, t), t);
        let same = unique_after(t, t);
        assert!(same > t);
        assert!(unique_after(same, t) > same, "a clock going back");
    }
}
