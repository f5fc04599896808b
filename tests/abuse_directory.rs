//! Issue 13, attacks 3 and 6: amplifying the room directory, and making the server store
//! things with upgrades and reads that never join. The directory is shared by every trial, so
//! these look only at their own rooms (by name); the storage trial counts the edge's Durable
//! Objects that hold data and runs alone there (`alone` in the list of `tests/e2e.rs`).

use crate::*;
use e2e_tests::abuse_support::error_code;
use e2e_tests::proto::{self, client_message as cm, server_message::Msg};
use piano_core::room::budget;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

async fn subscribe_and_answer(c: &mut Client) -> Result<Vec<String>, i32> {
    c.send(cm::Msg::SubscribeRooms(proto::SubscribeRooms {}))
        .await;
    c.recv_matching(|m| match m {
        Msg::RoomList(l) => Some(Ok(l.rooms.iter().map(|r| r.name.clone()).collect())),
        Msg::Error(e) if e.code == error_code::TOO_MANY_SUBSCRIPTIONS => Some(Err(e.code)),
        _ => None,
    })
    .await
}

/// Attack 3: One guest subscribes to the room list from six rooms: four subscriptions are served, the
/// fifth and sixth refused with TOO_MANY_SUBSCRIPTIONS; the four keep receiving changes.
pub async fn room_list_subscriptions_are_capped_per_user(s: &Server) {
    let prefix = unique("subs");
    let token = s.guest_token("Watcher").await;
    let mut sockets = Vec::new();
    for i in 0..6 {
        let url = format!("{}?token={token}", s.ws_url(&format!("{prefix}-{i}")));
        let mut c = Client::connect(&url, &[]).await.expect("connect");
        let answer = subscribe_and_answer(&mut c).await;
        eprintln!("subscription {i}: {answer:?}");
        if i < 4 {
            assert!(answer.is_ok(), "subscription {i} is within the cap");
        } else {
            assert_eq!(
                answer,
                Err(error_code::TOO_MANY_SUBSCRIPTIONS),
                "subscription {i}"
            );
        }
        sockets.push(c);
    }
    // The four served ones still get changes: a new visible room of ours shows up in each.
    let shown = format!("{prefix}-shown");
    let mut p = s.player(&shown, "Shown").await;
    p.join().await;
    for (i, c) in sockets.iter_mut().take(4).enumerate() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.next_event(left).await {
                Some(Event::Msg(Msg::RoomListChanged(ch)))
                    if ch.upserted.iter().any(|r| r.name == shown) =>
                {
                    break;
                }
                Some(Event::Msg(Msg::Error(e))) => {
                    panic!("subscription {i} got an error after being served: {e:?}")
                }
                Some(Event::Msg(_)) => continue,
                other => panic!("subscription {i} never saw {shown}: {other:?}"),
            }
        }
    }
}

/// Attack 3: Many settings toggles of one room reach a subscriber coalesced: fewer `RoomListChanged`
/// naming the room than changes applied, and the last one carries the final state.
pub async fn settings_toggles_reach_subscribers_coalesced(s: &Server) {
    let room = unique("toggled");
    let mut owner = s.player(&room, "Toggler").await;
    owner.join().await;
    let mut watcher = s.player(&unique("toggle-watch"), "Watcher").await;
    watcher
        .send(cm::Msg::SubscribeRooms(proto::SubscribeRooms {}))
        .await;
    // Wait until the watcher knows the room (in the full list, or in a change just after).
    let listed = watcher
        .recv_matching(|m| match m {
            Msg::RoomList(l) => Some(l.rooms.iter().any(|r| r.name == room)),
            _ => None,
        })
        .await;
    if !listed {
        watcher
            .recv_matching(|m| match m {
                Msg::RoomListChanged(ch) if ch.upserted.iter().any(|r| r.name == room) => Some(()),
                _ => None,
            })
            .await;
    }

    // As many capacity changes as the settings budget's burst, sent back to back: each is
    // applied (the room's own SettingsChanged).
    let toggles = budget::SETTINGS.burst;
    for i in 0..toggles {
        owner
            .send(cm::Msg::UpdateSettings(proto::UpdateSettings {
                max_players: Some(21 + i),
                ..Default::default()
            }))
            .await;
    }
    let mut applied = Vec::new();
    while applied.len() < toggles as usize {
        let cap = owner
            .recv_matching(|m| match m {
                Msg::SettingsChanged(c) => Some(c.settings.as_ref().map_or(0, |s| s.max_players)),
                Msg::Error(e) => panic!("a settings change within the budget was refused: {e:?}"),
                _ => None,
            })
            .await;
        applied.push(cap);
    }
    let last = 20 + toggles;
    assert_eq!(applied.last(), Some(&last), "{applied:?}");

    let mut pushes = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match watcher.next_event(left).await {
            Some(Event::Msg(Msg::RoomListChanged(ch))) => {
                if let Some(r) = ch.upserted.iter().find(|r| r.name == room) {
                    pushes += 1;
                    if r.capacity == last {
                        break;
                    }
                }
            }
            Some(Event::Msg(_)) => {}
            other => panic!("the final capacity {last} never reached the watcher: {other:?}"),
        }
    }
    eprintln!(
        "coalescing: {} changes reached the watcher as {pushes} pushes",
        applied.len()
    );
    assert!(
        pushes < applied.len(),
        "{pushes} pushes for {} changes: not coalesced",
        applied.len()
    );
}

/// Attack 3: `GET /api/rooms` is answered from a cache: at the edge a second call soon after the
/// first says `x-piano-cache: hit`.
pub async fn room_list_reads_are_cached(s: &Server) {
    let get = || async {
        let r = crate::get(s.http("/api/rooms"))
            .await
            .expect("GET /api/rooms");
        assert_eq!(r.status(), 200);
        r.headers()
            .get("x-piano-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if s.host != Host::Edge {
        // The fallback answers from its own memory; only the shape is shared.
        get().await;
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        get().await;
        let second = get().await;
        if second.as_deref() == Some("hit") {
            return;
        }
        seen.push(second);
        assert!(
            Instant::now() < deadline,
            "no second GET was a cache hit: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Durable state on disk, as far as a trial can see it: the edge's Room and Account object
/// files, or the standalone fallback's rows for the given rooms and accounts.
fn storage(s: &Server, rooms: &[String], accounts: &[String]) -> BTreeSet<String> {
    match s.host {
        Host::Edge => s
            .durable_objects_with_data("Room")
            .into_iter()
            .chain(s.durable_objects_with_data("Account"))
            .map(|(p, tables): (PathBuf, _)| format!("{} {tables:?}", p.display()))
            .collect(),
        Host::Fallback => rooms
            .iter()
            .filter(|r| s.fallback_room_rows(r) > 0)
            .map(|r| format!("room {r}"))
            .chain(
                accounts
                    .iter()
                    .filter(|a| s.fallback_account_rows(a) > 0)
                    .map(|a| format!("account {a}")),
            )
            .collect(),
        Host::FallbackCluster => unreachable!("the cluster keeps rooms in Redis"),
    }
}

/// Attack 6: Upgrades to new room names that never join, and anonymous reads of rooms and user
/// profiles, leave no storage; a room joined once and never configured leaves none either once
/// empty; a configured room keeps its storage (which shows the check can see storage at all).
/// At the edge it counts Durable Object files, so it runs alone there.
pub async fn probes_and_anonymous_reads_create_no_storage(s: &Server) {
    let prefix = unique("probe");
    let configured = format!("{prefix}-configured");
    let fresh = format!("{prefix}-fresh");
    let probes: Vec<String> = (0..20).map(|i| format!("{prefix}-{i}")).collect();
    let users: Vec<String> = (0..20).map(|i| format!("user:{prefix}-n{i}")).collect();
    let member = format!("{prefix}-m");
    let mut all_rooms = probes.clone();
    all_rooms.extend([configured.clone(), fresh.clone()]);
    let mut all_users = users.clone();
    all_users.push(format!("user:{member}"));
    let (all_rooms, users) = (all_rooms, all_users);

    // The control: a configured room and a registered account have storage, and the trial
    // sees it appear.
    let before = storage(s, &all_rooms, &users);
    let reg = crate::http()
        .post(s.http("/api/auth/register"))
        .json(&serde_json::json!({"username": member, "password": "control pass"}))
        .send()
        .await
        .expect("register");
    assert_eq!(reg.status(), 201);
    let mut owner = s.player(&configured, "Owner").await;
    owner.join().await;
    owner
        .send(cm::Msg::UpdateSettings(proto::UpdateSettings {
            welcome_message: Some("hello %%user%%".into()),
            ..Default::default()
        }))
        .await;
    owner
        .recv_matching(|m| matches!(m, Msg::SettingsChanged(_)).then_some(()))
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let baseline = loop {
        let now = storage(s, &all_rooms, &users);
        if now.difference(&before).count() >= 2 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "a configured room's and an account's storage never showed up: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The probes: upgrades (Welcome, a Ping, then gone), room reads, profile reads.
    let token = s.guest_token("Prober").await;
    for room in &probes {
        let url = format!("{}?token={token}", s.ws_url(room));
        let mut c = Client::connect(&url, &[]).await.expect("connect");
        c.send(cm::Msg::Ping(proto::Ping { client_time: 1.0 }))
            .await;
        c.recv_matching(|m| matches!(m, Msg::Pong(_)).then_some(()))
            .await;
        c.close().await;
    }
    for user in users.iter().filter(|u| !u.ends_with(&member)) {
        let r = crate::get(s.http(&format!("/api/users/{user}")))
            .await
            .expect("GET user");
        assert_eq!(r.status(), 404, "{user}");
    }
    // A room joined and left, never configured.
    let mut visitor = s.player(&fresh, "Visitor").await;
    visitor.join().await;
    visitor.close().await;
    // Room reads last (GETs: wrangler dev retries them should the worker restart).
    for room in probes.iter().chain([&fresh]) {
        let info = crate::get(s.http(&format!(
            "/api/rooms/{}",
            piano_core::names::percent_encode(room)
        )))
        .await
        .expect("GET room");
        assert_eq!(info.status(), 200);
    }

    // Whatever they made must be gone (a fresh room's storage goes when it empties).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = storage(s, &all_rooms, &users);
        let extra: Vec<_> = now.difference(&baseline).cloned().collect();
        if extra.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probes and reads left storage behind: {extra:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    owner.close().await;
}

/// Attack 6: Lookalike room names are refused before any room is reached: invisible characters,
/// combining-only names and lookalikes of the lobbies.
pub async fn lookalike_room_names_are_refused(s: &Server) {
    let token = s.guest_token("Spoofer").await;
    let tail = unique("x");
    let refused = [
        format!("zero\u{200B}width-{tail}"),
        format!("\u{FEFF}bom-{tail}"),
        "\u{0301}\u{0301}\u{0301}".to_owned(),
        "Lobby".to_owned(),
        "LOBBY".to_owned(),
        "\u{2113}obby".to_owned(),
        "lobby\u{2010}2".to_owned(),
    ];
    for name in &refused {
        let url = format!("{}?token={token}", s.ws_url(name));
        let r = refused_upgrade(&url, &[]).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (400, Some("invalid_room_name")),
            "{name:?}: {}",
            r.body
        );
        let info = crate::get(s.http(&format!(
            "/api/rooms/{}",
            piano_core::names::percent_encode(name)
        )))
        .await
        .expect("GET room");
        assert_eq!(info.status(), 400, "GET /api/rooms/{name:?}");
    }
    // The real lobbies and ordinary names with accents are fine.
    for name in [
        "lobby".to_owned(),
        "lobby-2".to_owned(),
        format!("café-{tail}"),
    ] {
        let url = format!("{}?token={token}", s.ws_url(&name));
        let c = Client::connect(&url, &[]).await;
        assert!(c.is_ok(), "{name:?} was refused: {:?}", c.err());
        if let Ok(c) = c {
            c.close().await;
        }
    }
}
