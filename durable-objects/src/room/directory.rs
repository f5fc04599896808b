//! The room's side of the directory: the core's [`DirectoryOp`]s go to the [`lobby::Lobby`]
//! object (reports, subscriptions) once the room's own effects are done, and their answers
//! (room lists, a refused subscription) go back into the core. Join passwords are checked here
//! too (WebCrypto), as they are awaited between the same rounds.

use super::Room;
use crate::{lobby, webcrypto};
use piano_core::lobby::Summary;
use piano_core::room::{DirectoryOp, Input};
use worker::*;

impl Room {
    /// Talks to the lobby, after the room's own effects are done (players never wait on it).
    /// Failures are logged: the directory heals at the room's next report or wake.
    pub(super) async fn directory(&self, mut ops: Vec<DirectoryOp>) {
        loop {
            let batch = std::mem::take(&mut ops);
            ops.extend(self.directory_ops(batch).await);
            // Join passwords, checked by WebCrypto while the room keeps handling other events.
            let checks = std::mem::take(&mut *self.pending_checks.borrow_mut());
            for (conn, password, hash) in checks {
                let ok = webcrypto::verify_password(&password, &hash).await;
                ops.extend(self.handle(None, Input::PasswordChecked { conn, ok }));
            }
            if ops.is_empty() && self.pending_checks.borrow().is_empty() {
                break;
            }
        }
        let started = super::now();
        self.announce_sockets().await;
        self.send_activity().await;
        self.step("after event: activity sent", started);
        self.discard_if_asked().await;
        self.push_metrics(false).await;
        self.arm_alarm().await;
        self.step("after event: alarm armed", started);
    }

    /// One round of directory calls; returns the directory work their answers caused.
    async fn directory_ops(&self, ops: Vec<DirectoryOp>) -> Vec<DirectoryOp> {
        let mut more = Vec::new();
        for op in ops {
            let result = match op {
                DirectoryOp::Report(report) => self.report(&report).await,
                DirectoryOp::Unsubscribe => {
                    let name = self.room_name();
                    self.lobby("/unsubscribe", &serde_json::json!({ "room": name }))
                        .await
                        .map(drop)
                }
                DirectoryOp::UnsubscribeUser { user_id } => {
                    let name = self.room_name();
                    let body = serde_json::json!({ "room": name, "user": user_id });
                    self.lobby("/unsubscribe", &body).await.map(drop)
                }
                DirectoryOp::Subscribe { conn, user_id } => {
                    let name = self.room_name();
                    match self
                        .lobby(
                            "/subscribe",
                            &serde_json::json!({ "room": name, "user": user_id }),
                        )
                        .await
                    {
                        Ok(mut resp) => match resp.json::<Vec<Summary>>().await {
                            Ok(rooms) => {
                                more.extend(self.handle(None, Input::RoomList { conn, rooms }));
                                Ok(())
                            }
                            Err(e) => Err(e),
                        },
                        // The directory's per-user subscription cap.
                        Err(Error::RustError(e)) if e.ends_with(" answered 429") => {
                            more.extend(self.handle(None, Input::SubscribeRefused { conn }));
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = result {
                crate::log::warn("room")
                    .msg(format!("directory call failed: {e}"))
                    .emit();
            }
        }
        more
    }

    /// Sends a report to the directory, retrying briefly: a lost report of a room that then
    /// empties would keep it listed until the directory's sweep (reports are versioned, so a
    /// late retry never overwrites a newer one).
    async fn report(&self, report: &piano_core::lobby::Report) -> Result<()> {
        let mut result = self.lobby("/report", report).await.map(drop);
        for pause_ms in [250, 1000] {
            if result.is_ok() {
                break;
            }
            Delay::from(std::time::Duration::from_millis(pause_ms)).await;
            result = self.lobby("/report", report).await.map(drop);
        }
        result
    }

    pub(super) fn room_name(&self) -> String {
        self.loaded
            .borrow()
            .as_ref()
            .map(|l| l.room.name().to_owned())
            .unwrap_or_default()
    }

    async fn lobby(&self, path: &str, body: &impl serde::Serialize) -> Result<Response> {
        lobby::post(&self.env, path, body).await
    }
}
