//! Who may do what: every privileged action by every role, through the real handlers
//! ([`super::super::perms`]).

use super::harness::*;

/// Every privileged action by every role, through the real message handlers: allowed, or
/// refused with NOT_ALLOWED.
#[test]
fn privileged_actions_by_role() {
    use client_message::Msg as M;
    const ROLES: [&str; 5] = ["guest", "member", "owner", "moderator", "admin"];
    #[rustfmt::skip]
    let table: [(&str, [bool; 5]); 10] = [
        //                      guest  member owner  mod    admin
        ("change settings",    [false, false, true,  true,  true ]),
        ("raise capacity",     [false, false, false, false, true ]),
        ("kick",               [false, false, true,  true,  true ]),
        ("ban",                [false, false, true,  true,  true ]),
        ("unban",              [false, false, true,  true,  true ]),
        ("mute",               [false, false, true,  true,  true ]),
        ("transfer crown",     [false, false, true,  true,  true ]),
        ("drop crown",         [false, false, true,  false, false]),
        ("delete others' chat",[false, false, false, true,  true ]),
        ("clear chat",         [false, false, false, true,  true ]),
    ];
    for (action, expected) in table {
        for (role, allowed) in ROLES.iter().zip(expected) {
            let mut room = room_with(|s| {
                s.bans.push(Ban {
                    user_id: "banned".into(),
                    until: NOW + 60_000,
                    network: None,
                })
            });
            // The creator owns the room; for the "owner" row the actor is the creator.
            let actor: ConnId = 1;
            if *role == "owner" {
                enter_as(&mut room, actor, "actor", &["member"]);
            } else {
                enter_as(&mut room, 9, "creator", &["member"]);
                enter_as(&mut room, actor, "actor", &[role]);
            }
            enter_as(&mut room, 2, "victim", &["guest"]);
            let victim_chat = find(&msg(&mut room, 2, chat("hello")), |m| match m {
                server_message::Msg::Chat(c) => Some(c.id),
                _ => None,
            })
            .unwrap();
            let m = match action {
                "change settings" => M::UpdateSettings(proto::UpdateSettings {
                    visible: Some(false),
                    ..Default::default()
                }),
                "raise capacity" => M::UpdateSettings(proto::UpdateSettings {
                    max_players: Some(150),
                    ..Default::default()
                }),
                "kick" => M::Kick(proto::Kick {
                    participant_id: pid("victim"),
                    ban_ms: 0,
                }),
                "ban" => M::Kick(proto::Kick {
                    participant_id: pid("victim"),
                    ban_ms: 60_000,
                }),
                "unban" => M::Unban(proto::Unban {
                    user_id: "banned".into(),
                }),
                "mute" => M::Mute(proto::Mute {
                    participant_id: pid("victim"),
                    notes: true,
                    chat: false,
                }),
                "transfer crown" => M::TransferOwnership(proto::TransferOwnership {
                    participant_id: pid("victim"),
                }),
                "drop crown" => M::DropOwnership(proto::DropOwnership {}),
                "delete others' chat" => M::DeleteChat(proto::DeleteChat { id: victim_chat }),
                "clear chat" => M::ClearChat(proto::ClearChat {}),
                _ => unreachable!(),
            };
            let fx = msg(&mut room, actor, m);
            let refused = error_code(&fx) == Some(ErrorCode::NotAllowed);
            assert_eq!(!refused, allowed, "{role} / {action}: {:?}", sent(&fx));
            if allowed {
                assert!(
                    error_code(&fx).is_none(),
                    "{role} / {action}: {:?}",
                    sent(&fx)
                );
                let done = fx
                    .iter()
                    .any(|e| matches!(e, Effect::Persist(_) | Effect::Close { .. }));
                assert!(done, "{role} / {action} did nothing");
            }
        }
    }
}
