//! The fallback's durable outbox on the real stack (secantusdb through the official driver,
//! real Redis in cluster mode): a replica killed with `kill -9` right after a registration and
//! a room change loses neither from MongoDB once a process starts again on its `DATA_DIR`
//! (standalone: the replica restarted; cluster: another replica, started while a third one
//! holds an outbox file of its own on the same volume).
//!
//! So that the trial proves the rows survived (rather than racing the kill), MongoDB is
//! reached through a gate that passes reads and drops writes until told otherwise: the
//! registration's uniqueness lookup and the room's restore read work, the writes stay queued.

mod common;

use common::*;
use mongodb::bson::{Document, doc};
use piano_core::proto::{self, client_message as cm, server_message::Msg};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of MongoDB that, while `closed`, ends any connection that sends a
/// write command (the driver sees a network error: a transient failure, retried later).
struct WriteGate {
    port: u16,
    closed: Arc<AtomicBool>,
}

/// Wire-protocol commands that change data.
const WRITES: [&str; 4] = ["insert", "update", "delete", "findAndModify"];

impl WriteGate {
    async fn start(upstream: u16) -> WriteGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let port = listener.local_addr().expect("gate addr").port();
        let closed = Arc::new(AtomicBool::new(false));
        let gate = closed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let gate = gate.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    });
                    // Client to server, one message at a time, each looked at.
                    loop {
                        let mut header = [0u8; 16];
                        if cr.read_exact(&mut header).await.is_err() {
                            break;
                        }
                        let len = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
                        let Some(rest) = usize::try_from(len)
                            .ok()
                            .and_then(|l| l.checked_sub(16))
                            .filter(|&l| l <= 48 << 20)
                        else {
                            break;
                        };
                        let mut body = vec![0u8; rest];
                        if cr.read_exact(&mut body).await.is_err() {
                            break;
                        }
                        if gate.load(Ordering::SeqCst)
                            && command(&header, &body).is_some_and(|c| WRITES.contains(&c))
                        {
                            break;
                        }
                        if sw.write_all(&header).await.is_err()
                            || sw.write_all(&body).await.is_err()
                        {
                            break;
                        }
                    }
                    back.abort();
                });
            }
        });
        WriteGate { port, closed }
    }

    fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    fn drop_writes(&self, on: bool) {
        self.closed.store(on, Ordering::SeqCst);
    }
}

/// The command an `OP_MSG` carries: the first key of its body section.
fn command<'a>(header: &[u8; 16], body: &'a [u8]) -> Option<&'a str> {
    const OP_MSG: i32 = 2013;
    let op = i32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    // flagBits (4), section kind 0 (1), document length (4), element type (1), then the name.
    if op != OP_MSG || body.get(4) != Some(&0) {
        return None;
    }
    let name = body.get(10..)?;
    let end = name.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&name[..end]).ok()
}

async fn find(db: &mongodb::Database, collection: &str, filter: Document) -> Option<Document> {
    db.collection::<Document>(collection)
        .find_one(filter)
        .await
        .expect("find")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_standalone_replica_loses_no_mongodb_write() {
    killed_replica_loses_nothing(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_replica_loses_no_mongodb_write() {
    let redis = Redis::start();
    killed_replica_loses_nothing(Some(&redis)).await;
}

async fn killed_replica_loses_nothing(redis: Option<&Redis>) {
    let dir = scratch_dir("outbox-crash");
    let mongo = MongoServer::start(&dir.join("db"));
    let gate = WriteGate::start(mongo.port).await;
    let database = format!("crash{}", e2e_tests::now_ms());
    let mut env = vec![
        ("DATA_DIR", dir.join("replica").display().to_string()),
        ("MONGODB_URL", gate.url()),
        ("MONGODB_DATABASE", database.clone()),
        ("DEPLOYMENT_ID", "k8s".to_owned()),
        ("JWT_PRIVATE_KEY", e2e_tests::random_key_pem()),
    ];
    if let Some(r) = redis {
        env.push(("REDIS_URL", r.url()));
    }
    let mut a = Replica::start("crash-a", &env);
    // Cluster mode: a second replica on the same volume, alive throughout, with its own file.
    let _bystander = redis.map(|_| Replica::start("crash-bystander", &env));
    let db = mongodb::Client::with_uri_str(mongo.url())
        .await
        .expect("mongo client")
        .database(&database);

    // The room exists before the outage (its start reads MongoDB, which may take a while
    // once writes have failed).
    let room = format!("crash-{}", e2e_tests::now_ms());
    let (token, _) = guest(&a, "Owner").await;
    let mut owner = Player::connect(&a.ws_url(&room, &token))
        .await
        .expect("connect");
    owner
        .join(Some(proto::UpdateSettings {
            color: Some("#aa0000".into()),
            ..Default::default()
        }))
        .await
        .expect("create");
    // From here MongoDB answers reads and drops writes.
    gate.drop_writes(true);
    let member = format!("crash{}", e2e_tests::now_ms() % 1_000_000_000);
    let resp = reqwest::Client::new()
        .post(a.http("/api/auth/register"))
        .json(&serde_json::json!({ "username": member, "password": "survive a kill -9" }))
        .send()
        .await
        .expect("POST register");
    assert_eq!(resp.status().as_u16(), 201, "registered");

    owner.send(chat("kept")).await;
    sees_chat(&mut owner, "kept").await;
    owner
        .send(cm::Msg::UpdateSettings(proto::UpdateSettings {
            color: Some("#00ff00".into()),
            ..Default::default()
        }))
        .await;
    owner
        .expect("settings", |m| match m {
            Msg::SettingsChanged(s) => s
                .settings
                .as_ref()
                .filter(|s| s.color == "#00ff00")
                .map(|_| ()),
            _ => None,
        })
        .await;
    // `/api/status` says MongoDB is behind once the oldest waiting write is a few seconds old
    // (`piano_core::status::DEGRADED_AFTER_SECS`), and the metrics show the backlog.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = get_json(&a.http("/api/status")).await;
        if status["mongodb"]["state"] == "degraded" {
            break status;
        }
        assert!(Instant::now() < deadline, "never degraded: {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status["state"], "degraded", "{status}");
    assert!(
        status["mongodb"]["outbox"]["depth"].as_u64() >= Some(1),
        "{status}"
    );
    // The change is seen: kill -9, no drain.
    a.kill();
    drop(owner);

    // None of it reached MongoDB before the kill (the trial would prove nothing otherwise).
    let account_id = format!("user:{member}");
    assert_eq!(
        find(&db, "accounts", doc! { "_id": &account_id }).await,
        None
    );
    assert_eq!(
        find(&db, "chat", doc! { "_id": format!("k8s/{room}/1") }).await,
        None
    );
    let before = find(&db, "rooms", doc! { "_id": &room }).await;
    assert_ne!(
        before
            .as_ref()
            .and_then(|d| d.get_document("settings").ok())
            .and_then(|s| s.get_str("color").ok()),
        Some("#00ff00"),
        "{before:?}"
    );

    // MongoDB takes writes again; a process starts on the dead one's DATA_DIR.
    gate.drop_writes(false);
    let b = Replica::start("crash-b", &env);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let account = find(&db, "accounts", doc! { "_id": &account_id }).await;
        let room_doc = find(&db, "rooms", doc! { "_id": &room }).await;
        let chat = find(&db, "chat", doc! { "_id": format!("k8s/{room}/1") }).await;
        let color = room_doc
            .as_ref()
            .and_then(|d| d.get_document("settings").ok())
            .and_then(|s| s.get_str("color").ok());
        if let (Some(account), Some("#00ff00"), Some(chat)) = (&account, color, &chat) {
            assert_eq!(account.get_str("username"), Ok(member.as_str()));
            assert_eq!(chat.get_str("text"), Ok("kept"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "MongoDB never got the dead replica's writes: {account:?} {room_doc:?} {chat:?}\n{}",
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Delivered: the status is up again (after its few seconds of cache).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = get_json(&b.http("/api/status")).await;
        if status["mongodb"]["state"] == "up" {
            break;
        }
        assert!(Instant::now() < deadline, "never up again: {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
