//! An MPP socket before (and between) rooms, sans-I/O: MPP clients connect to the server, not to
//! a room, say `hi`, then `ch` into a room (and may `ch` again later; the room hands them over
//! with `room::Effect::ChangeRoom`). Both hosts run this until the socket is in a room, then
//! forward its frames to the room, which speaks MPP itself (`room::Protocol::Mpp`).

use super::inbound::frame_items;
use super::{Action, notification, parse_message};
use crate::Millis;
use crate::limits::{MAX_FRAME_BYTES, close};
use crate::names;
use crate::window::RateWindow;
use serde_json::{Value, json};

/// Frames a socket may send before it is in a room, per [`WINDOW_MS`] (a client says `hi`,
/// `ch` and pings; nothing else is served there).
pub const FRAMES_PER_WINDOW: usize = 20;
pub const WINDOW_MS: u64 = 10_000;

/// What the host does next, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this text frame to the client.
    Reply(String),
    /// Sign in: check `token` as the `/ws` upgrade does (none: make a guest as
    /// `POST /api/auth/guest` does), then send [`Session::signed_in`]'s reply. On failure send
    /// [`Session::sign_in_failed`]'s.
    SignIn { token: Option<String> },
    /// Put the socket in `room` as an MPP connection (`room::Input::ConnectMpp`) and feed it
    /// `frame` (the `ch` that asked, and what followed it in the same frame).
    Enter { room: String, frame: String },
    /// Close the socket.
    Close { code: u16, reason: &'static str },
}

/// One MPP socket outside any room.
#[derive(Debug, Default)]
pub struct Session {
    /// `hi` came (the host may still be checking its token).
    greeted: bool,
    rate: RateWindow,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// A frame from the client while it is in no room.
    pub fn on_frame(&mut self, text: &str, now: Millis) -> Vec<Step> {
        if text.len() > MAX_FRAME_BYTES {
            return vec![Step::Close {
                code: close::FRAME_TOO_LARGE,
                reason: "frame too large",
            }];
        }
        if self
            .rate
            .try_take(FRAMES_PER_WINDOW, WINDOW_MS, now)
            .is_err()
        {
            return vec![Step::Close {
                code: close::POLICY_VIOLATION,
                reason: "too many messages",
            }];
        }
        let items = match frame_items(text) {
            Ok(items) => items,
            Err(e) => return vec![reply(notification("Bad message", &e.to_string()))],
        };
        let mut steps = Vec::new();
        let mut noticed = false;
        let mut notice = |steps: &mut Vec<Step>, n: Value| {
            if !std::mem::replace(&mut noticed, true) {
                steps.push(reply(n));
            }
        };
        for (i, item) in items.iter().enumerate() {
            match parse_message(item).and_then(|m| m.into_action(None)) {
                Err(e) => notice(&mut steps, notification("Bad message", &e.to_string())),
                Ok(Action::Hi { token }) => {
                    self.greeted = true;
                    steps.push(Step::SignIn { token });
                }
                Ok(Action::Join { room, .. }) if !self.greeted => {
                    let _ = room;
                    notice(
                        &mut steps,
                        notification("Not signed in", "send hi before ch"),
                    );
                }
                Ok(Action::Join { room, .. }) => match names::room_name(&room) {
                    Ok(_) => {
                        // The room reads the `ch` itself, then what followed it.
                        let rest = Value::Array(items[i..].to_vec()).to_string();
                        steps.push(Step::Enter { room, frame: rest });
                        return steps;
                    }
                    Err(e) => notice(
                        &mut steps,
                        notification("Could not join", &format!("room name {e}")),
                    ),
                },
                Ok(Action::Bye) => {
                    steps.push(Step::Close {
                        code: close::NORMAL,
                        reason: "bye",
                    });
                    return steps;
                }
                // Time sync works from the start, as MPP clients ping right after `hi`.
                Ok(Action::Room(crate::proto::client_message::Msg::Ping(p))) => {
                    let mut t = json!({"m": "t", "t": now});
                    if p.client_time != 0.0 {
                        t["e"] = json!(p.client_time);
                    }
                    steps.push(reply(t));
                }
                Ok(Action::Unsupported("devices")) => {} // sent by browsers on connect
                Ok(Action::Unsupported(what)) => notice(&mut steps, super::unsupported(what)),
                Ok(Action::Room(_)) => notice(
                    &mut steps,
                    notification("Not in a room", "join a channel first (ch)"),
                ),
            }
        }
        steps
    }

    /// The reply to `hi` once the host knows who the client is; `token` when the host made one
    /// (a new guest), for the client to keep.
    pub fn signed_in(
        &self,
        you: &crate::proto::Participant,
        now: Millis,
        motd: &str,
        token: Option<&str>,
    ) -> String {
        frame_of(super::hi(you, now, motd, token))
    }

    /// The reply when the token was refused: MPP clients show it; the socket stays open for
    /// another `hi`.
    pub fn sign_in_failed(&mut self, why: &str) -> String {
        self.greeted = false;
        frame_of(notification("Sign-in failed", why))
    }
}

fn reply(v: Value) -> Step {
    Step::Reply(frame_of(v))
}

fn frame_of(v: Value) -> String {
    json!([v]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_800_000_000_000;

    #[test]
    fn hi_then_ch_signs_in_then_enters_with_the_rest_of_the_frame() {
        let mut s = Session::new();
        let steps = s.on_frame(
            r#"[{"m":"hi","token":"jwt"},{"m":"t","e":5},{"m":"ch","_id":"lobby"},{"m":"a","message":"x"}]"#,
            NOW,
        );
        // JSON compared as values: key order depends on serde_json's features in the build.
        let v = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        let [
            Step::SignIn { token },
            Step::Reply(t),
            Step::Enter { room, frame },
        ] = &steps[..]
        else {
            panic!("{steps:?}");
        };
        assert_eq!(token.as_deref(), Some("jwt"));
        assert_eq!(v(t), json!([{"m": "t", "t": NOW, "e": 5.0}]));
        assert_eq!(room, "lobby");
        assert_eq!(
            v(frame),
            json!([{"m": "ch", "_id": "lobby"}, {"m": "a", "message": "x"}])
        );
    }

    #[test]
    fn ch_before_hi_and_room_messages_outside_a_room_are_told() {
        let mut s = Session::new();
        for frame in [
            r#"[{"m":"ch","_id":"lobby"}]"#,
            r#"[{"m":"a","message":"x"}]"#,
            "nope",
            r#"[{"m":"dm","_id":"a","message":"b"}]"#,
        ] {
            let steps = s.on_frame(frame, NOW);
            assert_eq!(steps.len(), 1, "{frame}");
            assert!(
                matches!(&steps[0], Step::Reply(r) if r.contains("notification")),
                "{frame}"
            );
        }
        assert_eq!(s.on_frame(r#"[{"m":"devices","list":[]}]"#, NOW), vec![]);
    }

    #[test]
    fn bad_room_names_bye_floods_and_oversized_frames() {
        let mut s = Session::new();
        s.on_frame(r#"[{"m":"hi"}]"#, NOW);
        let steps = s.on_frame(
            &format!(r#"[{{"m":"ch","_id":"{}"}}]"#, "x".repeat(600)),
            NOW,
        );
        assert!(matches!(&steps[0], Step::Reply(r) if r.contains("Could not join")));
        assert_eq!(
            s.on_frame(r#"[{"m":"bye"},{"m":"t"}]"#, NOW),
            vec![Step::Close {
                code: 1000,
                reason: "bye"
            }]
        );
        let big = format!(
            r#"[{{"m":"a","message":"{}"}}]"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        assert_eq!(
            s.on_frame(&big, NOW),
            vec![Step::Close {
                code: close::FRAME_TOO_LARGE,
                reason: "frame too large"
            }]
        );
        let mut flood = Session::new();
        let closes = (0..FRAMES_PER_WINDOW + 1)
            .filter(|_| {
                matches!(
                    flood.on_frame(r#"[{"m":"t"}]"#, NOW)[..],
                    [Step::Close { .. }]
                )
            })
            .count();
        assert_eq!(closes, 1);
        // A failed sign-in needs a new hi before ch.
        let mut s = Session::new();
        s.on_frame(r#"[{"m":"hi","token":"bad"}]"#, NOW);
        assert!(s.sign_in_failed("expired").contains("Sign-in failed"));
        assert!(matches!(
            &s.on_frame(r#"[{"m":"ch","_id":"lobby"}]"#, NOW)[0],
            Step::Reply(_)
        ));
    }
}
