//! Profiles and cursors: validated, broadcast, kept per connection, throttled
//! ([`super::super::profile`]).

use super::harness::*;

#[test]
fn profiles_are_validated_broadcast_and_kept_per_connection() {
    let mut room = room("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let update = |name: Option<&str>, color: Option<&str>, status: Option<&str>| {
        client_message::Msg::UpdateProfile(proto::UpdateProfile {
            name: name.map(Into::into),
            color: color.map(Into::into),
            status: status.map(Into::into),
        })
    };
    assert_eq!(
        error_code(&msg(&mut room, 2, update(Some(""), None, None))),
        Some(ErrorCode::InvalidValue)
    );
    // The error goes to the connection that sent the update, not another tab of the user.
    enter(&mut room, 3, "bob");
    let fx = msg(&mut room, 3, update(Some(""), None, None));
    assert!(matches!(&sent(&fx)[..], [(to, server_message::Msg::Error(_))] if to == &[3]));
    assert_eq!(
        error_code(&msg(&mut room, 2, update(None, Some("blue"), None))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(
        error_code(&msg(
            &mut room,
            2,
            update(None, None, Some(&"s".repeat(65)))
        )),
        Some(ErrorCode::InvalidValue)
    );
    let fx = msg(
        &mut room,
        2,
        update(Some("Robert"), Some("#FF0000"), Some("practising")),
    );
    let msgs = sent(&fx);
    let [(to, server_message::Msg::ParticipantUpdated(u))] = &msgs[..] else {
        panic!("{msgs:?}")
    };
    assert_eq!(to, &[1, 2, 3], "everyone, both of bob's tabs included");
    let p = u.participant.clone().unwrap();
    assert_eq!(
        (p.name.as_str(), p.color.as_str(), p.status.as_str()),
        ("Robert", "#ff0000", "practising")
    );
    // It survives hibernation through the connection record.
    let records: Vec<ConnRecord> = [1, 2].iter().filter_map(|&c| room.record(c)).collect();
    let (woken, _) = Room::restore("r", Some(room.stored().clone()), records, NOW, SEED);
    assert_eq!(woken.participants().nth(1).unwrap().name, "Robert");
}

#[test]
fn cursor_is_bounded_and_throttled() {
    let mut room = room("r");
    enter(&mut room, 1, "alice");
    enter(&mut room, 2, "bob");
    let cur = |x: f32, y: f32| client_message::Msg::Cursor(proto::MoveCursor { x, y });
    assert_eq!(
        error_code(&msg(&mut room, 1, cur(101.0, 5.0))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(
        error_code(&msg(&mut room, 1, cur(f32::NAN, 5.0))),
        Some(ErrorCode::InvalidValue)
    );
    assert_eq!(sent(&msg_at(&mut room, 1, cur(1.0, 2.0), NOW)).len(), 1);
    assert!(
        msg_at(&mut room, 1, cur(1.5, 2.0), NOW + 49).is_empty(),
        "over 20/s"
    );
    assert_eq!(
        sent(&msg_at(&mut room, 1, cur(2.0, 2.0), NOW + 50)).len(),
        1
    );
}
