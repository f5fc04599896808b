//! The complete room on the real runtime: one trial per group of what players do inside a room
//! (profiles, notes and quota, chat, settings and crown, moderation, join failures), plus the
//! durability check across a `wrangler dev` restart, which runs alone after the others.

use crate::*;
use e2e_tests::proto::{
    self, ErrorCode, JoinFailure, NotesDroppedReason, client_message as cm, server_message::Msg,
};

fn settings(f: impl FnOnce(&mut proto::UpdateSettings)) -> cm::Msg {
    let mut s = proto::UpdateSettings::default();
    f(&mut s);
    cm::Msg::UpdateSettings(s)
}

fn chat(text: &str) -> cm::Msg {
    cm::Msg::Chat(proto::SendChat { text: text.into() })
}

fn batch_of_note_ons(n: usize) -> cm::Msg {
    cm::Msg::Notes(proto::NoteBatch {
        time: now_ms(),
        events: (0..n)
            .map(|i| proto::NoteEvent {
                delay: (i % 100) as u32,
                kind: Some(proto::note_event::Kind::NoteOn(proto::NoteOn {
                    note: 21 + (i % 88) as u32,
                    velocity: 64,
                    channel: 0,
                })),
            })
            .collect(),
        sender_id: String::new(),
    })
}

pub async fn profiles_and_cursors_are_validated_and_broadcast(s: &Server) {
    let room = unique("profile");
    let mut a = s.player(&room, "Alice").await;
    a.join().await;
    let mut b = s.player(&room, "Bob").await;
    b.join().await;
    b.send(cm::Msg::UpdateProfile(proto::UpdateProfile {
        color: Some("blue".into()),
        ..Default::default()
    }))
    .await;
    assert_eq!(b.error_code().await, ErrorCode::InvalidValue);
    b.send(cm::Msg::UpdateProfile(proto::UpdateProfile {
        name: Some("Robert".into()),
        color: Some("#00FF80".into()),
        status: Some("warming up".into()),
    }))
    .await;
    let p = a
        .recv_matching(|m| match m {
            Msg::ParticipantUpdated(u) => u.participant.clone(),
            _ => None,
        })
        .await;
    assert_eq!(
        (p.name.as_str(), p.color.as_str(), p.status.as_str()),
        ("Robert", "#00ff80", "warming up")
    );
    assert_eq!(p.id, b.id());

    // Cursor positions reach the others; out-of-range ones are refused.
    b.send(cm::Msg::Cursor(proto::MoveCursor { x: 40.0, y: 12.5 }))
        .await;
    let c = a
        .recv_matching(|m| {
            if let Msg::Cursor(c) = m {
                Some(c.clone())
            } else {
                None
            }
        })
        .await;
    assert_eq!((c.participant_id.as_str(), c.x, c.y), (b.id(), 40.0, 12.5));
    b.send(cm::Msg::Cursor(proto::MoveCursor { x: -1.0, y: 0.0 }))
        .await;
    assert_eq!(b.error_code().await, ErrorCode::InvalidValue);
}

pub async fn notes_quota_black_midi_and_owner_only_play(s: &Server) {
    let room = unique("quota");
    let mut owner = s.player(&room, "Owner").await;
    let j = owner.join().await;
    assert_eq!(j.quota.map(|q| q.max), Some(1800), "the owner's quota");
    let mut bob = s.player(&room, "Bob").await;
    let j = bob.join().await;
    let q = j.quota.unwrap();
    assert_eq!((q.allowance, q.max, q.interval_ms), (400, 1200, 2000));

    // 5 × 300 note-ons in one burst: 1200 pass, the rest are dropped and Bob is told.
    let mut dropped = 0;
    for _ in 0..5 {
        bob.send(batch_of_note_ons(300)).await;
    }
    while dropped < 300 {
        dropped += bob
            .recv_matching(|m| match m {
                Msg::NotesDropped(d) => {
                    assert_eq!(d.reason, NotesDroppedReason::Quota as i32);
                    Some(d.dropped)
                }
                _ => None,
            })
            .await;
    }
    assert_eq!(dropped, 300);
    let mut relayed = 0;
    while relayed < 1200 {
        relayed += owner
            .recv_matching(|m| match m {
                Msg::Notes(b) => Some(b.events.len()),
                _ => None,
            })
            .await;
    }
    assert_eq!(relayed, 1200);

    // Black MIDI lifts the quota (and Bob hears about it).
    owner
        .send(settings(|s| s.allow_black_midi = Some(true)))
        .await;
    let q = bob
        .recv_matching(|m| {
            if let Msg::Quota(q) = m {
                Some(*q)
            } else {
                None
            }
        })
        .await;
    assert!(q.unlimited);
    for _ in 0..5 {
        bob.send(batch_of_note_ons(300)).await;
    }
    bob.send(cm::Msg::Ping(proto::Ping { client_time: 7.0 }))
        .await;
    // Everything before the pong came through without a NotesDropped.
    bob.recv_matching(|m| match m {
        Msg::NotesDropped(d) => panic!("dropped with Black MIDI on: {d:?}"),
        Msg::Pong(_) => Some(()),
        _ => None,
    })
    .await;

    // Owner-only play.
    owner
        .send(settings(|s| s.owner_only_play = Some(true)))
        .await;
    bob.recv_matching(|m| matches!(m, Msg::SettingsChanged(_)).then_some(()))
        .await;
    bob.send(note_on(60, 90)).await;
    let d = bob
        .recv_matching(|m| {
            if let Msg::NotesDropped(d) = m {
                Some(*d)
            } else {
                None
            }
        })
        .await;
    assert_eq!(
        (d.reason, d.dropped),
        (NotesDroppedReason::OwnerOnly as i32, 1)
    );
}

pub async fn chat_history_typing_rate_limit_and_welcome(s: &Server) {
    let room = unique("chat");
    let mut a = s.player(&room, "Alice").await;
    a.join().await;
    a.send(settings(|s| {
        s.welcome_message = Some("Hello %%user%%, play nice".into())
    }))
    .await;
    a.recv_matching(|m| matches!(m, Msg::SettingsChanged(_)).then_some(()))
        .await;
    for i in 0..3 {
        a.send(chat(&format!("  message {i} "))).await;
    }
    // The room has them all (the sender gets its own messages back) before Bob arrives.
    for _ in 0..3 {
        a.recv_matching(|m| matches!(m, Msg::Chat(_)).then_some(()))
            .await;
    }
    let mut b = s.player(&room, "Bob").await;
    let j = b.join().await;
    let texts: Vec<_> = j.chat_history.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        ["message 0", "message 1", "message 2"],
        "history on join, trimmed, oldest first"
    );
    let welcome = b
        .recv_matching(|m| {
            if let Msg::Chat(c) = m {
                Some(c.clone())
            } else {
                None
            }
        })
        .await;
    assert_eq!(
        (welcome.text.as_str(), welcome.participant_id.as_str()),
        ("Hello Bob, play nice", "")
    );

    b.send(cm::Msg::Typing(proto::SetTyping { typing: true }))
        .await;
    let t = a
        .recv_matching(|m| {
            if let Msg::Typing(t) = m {
                Some(t.clone())
            } else {
                None
            }
        })
        .await;
    assert_eq!((t.participant_id.as_str(), t.typing), (b.id(), true));

    b.send(chat("hi Alice")).await;
    let c = a
        .recv_matching(|m| {
            if let Msg::Chat(c) = m {
                Some(c.clone())
            } else {
                None
            }
        })
        .await;
    assert_eq!((c.text.as_str(), c.name.as_str()), ("hi Alice", "Bob"));
    b.send(chat("   ")).await;
    assert_eq!(b.error_code().await, ErrorCode::InvalidValue);
    b.send(chat(&"x".repeat(513))).await;
    assert_eq!(b.error_code().await, ErrorCode::InvalidValue);
    // Bob deletes his own message; everyone sees it go.
    b.send(cm::Msg::DeleteChat(proto::DeleteChat { id: c.id }))
        .await;
    let gone = a
        .recv_matching(|m| {
            if let Msg::ChatDeleted(d) = m {
                Some(d.id)
            } else {
                None
            }
        })
        .await;
    assert_eq!(gone, c.id);
    // 4 messages per 6 s: Bob has used one.
    for i in 0..3 {
        b.send(chat(&format!("quick {i}"))).await;
    }
    b.send(chat("one too many")).await;
    assert_eq!(b.error_code().await, ErrorCode::RateLimited);
    // Owner-only chat.
    a.send(settings(|s| s.owner_only_chat = Some(true))).await;
    b.recv_matching(|m| matches!(m, Msg::SettingsChanged(_)).then_some(()))
        .await;
    a.send(chat("only me now")).await;
    b.recv_matching(|m| {
        if let Msg::Chat(c) = m {
            (c.text == "only me now").then_some(())
        } else {
            None
        }
    })
    .await;
}

pub async fn settings_password_and_crown(s: &Server) {
    let room = unique("crown");
    let mut owner = s.player(&room, "Owner").await;
    let j = owner.join().await;
    let own = j.ownership.unwrap();
    assert_eq!(own.owner_id, owner.id(), "the creator owns the room");
    let mut bob = s.player(&room, "Bob").await;
    bob.join().await;
    bob.send(settings(|s| s.visible = Some(false))).await;
    assert_eq!(bob.error_code().await, ErrorCode::NotAllowed);
    owner
        .send(settings(|s| s.color = Some("nope".into())))
        .await;
    assert_eq!(owner.error_code().await, ErrorCode::InvalidValue);

    owner
        .send(settings(|s| {
            s.password = Some("open sesame".into());
            s.max_players = Some(10);
        }))
        .await;
    let st = bob
        .recv_matching(|m| {
            if let Msg::SettingsChanged(c) = m {
                c.settings.clone()
            } else {
                None
            }
        })
        .await;
    assert!(st.has_password);
    assert_eq!(st.max_players, 10);

    let mut carol = s.player(&room, "Carol").await;
    let refused = carol.try_join("").await.expect_err("no password");
    assert_eq!(refused.reason, JoinFailure::WrongPassword as i32);
    let refused = carol.try_join("guess").await.expect_err("wrong password");
    assert_eq!(refused.reason, JoinFailure::WrongPassword as i32);
    // The first wrong guess is free (a typo): the right password right after joins. Later
    // misses make the guesser wait (the password-guessing trial in abuse.rs).
    assert_eq!(refused.retry_after_ms, 0, "{refused:?}");
    carol.try_join("open sesame").await.expect("right password");

    // Hand the crown to Bob; then Bob leaves and it drops; Carol must wait.
    owner
        .send(cm::Msg::TransferOwnership(proto::TransferOwnership {
            participant_id: bob.id().into(),
        }))
        .await;
    let o = carol
        .recv_matching(|m| {
            if let Msg::OwnerChanged(o) = m {
                o.ownership.clone()
            } else {
                None
            }
        })
        .await;
    assert_eq!(o.owner_id, bob.id());
    let bob_user = bob.welcome.you.clone().unwrap().user_id;
    bob.close().await;
    let o = carol
        .recv_matching(|m| match m {
            Msg::OwnerChanged(o) if o.ownership.as_ref().is_some_and(|o| o.owner_id.is_empty()) => {
                o.ownership.clone()
            }
            _ => None,
        })
        .await;
    assert_eq!(o.previous_owner_user_id, bob_user);
    assert!(o.claimable_at > now_ms() - 60_000);
    carol
        .send(cm::Msg::ClaimOwnership(proto::ClaimOwnership {}))
        .await;
    assert_eq!(carol.error_code().await, ErrorCode::NotYet);
}

pub async fn moderation_kick_ban_unban_mute(s: &Server) {
    let room = unique("moderation");
    let mut owner = s.player_as(&room, "user:owner", &["member"]).await;
    owner.join().await;
    let mut bob = s.player_as(&room, "user:bob", &["member"]).await;
    bob.join().await;
    let bob_id = bob.id().to_owned();

    owner
        .send(cm::Msg::Mute(proto::Mute {
            participant_id: bob_id.clone(),
            notes: false,
            chat: true,
        }))
        .await;
    let p = bob
        .recv_matching(|m| {
            if let Msg::ParticipantUpdated(u) = m {
                u.participant.clone()
            } else {
                None
            }
        })
        .await;
    assert!(p.muted_chat && !p.muted_notes);
    bob.send(chat("can you hear me")).await;
    assert_eq!(bob.error_code().await, ErrorCode::Muted);

    owner
        .send(cm::Msg::Kick(proto::Kick {
            participant_id: bob_id.clone(),
            ban_ms: 60_000,
        }))
        .await;
    let k = bob
        .recv_matching(|m| {
            if let Msg::Kicked(k) = m {
                Some(k.clone())
            } else {
                None
            }
        })
        .await;
    assert!(k.banned_until > now_ms() + 50_000);
    match bob.next_event(RECV_TIMEOUT).await {
        Some(Event::Closed(Some(frame))) => assert_eq!(u16::from(frame.code), 4003),
        other => panic!("expected close 4003, got {other:?}"),
    }
    let left = owner
        .recv_matching(|m| {
            if let Msg::ParticipantLeft(l) = m {
                Some(l.participant_id.clone())
            } else {
                None
            }
        })
        .await;
    assert_eq!(left, bob_id);

    let mut bob = s.player_as(&room, "user:bob", &["member"]).await;
    let refused = bob.try_join("").await.expect_err("banned");
    assert_eq!(refused.reason, JoinFailure::Banned as i32);
    assert!(
        refused.retry_after_ms > 50_000 && refused.retry_after_ms <= 60_000,
        "{refused:?}"
    );

    owner
        .send(cm::Msg::Unban(proto::Unban {
            user_id: "user:bob".into(),
        }))
        .await;
    owner
        .send(cm::Msg::Ping(proto::Ping { client_time: 0.0 }))
        .await;
    owner
        .recv_matching(|m| matches!(m, Msg::Pong(_)).then_some(()))
        .await;
    bob.try_join("").await.expect("unbanned");

    // A moderator (from the token's roles) may clear the chat; the owner may not.
    owner.send(cm::Msg::ClearChat(proto::ClearChat {})).await;
    assert_eq!(owner.error_code().await, ErrorCode::NotAllowed);
    let mut m = s
        .player_as(&room, "user:mod", &["member", "moderator"])
        .await;
    m.join().await;
    m.send(cm::Msg::ClearChat(proto::ClearChat {})).await;
    owner
        .recv_matching(|m| matches!(m, Msg::ChatCleared(_)).then_some(()))
        .await;
    // ...and the owner cannot kick the moderator.
    owner
        .send(cm::Msg::Kick(proto::Kick {
            participant_id: m.id().into(),
            ban_ms: 0,
        }))
        .await;
    assert_eq!(owner.error_code().await, ErrorCode::NotAllowed);
}

pub async fn typed_join_failures(s: &Server) {
    let room = unique("doors");
    let mut owner = s.player_as(&room, "user:door-owner", &["member"]).await;
    owner.join().await;
    owner
        .send(settings(|s| {
            s.allow_guests = Some(false);
            s.allow_bots = Some(false);
            s.max_players = Some(2);
        }))
        .await;
    owner
        .recv_matching(|m| matches!(m, Msg::SettingsChanged(_)).then_some(()))
        .await;

    let mut guest = s.player(&room, "Guest").await;
    assert_eq!(
        guest.try_join("").await.unwrap_err().reason,
        JoinFailure::GuestsNotAllowed as i32
    );
    let mut bot = s.player_as(&room, "bot:1", &["bot"]).await;
    assert_eq!(
        bot.try_join("").await.unwrap_err().reason,
        JoinFailure::NotAllowed as i32
    );
    let mut second = s.player_as(&room, "user:second", &["member"]).await;
    second.try_join("").await.expect("room has space");
    let mut third = s.player_as(&room, "user:third", &["member"]).await;
    let full = third.try_join("").await.unwrap_err();
    assert_eq!(full.reason, JoinFailure::RoomFull as i32);
    assert!(full.message.contains("full"), "{}", full.message);
    // The connection stays usable after a refusal.
    third
        .send(cm::Msg::Ping(proto::Ping { client_time: 1.0 }))
        .await;
    assert!(matches!(third.recv().await, Msg::Pong(_)));
}

/// Settings, crown, bans and chat survive a restart of `wrangler dev` (the object's SQLite
/// storage under --persist-to); clients reconnect and find the same room.
pub async fn room_survives_a_restart(s: &Server) {
    let room = unique("restart");
    let mut owner = s.player_as(&room, "user:keeper", &["member"]).await;
    owner.join().await;
    let mut bob = s.player_as(&room, "user:banned", &["member"]).await;
    bob.join().await;
    owner
        .send(settings(|s| {
            s.max_players = Some(7);
            s.welcome_message = Some("back again, %%user%%".into());
        }))
        .await;
    owner.send(chat("before the restart")).await;
    owner
        .send(cm::Msg::Kick(proto::Kick {
            participant_id: bob.id().into(),
            ban_ms: 600_000,
        }))
        .await;
    owner
        .recv_matching(|m| matches!(m, Msg::ParticipantLeft(_)).then_some(()))
        .await;

    s.restart();

    let mut bob = s.player_as(&room, "user:banned", &["member"]).await;
    assert_eq!(
        bob.try_join("").await.unwrap_err().reason,
        JoinFailure::Banned as i32,
        "the ban survived"
    );
    let mut owner = s.player_as(&room, "user:keeper", &["member"]).await;
    let j = owner.join().await;
    assert_eq!(j.settings.as_ref().map(|s| s.max_players), Some(7));
    let texts: Vec<_> = j.chat_history.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["before the restart"]);
    assert_eq!(
        j.ownership.unwrap().owner_id,
        owner.id(),
        "the owner is back to the crown"
    );
}
