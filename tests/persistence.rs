//! External persistence (issue 7): the MongoDB Data API and Upstash REST clients against real
//! backends (see `e2e_tests::stack`), then the edge configured to use them.

use crate::unique;
use e2e_tests::stack::Stack;
use piano_backends::BackendError;
use piano_backends::mongo::{DataApi, FindOptions, MongoConfig};
use piano_backends::outbox::{self, Op};
use piano_backends::redis::{RedisConfig, Upstash, cmd};
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;

/// One stack shared by the client trials (each uses its own collection or keys).
pub(crate) static STACK: OnceLock<Stack> = OnceLock::new();

fn stack() -> &'static Stack {
    STACK.get_or_init(Stack::start)
}

pub async fn mongo_client_speaks_the_data_api(_target: &Server) {
    let s = stack();
    let backends = s.backends();
    let mongo = backends.mongo.as_ref().expect("mongo configured");
    let coll = unique("things");

    let id = mongo
        .insert_one(&coll, json!({"_id": "a", "n": 1, "tags": ["x"]}))
        .await
        .expect("insertOne");
    assert_eq!(id, "a");
    let doc = mongo.find_one(&coll, json!({"_id": "a"})).await.unwrap();
    assert_eq!(doc, Some(json!({"_id": "a", "n": 1, "tags": ["x"]})));
    assert_eq!(
        mongo.find_one(&coll, json!({"_id": "nope"})).await.unwrap(),
        None
    );

    // An upsert with $setOnInsert twice: one document, untouched the second time.
    for n in [2, 3] {
        let r = mongo
            .update_one(
                &coll,
                json!({"_id": "b"}),
                json!({"$setOnInsert": {"n": n}}),
                true,
            )
            .await
            .unwrap();
        assert_eq!(r.upserted_id.is_some(), n == 2, "{r:?}");
    }
    let r = mongo
        .update_many(
            &coll,
            json!({"n": {"$gte": 1}}),
            json!({"$set": {"seen": true}}),
        )
        .await
        .unwrap();
    assert_eq!((r.matched, r.modified), (2, 2));
    let docs = mongo
        .find(
            &coll,
            json!({"seen": true}),
            FindOptions {
                sort: Some(json!({"_id": -1})),
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(docs, [json!({"_id": "b", "n": 2, "seen": true})]);
    let sums = mongo
        .aggregate(
            &coll,
            json!([{"$group": {"_id": null, "total": {"$sum": "$n"}}}]),
        )
        .await
        .unwrap();
    assert_eq!(sums[0]["total"], 3);
    // Not exercised here: deleteOne. mongodb-local-data-api 1.0.1 hands the whole request body
    // to the driver as the filter (`coll.deleteOne(params)`), so it deletes nothing; the client
    // sends the Atlas shape (`{"filter": …}`), and nothing we persist ever deletes.

    // A duplicate key may be a race of two upserts: retried (the second attempt finds the
    // document). An unknown update operator is the op's own fault: set aside.
    let e = mongo
        .insert_one(&coll, json!({"_id": "b"}))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("E11000") && e.is_transient(),
        "{e:?}"
    );
    let e = mongo
        .update_one(
            &coll,
            json!({"_id": "b"}),
            json!({"$bogus": {"n": 1}}),
            false,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, BackendError::Rejected(_)) && !e.is_transient(),
        "{e:?}"
    );

    // A wrong key is refused; the data would be fine once the key is fixed: transient.
    let mut config = mongo.config().clone();
    config.api_key = "wrong".into();
    let e = DataApi::new(config)
        .find_one(&coll, json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(e, BackendError::Unauthorized(401)) && e.is_transient(),
        "{e:?}"
    );
}

pub async fn redis_client_speaks_the_upstash_protocol(_target: &Server) {
    let s = stack();
    let backends = s.backends();
    let redis = backends.redis.as_ref().expect("redis configured");
    let key = format!("{}{}", s.prefix, unique("k"));

    assert_eq!(
        redis
            .command(&cmd(["SET", &key, "v", "EX", "60"]))
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(redis.command(&cmd(["GET", &key])).await.unwrap(), "v");
    let answers = redis
        .pipeline(&[
            cmd(["INCR", &format!("{key}:n")]),
            cmd(["INCR", &format!("{key}:n")]),
            cmd(["HGET", &key, "f"]), // wrong type: an error for this command only
            cmd(["HGETALL", &format!("{key}:none")]),
        ])
        .await
        .unwrap();
    assert_eq!(answers[0], Ok(json!(1)));
    assert_eq!(answers[1], Ok(json!(2)));
    assert!(
        answers[2].as_ref().is_err_and(|e| e.contains("WRONGTYPE")),
        "{answers:?}"
    );
    assert_eq!(answers[3], Ok(json!([])));
    let e = redis
        .pipeline_all(&[cmd(["HGET", &key, "f"])])
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Rejected(_)), "{e:?}");

    let mut config = redis.config().clone();
    config.token = "wrong".into();
    let e = Upstash::new(config)
        .command(&cmd(["GET", &key]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, BackendError::Unauthorized(401)) && e.is_transient(),
        "{e:?}"
    );
}

pub async fn clients_time_out_and_report_unreachable_services(_target: &Server) {
    // Nothing listens on a just-freed port: refused at once.
    let closed = e2e_tests::free_port();
    let mongo = DataApi::new(MongoConfig {
        url: format!("http://127.0.0.1:{closed}"),
        api_key: "k".into(),
        data_source: "x".into(),
        database: "y".into(),
        timeout: Duration::from_millis(500),
    });
    let e = mongo.find_one("c", json!({})).await.unwrap_err();
    assert!(
        matches!(e, BackendError::Unreachable(_)) && e.is_transient(),
        "{e:?}"
    );

    // A listener that accepts and never answers: the timeout ends the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let redis = Upstash::new(RedisConfig {
        url: format!("http://127.0.0.1:{port}"),
        token: "t".into(),
        timeout: Duration::from_millis(300),
    });
    let e = redis.command(&cmd(["PING"])).await.unwrap_err();
    assert_eq!(e, BackendError::Timeout);
    assert!(e.is_transient());
    hold.abort();
}

pub async fn outbox_ops_are_idempotent(_target: &Server) {
    let s = stack();
    let backends = s.backends();
    let mongo = backends.mongo.as_ref().unwrap();
    let coll = unique("outbox");
    let op = Op::upsert(
        &coll,
        json!({"_id": "m1"}),
        json!({"$setOnInsert": {"text": "once"}}),
    );
    let keys = &backends.keys;
    let entry = piano_backends::layout::PresenceEntry {
        room: "r",
        user_id: "user:idem",
        name: "Idem",
        color: "#abcdef",
    };
    let presence = piano_backends::layout::presence_joined(keys, "test", &entry, 1);
    // Delivered three times, as after lost acknowledgements.
    for _ in 0..3 {
        outbox::deliver(&backends, &op).await.expect("mongo op");
        outbox::deliver(&backends, &presence)
            .await
            .expect("redis op");
    }
    let docs = mongo
        .find(&coll, json!({}), FindOptions::default())
        .await
        .unwrap();
    assert_eq!(docs, [json!({"_id": "m1", "text": "once"})]);
    let redis = backends.redis.as_ref().unwrap();
    let members = redis
        .command(&cmd(["HKEYS", &keys.presence("test", "r")]))
        .await
        .unwrap();
    assert_eq!(members, json!(["user:idem"]));
}

// ---------------------------------------------------------------------------------------------
// The edge configured with both backends.

use e2e_tests::proto::{self, client_message as cm, server_message::Msg};
use e2e_tests::stack::Part;
use e2e_tests::{Client, Server, eventually};
use piano_backends::Backends;
use serde_json::Value;
use std::time::Instant;

async fn post_json(s: &Server, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = crate::http().post(s.http(path)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn get_json(s: &Server, path: &str) -> (u16, Value) {
    let resp = crate::http().get(s.http(path)).send().await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn put_me(s: &Server, token: &str, body: Value) -> (u16, Value) {
    let resp = crate::http()
        .put(s.http("/api/users/me"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("PUT me");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn register(s: &Server, name: &str) -> Value {
    let (status, body) = post_json(
        s,
        "/api/auth/register",
        None,
        json!({"username": name, "password": "correct horse"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// `GET /api/status`'s answer.
async fn status_of(s: &Server) -> Option<Value> {
    crate::get(s.http("/api/status"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn member(s: &Server, room: &str, access: &str) -> Client {
    let mut c = Client::connect(&format!("{}?token={access}", s.ws_url(room)), &[])
        .await
        .expect("connect");
    c.join().await;
    c
}

fn chat(text: &str) -> cm::Msg {
    cm::Msg::Chat(proto::SendChat { text: text.into() })
}

async fn chat_texts(b: &Backends, deployment: &str, room: &str) -> Option<Vec<String>> {
    let docs = b
        .mongo
        .as_ref()?
        .find(
            piano_backends::layout::CHAT,
            json!({"room": room, "deployment": deployment}),
            FindOptions {
                sort: Some(json!({"id": 1})),
                ..Default::default()
            },
        )
        .await
        .ok()?;
    Some(
        docs.iter()
            .filter_map(|d| d["text"].as_str().map(str::to_owned))
            .collect(),
    )
}

async fn account_doc(b: &Backends, user_id: &str) -> Option<Value> {
    b.mongo
        .as_ref()?
        .find_one(piano_backends::layout::ACCOUNTS, json!({"_id": user_id}))
        .await
        .ok()?
}

async fn presence(b: &Backends, deployment: &str, room: &str) -> Option<Vec<String>> {
    let keys = b
        .redis
        .as_ref()?
        .command(&cmd(["HKEYS", &b.keys.presence(deployment, room)]))
        .await
        .ok()?;
    let mut keys: Vec<String> = serde_json::from_value(keys).ok()?;
    keys.sort();
    Some(keys)
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("JSON claims")
}

const SETTLE: Duration = Duration::from_secs(30);

pub async fn edge_writes_accounts_and_chat_to_mongodb_and_presence_to_redis(_target: &Server) {
    let stack = stack();
    let b = stack.backends();
    let s = Server::start_edge_with(&stack.vars("edge-a"));
    let (status, health) = get_json(&s, "/healthz").await;
    assert_eq!(
        (status, &health["backends"]),
        (200, &json!({"mongodb": true, "redis": true}))
    );

    let name = unique("keeper");
    let user_id = format!("user:{name}");
    // Concurrent registrations of one name while MongoDB is consulted: exactly one wins.
    let contested = unique("contested");
    let attempts = (0..4).map(|i| {
        post_json(
            &s,
            "/api/auth/register",
            None,
            json!({"username": contested, "password": format!("password {i}")}),
        )
    });
    let mut statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409]);
    let reg = register(&s, &name).await;
    let access = reg["access_token"].as_str().unwrap().to_owned();
    let (status, _) = put_me(&s, &access, json!({"name": "Keeper of Keys"})).await;
    assert_eq!(status, 200);

    let room = unique("archive");
    let mut owner = member(&s, &room, &access).await;
    let mut guest = s.player(&room, "Visitor").await;
    guest.join().await;
    let change = proto::UpdateSettings {
        welcome_message: Some("Welcome to the archive".into()),
        ..Default::default()
    };
    owner.send(cm::Msg::UpdateSettings(change)).await;
    for text in ["first words", "second words"] {
        owner.send(chat(text)).await;
        guest
            .recv_matching(|m| matches!(m, Msg::Chat(c) if c.text == text).then_some(()))
            .await;
    }

    for note in [60, 64, 67] {
        owner.send(e2e_tests::note_on(note, 80)).await;
        guest
            .recv_matching(|m| matches!(m, Msg::Notes(_)).then_some(()))
            .await;
    }

    // Accounts and chat land in MongoDB; the room's durable state and user stats too.
    let doc = eventually("the account document", SETTLE, || async {
        account_doc(&b, &user_id)
            .await
            .filter(|d| d["name"] == "Keeper of Keys")
    })
    .await;
    assert_eq!(doc["username"], name.as_str());
    assert!(
        doc["usertag"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("{name}#")))
    );
    assert!(
        doc["password"].is_object(),
        "the hash travels, for other deployments' logins"
    );
    let texts = eventually("both chat messages", SETTLE, || async {
        chat_texts(&b, "edge-a", &room)
            .await
            .filter(|t| t.len() == 2)
    })
    .await;
    assert_eq!(texts, ["first words", "second words"]);
    let room_doc = eventually("the room's settings", SETTLE, || async {
        let doc = b
            .mongo
            .as_ref()?
            .find_one(piano_backends::layout::ROOMS, json!({"_id": room}))
            .await
            .ok()??;
        (doc["settings"]["welcome_message"] == "Welcome to the archive").then_some(doc)
    })
    .await;
    assert_eq!(
        room_doc["crown"]["owner_user"],
        user_id.as_str(),
        "{room_doc}"
    );

    let stats_url = format!(
        "/api/users/{}/stats",
        piano_core::names::percent_encode(&user_id)
    );
    // Handed over by the room's timer (5 s after the last activity): no one leaves here.
    let deadline = std::time::Instant::now() + SETTLE;
    let stats = loop {
        let (status, st) = get_json(&s, &stats_url).await;
        if status == 200 && st["notes_played"] == 3 && st["chat_messages"] == 2 {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within {SETTLE:?}: the owner's stats; last answer {status} {st}\n{}",
            s.log_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (stats["joins"].as_u64(), stats["rooms"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    // Credited up to the hand-over that carried the notes.
    assert!(
        stats["played_ms"].as_u64().is_some_and(|ms| ms > 0),
        "time in the room: {stats}"
    );

    // Presence and the room index land in Redis, and the network endpoints read them.
    let present = eventually("both players present", SETTLE, || async {
        presence(&b, "edge-a", &room).await.filter(|p| p.len() == 2)
    })
    .await;
    assert!(present.contains(&user_id), "{present:?}");
    let (status, listed) = get_json(&s, "/api/network/rooms").await;
    assert_eq!(status, 200, "{listed}");
    let ours = listed["rooms"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["name"] == room.as_str()).cloned());
    assert!(
        ours.as_ref()
            .is_some_and(|r| r["deployment"] == "edge-a" && r["players"] == 2),
        "{listed}"
    );
    // Someone in a hidden room is online, but where is not said.
    let secret_room = unique("secret");
    let mut hider = s.player(&secret_room, "Hider").await;
    hider
        .send(cm::Msg::Join(proto::Join {
            password: String::new(),
            create_settings: Some(proto::UpdateSettings {
                visible: Some(false),
                ..Default::default()
            }),
        }))
        .await;
    hider
        .recv_matching(|m| matches!(m, Msg::Joined(_)).then_some(()))
        .await;
    let hider_id = hider.welcome.you.clone().unwrap().user_id;
    let online = eventually("both rooms' players online", SETTLE, || async {
        let (_, online) = get_json(&s, "/api/network/online").await;
        let users = online["online"].as_array()?.clone();
        let ours = users
            .iter()
            .any(|u| u["user_id"] == user_id.as_str() && u["room"] == room.as_str());
        let hidden = users
            .iter()
            .find(|u| u["user_id"] == hider_id.as_str())
            .cloned();
        (ours && hidden.is_some()).then_some(online)
    })
    .await;
    let hidden = online["online"]
        .as_array()
        .and_then(|o| {
            o.iter()
                .find(|u| u["user_id"] == hider_id.as_str())
                .cloned()
        })
        .unwrap_or_default();
    assert_eq!(hidden["room"], Value::Null, "{online}");
    assert!(!online.to_string().contains(&secret_room), "{online}");
    hider.close().await;

    // Leaving clears presence.
    guest.close().await;
    eventually("the guest's presence removed", SETTLE, || async {
        presence(&b, "edge-a", &room)
            .await
            .filter(|p| p == std::slice::from_ref(&user_id))
    })
    .await;

    // Logging out is shared: the session is listed as revoked in Redis.
    let login = post_json(
        &s,
        "/api/auth/login",
        None,
        json!({"username": name, "password": "correct horse"}),
    )
    .await
    .1;
    let sid = claims_of(login["access_token"].as_str().unwrap())["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = post_json(
        &s,
        "/api/auth/logout",
        None,
        json!({"refresh_token": login["refresh_token"]}),
    )
    .await;
    assert_eq!(status, 204);
    let revoked_key = b.keys.revoked(&sid);
    eventually("the revoked session in Redis", SETTLE, || async {
        let v = b
            .redis
            .as_ref()?
            .command(&cmd(["GET", &revoked_key]))
            .await
            .ok()?;
        (v == json!(user_id)).then_some(())
    })
    .await;

    // A second deployment sharing the database knows the member: log in there, and the name
    // cannot be registered again.
    let other = Server::start_edge_with(&stack.vars("edge-b"));
    let (status, there) = post_json(
        &other,
        "/api/auth/login",
        None,
        json!({"username": name, "password": "correct horse"}),
    )
    .await;
    assert_eq!(status, 200, "{there}");
    assert_eq!(there["user"]["name"], "Keeper of Keys");
    let (status, body) = post_json(
        &other,
        "/api/auth/register",
        None,
        json!({"username": name, "password": "another one"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("username_taken"))
    );
    let (_, wrong) = post_json(
        &other,
        "/api/auth/login",
        None,
        json!({"username": name, "password": "wrong password"}),
    )
    .await;
    assert_eq!(wrong["error"]["code"], "invalid_credentials");

    // The room, new to the second deployment, starts from its shared document: same settings,
    // and the crown goes back to its owner.
    owner.close().await;
    // Looking at the room first (its info) must not make it start from defaults.
    let (status, _) = get_json(&other, &format!("/api/rooms/{room}")).await;
    assert_eq!(status, 200);
    let access_b = there["access_token"].as_str().unwrap();
    let mut c = Client::connect(&format!("{}?token={access_b}", other.ws_url(&room)), &[])
        .await
        .expect("connect on the second deployment");
    let joined = c.join().await;
    let settings = joined.settings.clone().expect("settings");
    assert_eq!(settings.welcome_message, "Welcome to the archive");
    // The owner holds it on arrival, or gets it back just after (a crown that fell while
    // nobody was here returns to its owner).
    let mut crown = joined.ownership.clone().unwrap_or_default();
    let deadline = Instant::now() + SETTLE;
    while crown.owner_user_id != user_id && Instant::now() < deadline {
        if let Some(e2e_tests::Event::Msg(Msg::OwnerChanged(o))) =
            c.next_event(Duration::from_millis(300)).await
        {
            crown = o.ownership.unwrap_or_default();
        }
    }
    assert_eq!(crown.owner_user_id, user_id);
    assert!(
        joined.chat_history.is_empty(),
        "chat stays with the deployment that had it"
    );
}

/// Both databases die mid-session: the room keeps relaying notes and chat without waiting on
/// them; once they are back, every chat message and account change arrives exactly once.
pub async fn an_outage_of_both_backends_delays_writes_and_loses_none(_target: &Server) {
    let stack = stack();
    let b = stack.backends();
    let s = Server::start_edge_with(&stack.vars("edge-fault"));
    let name = unique("steady");
    let user_id = format!("user:{name}");
    let access = register(&s, &name).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let room = unique("outage");
    let mut owner = member(&s, &room, &access).await;
    let mut listener = s.player(&room, "Listener").await;
    listener.join().await;
    let mut sent: Vec<String> = Vec::new();
    owner.send(chat("before the outage")).await;
    sent.push("before the outage".into());
    eventually("the first message archived", SETTLE, || async {
        chat_texts(&b, "edge-fault", &room)
            .await
            .filter(|t| t.len() == 1)
    })
    .await;

    // The whole of each backend goes: the database and its HTTP gateway (which exits when its
    // database vanishes under it, like a managed endpoint that is down).
    for part in [Part::Mongo, Part::DataApi, Part::Redis, Part::RedisRest] {
        stack.kill_part(part);
    }
    eprintln!("fault: MongoDB and Redis (and their gateways) killed");

    // Keep playing and chatting: every batch and message is relayed as usual.
    let mut slowest = Duration::ZERO;
    for i in 0..12 {
        let started = Instant::now();
        owner.send(e2e_tests::note_on(60 + i, 90)).await;
        listener
            .recv_matching(|m| match m {
                Msg::Notes(n) => n.events.first().and_then(|e| match &e.kind {
                    Some(proto::note_event::Kind::NoteOn(on)) if on.note == 60 + i => Some(()),
                    _ => None,
                }),
                _ => None,
            })
            .await;
        slowest = slowest.max(started.elapsed());
        if i % 2 == 0 {
            let text = format!("during the outage {i}");
            owner.send(chat(&text)).await;
            listener
                .recv_matching(|m| matches!(m, Msg::Chat(c) if c.text == text).then_some(()))
                .await;
            sent.push(text);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("fault: slowest relay while both backends were down: {slowest:?}");
    // Settings changed again and again: the queue keeps the last (older writes of the same
    // fields are superseded), so a long outage does not pile up a row per change.
    for n in 0..6 {
        let change = proto::UpdateSettings {
            welcome_message: Some(format!("take {n}")),
            ..Default::default()
        };
        owner.send(cm::Msg::UpdateSettings(change)).await;
        owner
            .recv_matching(|m| matches!(m, Msg::SettingsChanged(_)).then_some(()))
            .await;
    }
    let admin = s.sign(&{
        let mut c = s.claims("user:root-admin", "Root");
        c.roles = vec!["admin".into()];
        c
    });
    let resp = crate::http()
        .get(s.http(&format!("/api/admin/rooms/{room}/outbox")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let queued: Value = resp.json().await.unwrap();
    let pending = queued["pending"].as_u64().unwrap_or(0);
    eprintln!("fault: the room's outbox during the outage: {queued}");
    // 6 chat messages, 1 settings write, at most one stats row per player, the crown.
    assert!((6..=10).contains(&pending), "{queued}");
    // Account changes during the outage: a profile edit and a new registration.
    let (status, _) = put_me(&s, &access, json!({"name": "Through The Storm"})).await;
    assert_eq!(status, 200);
    // A registration cannot check the shared accounts now: refused, not guessed (it could
    // take a name another deployment gave out).
    let newcomer = unique("newcomer");
    let resp = crate::http()
        .post(s.http("/api/auth/register"))
        .json(&json!({"username": newcomer, "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    // Someone leaves while Redis is down.
    listener.close().await;
    // The status says so (`/api/status`, public): MongoDB's writes wait in the room's outbox.
    let degraded = eventually(
        "/api/status shows MongoDB degraded",
        Duration::from_secs(60),
        || async {
            status_of(&s)
                .await
                .filter(|v| v["mongodb"]["state"] == "degraded")
        },
    )
    .await;
    assert_eq!(degraded["state"], "degraded", "{degraded}");
    assert!(
        degraded["mongodb"]["outbox"]["depth"].as_u64() >= Some(1),
        "{degraded}"
    );

    for part in [Part::Mongo, Part::Redis, Part::DataApi, Part::RedisRest] {
        stack.start_part(part);
    }
    let restarted = Instant::now();
    eprintln!("fault: MongoDB and Redis restarted");

    // If delivery stalls, say where: the room's outbox and the backends' logs.
    let deadline = Instant::now() + Duration::from_secs(90);
    while chat_texts(&b, "edge-fault", &room)
        .await
        .is_none_or(|t| t.len() < sent.len())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if Instant::now() >= deadline {
        let status = crate::http()
            .get(s.http(&format!("/api/admin/rooms/{room}/outbox")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default();
        panic!(
            "chat not archived 90 s after the restart; outbox {status}\n--- mongo\n{}\n--- data api\n{}\n--- edge\n{}",
            stack.log_tail(Part::Mongo),
            stack.log_tail(Part::DataApi),
            s.log_tail(30)
        );
    }
    let texts = eventually(
        "every chat message archived",
        Duration::from_secs(120),
        || async {
            chat_texts(&b, "edge-fault", &room)
                .await
                .filter(|t| t.len() >= sent.len())
        },
    )
    .await;
    assert_eq!(texts, sent, "each message exactly once, in order");
    eventually("the profile edit", Duration::from_secs(120), || async {
        account_doc(&b, &user_id)
            .await
            .filter(|d| d["name"] == "Through The Storm")
    })
    .await;
    eventually(
        "a registration refused during the outage, accepted after",
        Duration::from_secs(120),
        || async {
            let (status, _) = post_json(
                &s,
                "/api/auth/register",
                None,
                json!({"username": newcomer, "password": "correct horse"}),
            )
            .await;
            if status != 201 && status != 409 {
                return None;
            }
            account_doc(&b, &format!("user:{newcomer}")).await
        },
    )
    .await;
    eventually(
        "presence without the listener",
        Duration::from_secs(120),
        || async {
            presence(&b, "edge-fault", &room)
                .await
                .filter(|p| p == std::slice::from_ref(&user_id))
        },
    )
    .await;
    eprintln!(
        "fault: everything delivered {:.1}s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    let room_doc = eventually("the last settings", Duration::from_secs(60), || async {
        b.mongo
            .as_ref()?
            .find_one(piano_backends::layout::ROOMS, json!({"_id": room}))
            .await
            .ok()?
            .filter(|d| d["settings"]["welcome_message"] == "take 5")
    })
    .await;
    assert_eq!(room_doc["settings"]["welcome_message"], "take 5");
    // Exactly once: nothing duplicated by the retries.
    let docs = b
        .mongo
        .as_ref()
        .unwrap()
        .find(
            piano_backends::layout::CHAT,
            json!({"room": room}),
            FindOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(docs.len(), sent.len());
    // And nothing was set aside or left behind.
    let queued = eventually(
        "the room's outbox empty",
        Duration::from_secs(60),
        || async {
            let v: Value = crate::http()
                .get(s.http(&format!("/api/admin/rooms/{room}/outbox")))
                .bearer_auth(&admin)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["pending"] == 0).then_some(v)
        },
    )
    .await;
    // And the status is back to up (it is cached for a few seconds).
    eventually(
        "/api/status shows the backends up again",
        Duration::from_secs(60),
        || async {
            status_of(&s)
                .await
                .filter(|v| v["mongodb"]["state"] == "up" && v["redis"]["state"] == "up")
        },
    )
    .await;
    assert_eq!(queued["dead"], 0, "{queued}");
    owner.close().await;
}

/// Players whose sockets vanished with a restart (a deploy) are taken out of the shared presence
/// when the room is next loaded.
pub async fn presence_of_players_lost_in_a_restart_is_cleared(_target: &Server) {
    let stack = stack();
    let b = stack.backends();
    let s = Server::start_edge_with(&stack.vars("edge-restart"));
    let room = unique("redeploy");
    let mut before = s.player(&room, "Before").await;
    before.join().await;
    let first = eventually("the first player present", SETTLE, || async {
        presence(&b, "edge-restart", &room)
            .await
            .filter(|p| p.len() == 1)
    })
    .await;
    s.restart();
    let mut after = s.player(&room, "After").await;
    after.join().await;
    let now_present = eventually("only the second player present", SETTLE, || async {
        presence(&b, "edge-restart", &room)
            .await
            .filter(|p| p.len() == 1 && p[0] != first[0])
    })
    .await;
    assert_eq!(now_present.len(), 1);
    drop(before);
}
