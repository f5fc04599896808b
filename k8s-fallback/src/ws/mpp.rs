//! `GET /mpp`: the Multiplayer Piano entry. MPP clients connect to the server, not to a room:
//! the socket is upgraded without a token, says `hi` (with our JWT as `token`, or none for a
//! guest), then `ch` into a room by name, and may `ch` again later. Until it is in a room the
//! core's [`Session`] decides what each frame does; in a room its frames go to the room as they
//! are (the room speaks MPP itself: `Input::ConnectMpp`), and the room hands it over to the next
//! one ([`crate::sockets::Sockets::change_room`]). The socket's loop is the parent's [`super::serve`].

use crate::accounts::Accounts;
use crate::auth;
use crate::hub::{Hub, Route};
use crate::json::json_error;
use crate::metrics::METRICS;
use crate::serve::{ConnLimits, ConnSlot};
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use bytes::Bytes;
use piano_core::identity::Identity;
use piano_core::limits::MAX_FRAME_BYTES;
use piano_core::mpp::{Session, Step, notification};
use piano_core::room::{ConnId, Delivery, Protocol, participant_of};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// The `motd` of the `hi` reply.
const MOTD: &str = "PianoRhythm: MPP clients share rooms with PianoRhythm players.";
/// The name a guest starts with (MPP's own default).
const GUEST_NAME: &str = "Anonymous";

/// The upgrade: no token yet (it comes in `hi`); the per-network socket cap applies as on `/ws`.
pub async fn connect(
    hub: &Arc<Hub>,
    accounts: &Arc<Accounts>,
    ws_caps: &Arc<ConnLimits>,
    req: Request,
    ip: IpAddr,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await else {
        return json_error(
            426,
            "upgrade_required",
            "this endpoint only accepts WebSocket upgrades",
        );
    };
    if hub.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return json_error(
            503,
            "draining",
            "this replica is shutting down: connect again",
        );
    }
    let Ok(slot) = ws_caps.acquire(Some(ip)) else {
        METRICS.refused_sockets.fetch_add(1, Relaxed);
        return crate::json::too_many_connections(
            "your network holds as many sockets as it may here",
        );
    };
    let meta = crate::ws::ConnMeta {
        slots: (slot, parts.extensions.get::<Arc<ConnSlot>>().cloned()),
    };
    let socket = MppSocket {
        session: Session::new(),
        identity: None,
        accounts: accounts.clone(),
        network: piano_core::http_policy::network_key(&ip.to_string()),
    };
    let hub = hub.clone();
    upgrade
        .max_message_size(MAX_FRAME_BYTES * 4)
        .max_frame_size(MAX_FRAME_BYTES * 4)
        .read_buffer_size(2048)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "mpp upgrade failed"))
        .on_upgrade(move |ws| crate::ws::serve(hub, ws, crate::ws::Entry::Mpp(socket), meta))
}

/// An MPP socket's state outside rooms.
pub struct MppSocket {
    session: Session,
    identity: Option<Identity>,
    accounts: Arc<Accounts>,
    /// The core's network key of the client (per-network caps), as on `/ws`.
    network: String,
}

impl MppSocket {
    /// A frame while the socket is in no room; the route once a `ch` put it in one.
    pub async fn on_frame(&mut self, hub: &Arc<Hub>, conn: ConnId, data: &[u8]) -> Option<Route> {
        let Ok(text) = std::str::from_utf8(data) else {
            send(
                hub,
                conn,
                notification("Bad message", "frames are UTF-8 JSON text"),
            );
            return None;
        };
        for step in self.session.on_frame(text, crate::now_ms()) {
            match step {
                Step::Reply(frame) => {
                    hub.sockets
                        .deliver(conn, &Bytes::from(frame), Delivery::Reliable);
                }
                Step::SignIn { token } => {
                    let reply = match self.sign_in(hub, token).await {
                        Ok((identity, token)) => {
                            let you = participant_of(&identity);
                            self.identity = Some(identity);
                            let now = crate::now_ms();
                            self.session.signed_in(&you, now, MOTD, token.as_deref())
                        }
                        Err(why) => {
                            self.identity = None;
                            self.session.sign_in_failed(&why)
                        }
                    };
                    hub.sockets
                        .deliver(conn, &Bytes::from(reply), Delivery::Reliable);
                }
                Step::Enter { room, frame } => return self.enter(hub, conn, room, frame).await,
                Step::Close { code, reason } => {
                    hub.sockets.close(conn, code, reason);
                    return None;
                }
            }
        }
        None
    }

    /// Puts the socket in `room` and feeds it `frame` (the `ch` that asked).
    pub async fn enter(
        &mut self,
        hub: &Arc<Hub>,
        conn: ConnId,
        room: String,
        frame: String,
    ) -> Option<Route> {
        let Some(identity) = &self.identity else {
            send(
                hub,
                conn,
                notification("Not signed in", "send hi before ch"),
            );
            return None;
        };
        match hub.attach(&room, conn, identity, Protocol::Mpp).await {
            Ok(route) => {
                crate::ws::forward(hub, &route, conn, Bytes::from(frame), false).await;
                Some(route)
            }
            Err((code, reason)) => {
                tracing::info!(room, code, reason, "mpp connection refused by placement");
                send(hub, conn, notification("Could not join", reason));
                None
            }
        }
    }

    /// Our JWT checked as the `/ws` upgrade checks it; without one, a new guest made by the
    /// same rules as `POST /api/auth/guest` (its token is returned for the client to keep).
    async fn sign_in(
        &self,
        hub: &Hub,
        token: Option<String>,
    ) -> Result<(Identity, Option<String>), String> {
        let (token, made) = match token {
            Some(t) => (t, false),
            None => (self.guest_token(hub).await?, true),
        };
        let mut identity = auth::verify(&hub.cfg, &*self.accounts, Some(&token))
            .await
            .map_err(|resp| format!("the token was refused ({})", resp.status()))?;
        identity.network = Some(self.network.clone());
        Ok((identity, made.then_some(token)))
    }

    async fn guest_token(&self, hub: &Hub) -> Result<String, String> {
        let body = serde_json::json!({ "name": GUEST_NAME }).to_string();
        let resp = auth::guest(&hub.cfg, body.as_bytes());
        let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
            .await
            .map_err(|_| "no guest identity could be made".to_owned())?;
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_owned))
            .ok_or_else(|| "no guest identity could be made".to_owned())
    }
}

fn send(hub: &Hub, conn: ConnId, message: serde_json::Value) {
    if let Some(frame) = piano_core::mpp::frame(&[message]) {
        hub.sockets
            .deliver(conn, &Bytes::from(frame), Delivery::Reliable);
    }
}
