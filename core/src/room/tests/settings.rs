//! Room settings: validation, permissions, the password hashed and never echoed
//! ([`super::super::settings`]).

use super::harness::*;

#[test]
fn settings_are_validated_and_the_password_is_hashed_never_echoed() {
    let mut room = room("r");
    enter(&mut room, 1, "owner");
    let set = |p: proto::UpdateSettings| client_message::Msg::UpdateSettings(p);
    let bad = [
        proto::UpdateSettings {
            max_players: Some(0),
            ..Default::default()
        },
        proto::UpdateSettings {
            color: Some("red".into()),
            ..Default::default()
        },
        proto::UpdateSettings {
            welcome_message: Some("x".repeat(513)),
            ..Default::default()
        },
        proto::UpdateSettings {
            password: Some("p".repeat(129)),
            ..Default::default()
        },
    ];
    for p in bad {
        assert_eq!(
            error_code(&msg(&mut room, 1, set(p.clone()))),
            Some(ErrorCode::InvalidValue),
            "{p:?}"
        );
    }
    assert_eq!(
        room.stored().settings,
        stored::Settings::defaults(RoomKind::Normal),
        "refused changes change nothing"
    );
    let fx = msg(
        &mut room,
        1,
        set(proto::UpdateSettings {
            password: Some("hunter2".into()),
            max_players: Some(5),
            ..Default::default()
        }),
    );
    let s = find(&fx, |m| match m {
        server_message::Msg::SettingsChanged(s) => s.settings.clone(),
        _ => None,
    })
    .unwrap();
    assert!(s.has_password);
    assert_eq!(s.max_players, 5);
    let frames = sent_bytes(&fx);
    assert!(
        !frames.windows(7).any(|w| w == b"hunter2"),
        "the password never goes out"
    );
    let hash = room.stored().password.clone().unwrap();
    assert!(hash.verify("hunter2") && hash.hash != b"hunter2");

    connect(&mut room, 2, "bob");
    let j = |pw: &str| {
        client_message::Msg::Join(proto::Join {
            password: pw.into(),
            create_settings: None,
        })
    };
    assert_eq!(
        join_failure(&msg(&mut room, 2, j(""))),
        Some((JoinFailure::WrongPassword, 0))
    );
    assert_eq!(
        join_failure(&msg(&mut room, 2, j("wrong"))),
        Some((JoinFailure::WrongPassword, 0)),
        "the first wrong guess is free (a typo)"
    );
    assert!(
        find(&msg_at(&mut room, 2, j("hunter2"), NOW + 1000), |m| {
            matches!(m, server_message::Msg::Joined(_)).then_some(())
        })
        .is_some()
    );
}
