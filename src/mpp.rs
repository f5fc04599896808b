//! `GET /mpp` at the edge: the Multiplayer Piano entry.
//!
//! An MPP socket is not bound to a room at the upgrade: the client says `hi`, then `ch` into a
//! room by name, and may `ch` again on the same socket. A Room object, though, owns sockets of
//! its one room (and hibernates with them). So the worker keeps the client's socket itself and
//! relays: before a room it runs the core's [`Session`] (answering `hi` and pings, checking the
//! token or making a guest as `POST /api/auth/guest` does); for each `ch` it opens an internal
//! WebSocket to that room's object (the `/connect` upgrade the `/ws` path uses, with the verified
//! identity and the MPP flag) and passes frames both ways untouched, the Room object translating
//! with the core (`Input::ConnectMpp`). When the room hands the client on (`Effect::ChangeRoom`)
//! it says so on that socket (a JSON object, never an MPP frame) and the relay reconnects to
//! the next room. The cost of this design: the worker's isolate stays busy while an MPP client
//! is connected (the Room object still hibernates); the gain: one room logic, unchanged
//! hibernation, and no room-to-room socket hand-over inside the Durable Object runtime.
//!
//! Bounds: the relay queues nothing of its own (each frame is passed on as it arrives; it holds
//! at most the one `ch` frame that moves the client). What it passes is bounded where it is
//! for any socket: the client's frames by the core's budgets (the room counts them as they come
//! through), the room's by the Room object's slow-reader rule, which sees the relay socket
//! as it sees any (bytes sent since the client last sent a frame; 1013 past the bound).
//! Closes reach the client with MPP's codes (`piano_core::mpp::close::for_mpp`).

use crate::auth;
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use piano_core::identity::Identity;
use piano_core::mpp::close::for_mpp;
use piano_core::mpp::{Session, Step, notification};
use piano_core::names::percent_encode;
use piano_core::room::participant_of;
use piano_durable_objects::lobby::ROOMS_BINDING;
use piano_durable_objects::{IDENTITY_HEADER, MPP_HEADER, RELAY_CHANGE_ROOM, ROOM_HEADER};
use worker::*;

/// The `motd` of the `hi` reply.
const MOTD: &str = "PianoRhythm: MPP clients share rooms with PianoRhythm players.";
/// The name a guest starts with (MPP's own default).
const GUEST_NAME: &str = "Anonymous";

pub async fn connect(req: Request, env: &Env) -> Result<Response> {
    let is_upgrade = req
        .headers()
        .get("upgrade")?
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return crate::json_error(
            426,
            "upgrade_required",
            "this endpoint only accepts WebSocket upgrades",
        );
    }
    let ip = req.headers().get("cf-connecting-ip")?;
    let pair = WebSocketPair::new()?;
    pair.server.accept()?;
    let client = pair.server;
    let env = env.clone();
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = relay(&client, &env, ip.as_deref()).await {
            piano_durable_objects::log::warn("mpp")
                .msg(format!("mpp relay failed: {e}"))
                .emit();
            let _ = client.close(Some(1011), Some("relay failed"));
        }
    });
    Response::from_websocket(pair.client)
}

/// How a stay in a room ended.
enum Left {
    /// The client or the room closed; nothing more to do.
    Done,
    /// The room refused the socket: the client stays, outside rooms.
    Outside,
    /// The room handed the client on: enter `room` with `frame`.
    Moved(String, String),
}

async fn relay(client: &WebSocket, env: &Env, ip: Option<&str>) -> Result<()> {
    let mut session = Session::new();
    let mut identity: Option<Identity> = None;
    let mut from_client = client.events()?;
    let mut next: Option<(String, String)> = None;
    loop {
        if let Some((room, frame)) = next.take() {
            let Some(who) = &identity else {
                send(client, notification("Not signed in", "send hi before ch"))?;
                continue;
            };
            match in_room(client, &mut from_client, env, who, ip, &room, &frame).await? {
                Left::Done => return Ok(()),
                Left::Outside => continue,
                Left::Moved(room, frame) => next = Some((room, frame)),
            }
            continue;
        }
        let text = match from_client.next().await {
            None | Some(Err(_)) => return Ok(()),
            Some(Ok(WebsocketEvent::Close(_))) => {
                answer_close(client);
                return Ok(());
            }
            Some(Ok(WebsocketEvent::Message(m))) => m.text(),
        };
        let Some(text) = text else {
            send(client, notification("Bad message", "frames are JSON text"))?;
            continue;
        };
        for step in session.on_frame(&text, Date::now().as_millis()) {
            match step {
                Step::Reply(frame) => client.send_with_str(&frame)?,
                Step::SignIn { token } => {
                    let reply = match sign_in(env, token, ip).await {
                        Ok((who, token)) => {
                            let you = participant_of(&who);
                            identity = Some(who);
                            let now = Date::now().as_millis();
                            session.signed_in(&you, now, MOTD, token.as_deref())
                        }
                        Err(why) => {
                            identity = None;
                            session.sign_in_failed(&why)
                        }
                    };
                    client.send_with_str(&reply)?;
                }
                Step::Enter { room, frame } => next = Some((room, frame)),
                Step::Close { code, reason } => {
                    client.close(Some(for_mpp(code)), Some(reason))?;
                    return Ok(());
                }
            }
        }
    }
}

/// Connects to `room`'s object as an MPP socket, feeds it `frame`, then relays both ways.
#[allow(clippy::too_many_arguments)]
async fn in_room(
    client: &WebSocket,
    from_client: &mut EventStream<'_>,
    env: &Env,
    identity: &Identity,
    ip: Option<&str>,
    room: &str,
    frame: &str,
) -> Result<Left> {
    let headers = Headers::new();
    headers.set("upgrade", "websocket")?;
    headers.set(IDENTITY_HEADER, &identity.to_header())?;
    headers.set(ROOM_HEADER, &percent_encode(room))?;
    headers.set(MPP_HEADER, "1")?;
    if let Some(ip) = ip {
        headers.set("cf-connecting-ip", ip)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let req = Request::new_with_init("https://room.internal/connect", &init)?;
    let stub = env
        .durable_object(ROOMS_BINDING)?
        .id_from_name(room)?
        .get_stub()?;
    let resp = stub.fetch_with_request(req).await?;
    let status = resp.status_code();
    let Some(upstream) = resp.websocket() else {
        let why = if status == 429 {
            "you (or your network) already hold the most sockets allowed in this room"
        } else {
            "the room could not take you now"
        };
        send(client, notification("Could not join", why))?;
        return Ok(Left::Outside);
    };
    upstream.accept()?;
    upstream.send_with_str(frame)?;
    let mut from_room = upstream.events()?;
    loop {
        match select(from_client.next(), from_room.next()).await {
            Either::Left((event, _)) => match event {
                Some(Ok(WebsocketEvent::Message(m))) => match m.text() {
                    Some(t) => upstream.send_with_str(&t)?,
                    None => send(client, notification("Bad message", "frames are JSON text"))?,
                },
                other => {
                    if matches!(other, Some(Ok(WebsocketEvent::Close(_)))) {
                        answer_close(client);
                    }
                    let _ = upstream.close(Some(1000), Some("client left"));
                    return Ok(Left::Done);
                }
            },
            Either::Right((event, _)) => match event {
                Some(Ok(WebsocketEvent::Message(m))) => {
                    let Some(t) = m.text() else { continue };
                    // MPP frames are arrays; an object is the room speaking to the relay.
                    if t.starts_with('{') {
                        if let Some((room, frame)) = change_room(&t) {
                            let _ = upstream.close(Some(1000), Some("room change"));
                            return Ok(Left::Moved(room, frame));
                        }
                        continue;
                    }
                    client.send_with_str(&t)?;
                }
                Some(Ok(WebsocketEvent::Close(c))) => {
                    // The room closed the connection (kick, budgets, session end): so does the
                    // client's socket, with the room's code (reserved codes cannot be sent).
                    let code = match c.code() {
                        1005 | 1006 | 1015 => 1011,
                        code => code,
                    };
                    // The room and the core close with our codes; MPP clients get MPP's.
                    let _ = client.close(Some(for_mpp(code)), Some(c.reason()));
                    answer_close(&upstream);
                    return Ok(Left::Done);
                }
                None | Some(Err(_)) => {
                    let _ = client.close(Some(1011), Some("room connection lost"));
                    return Ok(Left::Done);
                }
            },
        }
    }
}

/// Completes a closing handshake the other side began. A socket of a `WebSocketPair` (and one
/// to a Durable Object) that was sent a close and never answers stays half-closed, and the
/// runtime then cancels the relay's request as hung ("The Workers runtime canceled this request
/// because it detected that your Worker's code had hung"). A no-op if already closed.
fn answer_close(socket: &WebSocket) {
    let _ = socket.close(Some(1000), Some("bye"));
}

/// The room's hand-over note: the next room and the frame to feed it.
fn change_room(text: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v["relay"] != RELAY_CHANGE_ROOM {
        return None;
    }
    Some((
        v["room"].as_str()?.to_owned(),
        v["frame"].as_str()?.to_owned(),
    ))
}

/// Our JWT checked as the `/ws` upgrade checks it; without one, a new guest made by
/// `POST /api/auth/guest` itself (same rules and rate limit; its token is returned to keep).
async fn sign_in(
    env: &Env,
    token: Option<String>,
    ip: Option<&str>,
) -> std::result::Result<(Identity, Option<String>), String> {
    let (token, made) = match token {
        Some(t) => (t, false),
        None => (guest_token(env, ip).await?, true),
    };
    match auth::verify(env, Some(&token)).await {
        Ok(identity) => Ok((identity, made.then_some(token))),
        Err(resp) => {
            let status = resp.map(|r| r.status_code()).unwrap_or(500);
            Err(format!("the token was refused ({status})"))
        }
    }
}

async fn guest_token(env: &Env, ip: Option<&str>) -> std::result::Result<String, String> {
    let failed = |e: &dyn std::fmt::Display| format!("no guest identity could be made ({e})");
    let headers = Headers::new();
    headers
        .set("content-type", "application/json")
        .map_err(|e| failed(&e))?;
    if let Some(ip) = ip {
        headers
            .set("cf-connecting-ip", ip)
            .map_err(|e| failed(&e))?;
    }
    let body = serde_json::json!({ "name": GUEST_NAME }).to_string();
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.into()));
    let req = Request::new_with_init("https://worker.internal/api/auth/guest", &init)
        .map_err(|e| failed(&e))?;
    let mut resp = auth::guest(req, env).await.map_err(|e| failed(&e))?;
    if resp.status_code() != 200 {
        return Err(failed(&resp.status_code()));
    }
    let v: serde_json::Value = resp.json().await.map_err(|e| failed(&e))?;
    v["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| failed(&"no token"))
}

fn send(ws: &WebSocket, message: serde_json::Value) -> Result<()> {
    match piano_core::mpp::frame(&[message]) {
        Some(frame) => ws.send_with_str(&frame),
        None => Ok(()),
    }
}
