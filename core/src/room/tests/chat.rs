//! Chat: rules, rate, filters, history, deleting and clearing ([`super::super::chat`]).

use super::harness::*;

#[test]
fn chat_rules_history_rate_and_filters() {
    let mut room = room("r");
    enter(&mut room, 1, "owner");
    enter(&mut room, 2, "bob");
    // Broadcast to everyone, the sender included, trimmed, with an id.
    let msgs = sent(&msg(&mut room, 2, chat("  hi all ")));
    let (to, server_message::Msg::Chat(c)) = &msgs[0] else {
        panic!("{msgs:?}")
    };
    assert_eq!(
        (to.clone(), c.text.as_str(), c.participant_id.clone()),
        (vec![1, 2], "hi all", pid("bob"))
    );
    assert_eq!(
        error_code(&msg(&mut room, 2, chat("   "))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(
        error_code(&msg(&mut room, 2, chat(&"x".repeat(513)))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(
        error_code(&msg(&mut room, 2, chat("bell\u{7}"))),
        Some(ErrorCode::InvalidValue)
    );
    // Rate: 4 per 6 s for players (one used above).
    for i in 0..3 {
        assert_eq!(error_code(&msg(&mut room, 2, chat(&format!("m{i}")))), None);
    }
    assert_eq!(
        error_code(&msg(&mut room, 2, chat("one too many"))),
        Some(ErrorCode::RateLimited)
    );
    assert_eq!(
        error_code(&msg_at(&mut room, 2, chat("later"), NOW + 6000)),
        None
    );
    // The owner has a larger allowance.
    for i in 0..10 {
        assert_eq!(
            error_code(&msg(&mut room, 1, chat(&format!("o{i}")))),
            None,
            "owner message {i}"
        );
    }
    // Typing goes to the others.
    let msgs = sent(&msg(
        &mut room,
        2,
        client_message::Msg::Typing(proto::SetTyping { typing: true }),
    ));
    assert!(matches!(&msgs[..], [(to, server_message::Msg::Typing(t))] if to == &[1] && t.typing));
    // Profanity filter.
    msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            profanity_filter: Some(true),
            ..Default::default()
        }),
    );
    let text = find(
        &msg_at(&mut room, 2, chat("oh shit"), NOW + 20_000),
        |m| match m {
            server_message::Msg::Chat(c) => Some(c.text.clone()),
            _ => None,
        },
    );
    assert_eq!(text.as_deref(), Some("oh ****"));
    // Owner-only chat.
    msg(
        &mut room,
        1,
        client_message::Msg::UpdateSettings(proto::UpdateSettings {
            owner_only_chat: Some(true),
            ..Default::default()
        }),
    );
    assert_eq!(
        error_code(&msg_at(&mut room, 2, chat("me?"), NOW + 40_000)),
        Some(ErrorCode::NotAllowed)
    );
}

#[test]
fn chat_history_keeps_the_last_100_and_deletes() {
    let mut room = room_with(|s| s.settings.welcome_message = "Welcome, %%user%%!".into());
    enter(&mut room, 1, "owner");
    for i in 0..105u64 {
        msg_at(&mut room, 1, chat(&format!("m{i}")), NOW + i * 1000);
    }
    let fx = enter(&mut room, 2, "bob");
    let history = find(&fx, |m| match m {
        server_message::Msg::Joined(j) => Some(j.chat_history.clone()),
        _ => None,
    })
    .unwrap();
    assert_eq!(history.len(), 100);
    assert_eq!(
        (history[0].text.as_str(), history[99].text.as_str()),
        ("m5", "m104")
    );
    let welcome = find(&fx, |m| match m {
        server_message::Msg::Chat(c) if c.participant_id.is_empty() => Some(c.text.clone()),
        _ => None,
    });
    assert_eq!(welcome.as_deref(), Some("Welcome, name of bob!"));
    // Bob may delete his own message, not the owner's (the owner is no moderator).
    let own = find(
        &msg_at(&mut room, 2, chat("mine"), NOW + 200_000),
        |m| match m {
            server_message::Msg::Chat(c) => Some(c.id),
            _ => None,
        },
    )
    .unwrap();
    let del = |id| client_message::Msg::DeleteChat(proto::DeleteChat { id });
    // (m5 just fell out of the 100 kept; m6 is the oldest now.)
    assert_eq!(
        error_code(&msg(&mut room, 2, del(history[1].id))),
        Some(ErrorCode::NotAllowed)
    );
    assert_eq!(
        error_code(&msg(&mut room, 1, del(own))),
        Some(ErrorCode::NotAllowed)
    );
    let msgs = sent(&msg(&mut room, 2, del(own)));
    assert!(matches!(&msgs[..], [(_, server_message::Msg::ChatDeleted(d))] if d.id == own));
    assert_eq!(
        error_code(&msg(&mut room, 2, del(own))),
        Some(ErrorCode::NotFound)
    );
}
