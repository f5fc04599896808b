//! MongoDB natively (the official driver) against a real MongoDB-compatible server
//! (`secantusdb`): room changes land in the shared layout (`piano_backends::layout`), and a
//! fresh deployment whose room store has never seen a room restores it from MongoDB.

mod common;

use common::*;
use mongodb::bson::{Document, doc};
use piano_core::proto::{self, client_message as cm, server_message::Msg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_mirrored_to_mongodb_and_restored_from_it() {
    let dir = scratch_dir("mongo");
    let mongo = MongoServer::start(&dir.join("db"));
    let database = format!("piano{}", e2e_tests::now_ms());
    let env = |data: &str| {
        vec![
            ("DATA_DIR", dir.join(data).display().to_string()),
            ("MONGODB_URL", mongo.url()),
            ("MONGODB_DATABASE", database.clone()),
            ("DEPLOYMENT_ID", "k8s".to_owned()),
            ("JWT_PRIVATE_KEY", e2e_tests::random_key_pem()),
        ]
    };
    let env_a = env("a");
    let mut a = Replica::start("mongo-a", &env_a);
    let room = format!("mirrored-{}", e2e_tests::now_ms());
    let (token, user) = guest(&a, "Owner").await;
    let mut owner = Player::connect(&a.ws_url(&room, &token))
        .await
        .expect("connect");
    owner
        .join(Some(proto::UpdateSettings {
            max_players: Some(11),
            color: Some("#102030".into()),
            ..Default::default()
        }))
        .await
        .expect("create");
    for text in ["first", "second", "third"] {
        owner.send(chat(text)).await;
        sees_chat(&mut owner, text).await;
    }
    // The owner deletes "second": the archive marks it, and it is not history any more.
    let second = 2;
    owner
        .send(cm::Msg::DeleteChat(proto::DeleteChat { id: second }))
        .await;
    owner
        .expect("chat deleted", |m| match m {
            Msg::ChatDeleted(d) if d.id == second => Some(()),
            _ => None,
        })
        .await;

    // What the edge's layout says must be in MongoDB.
    let client = mongodb::Client::with_uri_str(mongo.url())
        .await
        .expect("mongo client");
    let db = client.database(&database);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (room_doc, chats) = loop {
        let room_doc = db
            .collection::<Document>("rooms")
            .find_one(doc! { "_id": &room })
            .await
            .expect("find room");
        let mut cursor = db
            .collection::<Document>("chat")
            .find(doc! { "room": &room })
            .sort(doc! { "id": 1 })
            .await
            .expect("find chat");
        let mut chats = Vec::new();
        while cursor.advance().await.expect("cursor") {
            chats.push(cursor.deserialize_current().expect("chat doc"));
        }
        let done = chats.len() == 3 && chats.iter().any(|c| c.contains_key("deleted_at"));
        if let Some(room_doc) = room_doc.clone().filter(|_| done) {
            break (room_doc, chats);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "MongoDB never got the room: {room_doc:?} {chats:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let settings = room_doc.get_document("settings").expect("settings");
    assert_eq!(settings.get_str("color"), Ok("#102030"));
    assert_eq!(room_doc.get_str("kind"), Ok("normal"));
    let ids: Vec<String> = chats
        .iter()
        .filter_map(|c| c.get_str("_id").ok().map(str::to_owned))
        .collect();
    assert_eq!(
        ids,
        [1, 2, 3].map(|i| format!("k8s/{room}/{i}")),
        "chat ids as the layout names them"
    );
    assert_eq!(chats[1].get_str("text"), Ok("second"));
    assert!(chats[1].contains_key("deleted_at"));

    owner.close().await;
    a.terminate();

    // The players' activity went to user_stats (flushed when the room stopped).
    let stats_of = |db: mongodb::Database, id: String| async move {
        db.collection::<Document>("user_stats")
            .find_one(doc! { "_id": id })
            .await
            .expect("find stats")
            .unwrap_or_default()
    };
    let stats_id = format!("k8s/{room}/{user}");
    let stats = stats_of(db.clone(), stats_id.clone()).await;
    assert_eq!(stats.get_i64("chat_messages").ok(), Some(3), "{stats}");
    assert_eq!(stats.get_i64("joins").ok(), Some(1), "{stats}");
    assert!(
        stats.get_i64("played_ms").is_ok_and(|ms| ms > 0),
        "time in the room: {stats}"
    );

    // A new deployment of the fallback (empty room store), same MongoDB and deployment id: the
    // room comes back from MongoDB, minus the deleted message, and its owner gets the crown.
    let mut env_b = env("b");
    env_b.retain(|(k, _)| *k != "JWT_PRIVATE_KEY");
    env_b.push((
        "JWT_PRIVATE_KEY",
        env_a
            .iter()
            .find(|(k, _)| *k == "JWT_PRIVATE_KEY")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
    ));
    let b = Replica::start("mongo-b", &env_b);
    // GET /api/users/{id}/stats sums the user's documents (the edge's aggregation).
    let totals = get_json(&b.http(&format!(
        "/api/users/{}/stats",
        piano_core::names::percent_encode(&user)
    )))
    .await;
    assert_eq!(totals["chat_messages"], 3, "{totals}");
    assert_eq!(totals["rooms"], 1, "{totals}");
    let mut owner = Player::connect(&b.ws_url(&room, &token))
        .await
        .expect("connect");
    let joined = owner.join(None).await.expect("join");
    let s = joined.settings.expect("settings");
    assert_eq!((s.max_players, s.color.as_str()), (11, "#102030"));
    let history: Vec<&str> = joined
        .chat_history
        .iter()
        .map(|c| c.text.as_str())
        .collect();
    assert_eq!(history, ["first", "third"]);
    assert_eq!(joined.ownership.map(|o| o.owner_user_id), Some(user));
    // New messages continue the ids (never reusing one).
    owner.send(chat("fourth")).await;
    let id = owner
        .expect("chat", |m| match m {
            Msg::Chat(c) if c.text == "fourth" => Some(c.id),
            _ => None,
        })
        .await;
    assert_eq!(id, 4);
    owner.close().await;
    let mut b = b;
    b.terminate();
    // Totals continue from what MongoDB had (another process added to them).
    let stats = stats_of(db.clone(), stats_id).await;
    assert_eq!(stats.get_i64("chat_messages").ok(), Some(4), "{stats}");
    assert_eq!(stats.get_i64("joins").ok(), Some(2), "{stats}");
}
