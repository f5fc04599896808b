//! The protobuf decoders: `ClientMessage` (every frame a client sends) and `ServerMessage`.
//!
//! Beyond "never panics", a message that decodes must re-encode to bytes that decode to the same
//! message (compared as bytes: NaN floats make `==` useless), and the checks the room runs on
//! a decoded message's fields must not panic either.

use piano_core::proto::{ClientMessage, ServerMessage, client_message::Msg as C};
use piano_core::room::text;
use piano_core::{names, notes};
use prost::Message;

/// `ClientMessage::decode` on untrusted bytes, then the field checks the room applies.
pub fn client_message(data: &[u8]) {
    let Ok(msg) = ClientMessage::decode(data) else {
        return;
    };
    round_trips(&msg);
    let Some(msg) = msg.msg else {
        return;
    };
    match msg {
        C::Notes(batch) => {
            // At its own time, so the clock check passes and the events are checked.
            let _ = notes::validate(&batch, batch.time);
            let _ = notes::validate(&batch, 0);
            let _ = notes::validate(&batch, u64::MAX);
        }
        C::Chat(c) => {
            if let Ok(t) = text::chat(&c.text) {
                assert!(
                    t.chars().count() <= text::MAX_CHAT_CHARS,
                    "chat over the limit"
                );
                let _ = text::mask_profanity(&t);
            }
        }
        C::UpdateProfile(p) => {
            if let Some(n) = p.name {
                let _ = names::display_name(&n);
            }
            if let Some(c) = p.color {
                let _ = text::color(&c);
            }
            if let Some(s) = p.status {
                let _ = text::optional_line("status", &s, text::MAX_STATUS_CHARS);
            }
        }
        C::UpdateSettings(s)
        | C::Join(piano_core::proto::Join {
            create_settings: Some(s),
            ..
        }) => {
            if let Some(w) = s.welcome_message {
                let _ = text::optional_line("welcome message", &w, text::MAX_WELCOME_CHARS);
            }
            if let Some(c) = s.color {
                let _ = text::color(&c);
            }
        }
        _ => {}
    }
}

/// `ServerMessage::decode` (what clients, the bench and the fallback's replicas decode).
pub fn server_message(data: &[u8]) {
    if let Ok(msg) = ServerMessage::decode(data) {
        round_trips(&msg);
    }
}

fn round_trips<M: Message + Default>(msg: &M) {
    let once = msg.encode_to_vec();
    assert_eq!(once.len(), msg.encoded_len(), "encoded_len disagrees");
    let again = M::decode(once.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again.encode_to_vec(), once, "re-encoding is not stable");
}
