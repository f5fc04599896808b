//! Kicks, bans, unbans and mutes, and who may target whom ([`super::super::moderation`]).

use super::harness::*;

#[test]
fn an_owner_cannot_kick_or_mute_staff_but_an_admin_can() {
    let mut room = room("r");
    enter_as(&mut room, 1, "owner", &["member"]);
    enter_as(&mut room, 2, "mod", &["moderator"]);
    enter_as(&mut room, 3, "admin", &["admin"]);
    let kick = |p: &str| {
        client_message::Msg::Kick(proto::Kick {
            participant_id: pid(p),
            ban_ms: 0,
        })
    };
    assert_eq!(
        error_code(&msg(&mut room, 1, kick("mod"))),
        Some(ErrorCode::NotAllowed)
    );
    assert_eq!(
        error_code(&msg(&mut room, 1, kick("owner"))),
        Some(ErrorCode::InvalidValue),
        "not yourself"
    );
    let fx = msg(&mut room, 3, kick("mod"));
    assert!(fx.contains(&Effect::Close {
        conn: 2,
        code: 4003,
        reason: "kicked"
    }));
}

#[test]
fn bans_keep_users_out_until_they_expire_or_are_lifted() {
    let mut room = room("r");
    enter(&mut room, 1, "owner");
    enter(&mut room, 2, "bob");
    let fx = msg(
        &mut room,
        1,
        client_message::Msg::Kick(proto::Kick {
            participant_id: pid("bob"),
            ban_ms: 60_000,
        }),
    );
    let msgs = sent(&fx);
    assert!(
        matches!(&msgs[0], (to, server_message::Msg::Kicked(k)) if to == &[2] && k.banned_until == NOW + 60_000)
    );
    assert!(fx.contains(&Effect::Close {
        conn: 2,
        code: close::KICKED,
        reason: "kicked"
    }));
    assert_eq!(room.participant_count(), 1);
    assert_eq!(
        error_code(&msg(
            &mut room,
            1,
            client_message::Msg::Kick(proto::Kick {
                participant_id: pid("owner"),
                ban_ms: MAX_BAN_MS + 1
            })
        )),
        Some(ErrorCode::InvalidValue)
    );

    connect(&mut room, 3, "bob");
    assert_eq!(
        join_failure(&binary(&mut room, 3, &join())),
        Some((JoinFailure::Banned, 60_000))
    );
    let later = room.handle(
        Input::Frame {
            conn: 3,
            frame: Frame::Binary(&join()),
        },
        NOW + 59_000,
    );
    assert_eq!(
        join_failure(&later),
        Some((JoinFailure::Banned, 1000)),
        "told how long remains"
    );
    let expired = room.handle(
        Input::Frame {
            conn: 3,
            frame: Frame::Binary(&join()),
        },
        NOW + 60_000,
    );
    assert_eq!(join_failure(&expired), None);

    // Unban lifts it early.
    msg_at(
        &mut room,
        1,
        client_message::Msg::Kick(proto::Kick {
            participant_id: pid("bob"),
            ban_ms: 60_000,
        }),
        NOW + 61_000,
    );
    msg(
        &mut room,
        1,
        client_message::Msg::Unban(proto::Unban {
            user_id: "bob".into(),
        }),
    );
    connect(&mut room, 4, "bob");
    assert_eq!(
        join_failure(&room.handle(
            Input::Frame {
                conn: 4,
                frame: Frame::Binary(&join())
            },
            NOW + 62_000
        )),
        None
    );
    assert_eq!(
        error_code(&msg(
            &mut room,
            1,
            client_message::Msg::Unban(proto::Unban {
                user_id: "bob".into()
            })
        )),
        Some(ErrorCode::NotFound)
    );
    // Unban by participant id too (what MPP clients know a user by).
    msg_at(
        &mut room,
        1,
        client_message::Msg::Kick(proto::Kick {
            participant_id: pid("bob"),
            ban_ms: 60_000,
        }),
        NOW + 63_000,
    );
    assert_eq!(
        error_code(&msg(
            &mut room,
            1,
            client_message::Msg::Unban(proto::Unban {
                user_id: pid("bob")
            })
        )),
        None
    );
    assert!(room.stored().bans.is_empty());
}
