//! Behaviour the two hosts used to disagree on (issue 14's drifts), now decided once in
//! `piano_core::account`: each trial runs on the edge and the fallback with the same assertions.
//!
//! The trials that need MongoDB (and its outage) or a short session lifetime use a rig of
//! their host: a backend stack on loopback (`stack::Stack`: secantusdb behind a Data API
//! gateway) and a server of that host pointed at it (the edge through the Data API, the
//! fallback through the driver), with `REFRESH_TOKEN_TTL_SECS` at [`RIG_SESSION_TTL_SECS`].
//! Those run on the edge and the standalone fallback: a rig is one server of its own, and the
//! cluster's replicas run the same account code. Trials take turns on a rig (one outage at a
//! time); [`stop_rigs`] stops them at the end of the run.

use crate::*;
use e2e_tests::rigs::Rigs;
use e2e_tests::stack::{Part, Stack};
use std::time::{Duration, Instant};

/// `piano_core::account::lookup::LOOKUP_BACKOFF_MS`, in the `Retry-After` of a refusal.
const LOOKUP_BACKOFF_SECS: &str = "5";
/// The rigs' session lifetime: short enough for a trial to watch a session expire, long
/// enough for the other rig trials, which never refresh, to be unaffected.
const RIG_SESSION_TTL_SECS: u64 = 3;

struct Rig {
    stack: Stack,
    server: Server,
    /// The fallback's way to MongoDB (the edge's goes through the stack's Data API gateway).
    link: Option<Link>,
}

/// The edge's rig and the fallback's; one trial at a time on each (they take MongoDB down).
static RIGS: Rigs<Rig> = Rigs::new();

/// Runs `trial` with the rig of `target`'s host to itself.
async fn with_rig<F: std::future::Future<Output = ()>>(
    target: &Server,
    trial: impl FnOnce(&'static Rig) -> F,
) {
    RIGS.with(target.host, start_rig, trial).await;
}

/// Stops the rigs that were started (at the end of the run).
pub fn stop_rigs() {
    for rig in RIGS.started() {
        rig.server.shutdown();
        rig.stack.stop_all();
    }
}

/// The account database out of the server's reach until dropped (also when the trial fails,
/// so the next one finds it back). MongoDB itself keeps running: a SIGKILL while it creates a
/// table has left its storage unable to start again. At the edge the Data API gateway (no
/// state) goes down; the fallback's [`Link`] is cut.
struct Outage<'a>(&'a Rig);

impl<'a> Outage<'a> {
    fn begin(rig: &'a Rig) -> Outage<'a> {
        match &rig.link {
            Some(link) => link.set_up(false),
            None => rig.stack.kill_part(Part::DataApi),
        }
        Outage(rig)
    }
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        match &self.0.link {
            Some(link) => link.set_up(true),
            None => self.0.stack.start_part(Part::DataApi),
        }
    }
}

/// A loopback TCP path to MongoDB that can be cut: open connections are dropped and new ones
/// closed at once, as when the database is unreachable, until it is restored.
struct Link {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Link {
    fn start(target: u16) -> Link {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind link");
        let port = listener.local_addr().expect("link address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let (up, watch) = tokio::sync::watch::channel(true);
        // Lives as long as the test process, on a runtime of its own (each trial has its own).
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("link runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let mut watch = watch.clone();
                    if !*watch.borrow() {
                        continue; // dropped: closed at once
                    }
                    tokio::spawn(async move {
                        let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = watch.wait_for(|up| !*up) => {}
                        }
                    });
                }
            });
        });
        Link { port, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

fn start_rig(host: Host) -> Rig {
    let stack = Stack::start();
    let ttl = (
        "REFRESH_TOKEN_TTL_SECS".to_owned(),
        RIG_SESSION_TTL_SECS.to_string(),
    );
    let link = (host != Host::Edge).then(|| Link::start(stack.port(Part::Mongo)));
    let server = match &link {
        None => {
            let mut vars = stack.vars("drifts");
            vars.push(ttl);
            Server::start_edge_with(&vars)
        }
        Some(link) => {
            let vars = vec![
                (
                    "MONGODB_URL".to_owned(),
                    // Only through the link: not to an address the server reports.
                    format!("mongodb://127.0.0.1:{}/?directConnection=true", link.port),
                ),
                ("MONGODB_DATABASE".to_owned(), "pianotest".to_owned()),
                ("DEPLOYMENT_ID".to_owned(), "drifts".to_owned()),
                ttl,
            ];
            let bin = std::path::Path::new(env!("CARGO_BIN_EXE_piano-fallback"));
            Server::start_fallback_binary(bin, &vars)
        }
    };
    Rig {
        stack,
        server,
        link,
    }
}

async fn register(s: &Server, name: &str) -> (u16, Option<String>, serde_json::Value) {
    s.post_json_retry_after(
        "/api/auth/register",
        serde_json::json!({"username": name, "password": "correct horse"}),
    )
    .await
}

/// Registers `user`, waiting out `unavailable` while the server finds MongoDB again after an
/// outage (the only refusal allowed meanwhile); the registration's answer.
async fn register_once_up(s: &Server, user: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, _, body) = register(s, user).await;
        if status == 201 {
            return body;
        }
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("unavailable")),
            "only 'unavailable' until MongoDB answers: {body}"
        );
        assert!(
            Instant::now() < deadline,
            "still refused after MongoDB came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Drifts 1 and 7: while the shared account database cannot be reached, a registration is
/// refused on both hosts (uniqueness cannot be checked), with one code, `unavailable`; once
/// it is back, the same registration succeeds.
pub async fn registration_is_refused_while_the_account_database_is_unreachable(target: &Server) {
    with_rig(target, |rig| async move {
        let s = &rig.server;
        let user = unique("dr-reg");
        let outage = Outage::begin(rig);
        let (status, _, body) = register(s, &user).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        // Nothing was registered locally meanwhile: the name is still free once MongoDB is back.
        drop(outage);
        register_once_up(s, &user).await;
    })
    .await;
}

/// Drift 2: after a failed lookup both hosts wait the same back-off before asking again, and
/// say so (`Retry-After`); a client that waits that long gets through once MongoDB is back.
pub async fn account_lookups_back_off_for_one_interval_on_both_hosts(target: &Server) {
    with_rig(target, |rig| async move {
        let s = &rig.server;
        let user = unique("dr-back");
        let outage = Outage::begin(rig);
        for path in ["/api/auth/register", "/api/auth/login"] {
            let (status, retry_after, body) = s
                .post_json_retry_after(
                    path,
                    serde_json::json!({"username": user, "password": "correct horse"}),
                )
                .await;
            assert_eq!(status, 503, "{path}: {body}");
            assert_eq!(
                retry_after.as_deref(),
                Some(LOOKUP_BACKOFF_SECS),
                "{path}: {body}"
            );
        }
        drop(outage);
        for attempt in 0.. {
            let (status, retry_after, body) = register(s, &user).await;
            if status == 201 {
                break;
            }
            assert_eq!(retry_after.as_deref(), Some(LOOKUP_BACKOFF_SECS), "{body}");
            assert!(
                attempt < 15,
                "refused after {attempt} waits of Retry-After: {body}"
            );
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
}

/// Drift 3: an account document found in MongoDB is imported only if its username is the one
/// it is stored under; a document naming another user signs nobody in.
pub async fn an_imported_account_must_be_the_user_its_key_names(target: &Server) {
    use piano_core::account::AccountData;
    use piano_core::password::PasswordHash;
    with_rig(target, |rig| async move {
        let s = &rig.server;
        let backends = rig.stack.backends();
        let mongo = backends.mongo.as_ref().expect("the stack has MongoDB");
        let (stray, owner, good) = (unique("dr-stray"), unique("dr-owner"), unique("dr-good"));
        let doc = |id: &str, username: &str| {
            let hash = PasswordHash::with_iterations("correct horse", vec![7; 16], 1000);
            let mut doc =
                AccountData::new(username, None, hash, false, [1, 2, 3], now_ms()).document();
            doc["_id"] = format!("user:{id}").into();
            doc
        };
        // Stored under `stray` but naming `owner`; and one in order, named in capitals.
        for (id, username) in [(&stray, &owner), (&good, &good.to_uppercase())] {
            mongo
                .insert_one(piano_backends::layout::ACCOUNTS, doc(id, username))
                .await
                .expect("insert an account document");
        }
        let login = |user: String| {
            s.post_json_retry_after(
                "/api/auth/login",
                serde_json::json!({"username": user, "password": "correct horse"}),
            )
        };
        let (status, _, body) = login(stray.clone()).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "invalid_credentials");
        let (status, _, body) = login(owner.clone()).await;
        assert_eq!(
            status, 401,
            "the document is not stored under {owner}: {body}"
        );
        let (status, _, body) = login(good.clone()).await;
        assert_eq!(
            status, 200,
            "a document of its own user is imported: {body}"
        );
        assert_eq!(body["user"]["id"], format!("user:{good}"));
    })
    .await;
}

/// Drift 4: one refresh-token parser with capped parts. Whatever is not a token the server
/// issued is `invalid_session` for refresh and for logout alike (the edge used to take an
/// unparseable logout token for "no token" and answer `unauthorized`); the real one still works.
pub async fn refresh_tokens_are_parsed_alike_with_capped_parts(s: &Server) {
    let user = unique("dr-tok");
    let (status, _, reg) = register(s, &user).await;
    assert_eq!(status, 201, "{reg}");
    let token = reg["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let mut parts = token.splitn(3, '.');
    let (u, sid, secret) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let long = "a".repeat(65);
    let bad = [
        format!("{long}.{sid}.{secret}"),
        format!("{u}.{long}.{secret}"),
        format!("{u}.{sid}.{}", "f".repeat(129)),
        format!("{}.{sid}.{secret}", u.to_uppercase()),
        format!("{u}.{sid}"),
        format!("{u}..{secret}"),
        format!("{u}.{sid}.{secret}.x"),
        String::new(),
    ];
    for t in &bad {
        for path in ["/api/auth/refresh", "/api/auth/logout"] {
            let (status, _, body) = s
                .post_json_retry_after(path, serde_json::json!({"refresh_token": t}))
                .await;
            assert_eq!(status, 401, "{path} {t:?}: {body}");
            assert_eq!(
                body["error"]["code"], "invalid_session",
                "{path} {t:?}: {body}"
            );
        }
    }
    let (status, _, body) = s
        .post_json_retry_after(
            "/api/auth/refresh",
            serde_json::json!({"refresh_token": token}),
        )
        .await;
    assert_eq!(status, 200, "the issued token still refreshes: {body}");
}

/// Drift 6: a session that outlived `REFRESH_TOKEN_TTL_SECS` is refused as ended, and the
/// member's next login forgets it (the Account object used to keep it forever): its refresh
/// token then names no session at all.
pub async fn an_expired_session_is_forgotten_at_the_next_login(target: &Server) {
    with_rig(target, |rig| async move {
        let s = &rig.server;
        let user = unique("dr-exp");
        let reg = register_once_up(s, &user).await;
        let token = reg["refresh_token"]
            .as_str()
            .expect("refresh token")
            .to_owned();
        let refresh = || {
            s.post_json_retry_after(
                "/api/auth/refresh",
                serde_json::json!({"refresh_token": token}),
            )
        };
        tokio::time::sleep(Duration::from_secs(RIG_SESSION_TTL_SECS + 1)).await;
        let (status, _, body) = refresh().await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "invalid_session", "{body}");
        assert_eq!(
            body["error"]["message"], "the session has ended: log in again",
            "expired, still stored: {body}"
        );
        let (status, _, body) = s
            .post_json_retry_after(
                "/api/auth/login",
                serde_json::json!({"username": user, "password": "correct horse"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, _, body) = refresh().await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            body["error"]["message"], "refresh token is not valid",
            "the login forgot the expired session: {body}"
        );
    })
    .await;
}

/// Drift 5: of one action's changes only each field's final state reaches MongoDB, on both
/// hosts (`piano_core::outbox::final_changes`). Dropping the crown passes through an
/// intermediate state, ownerless and remembering nobody, that other deployments must never
/// read: the database's own record of writes (secantusdb's oplog, as a replica set keeps it)
/// shows every crown the room's document ever held, and that one is not among them. Two rules
/// keep it out, both the core's: `final_changes` per action, and a queued row superseded by a
/// newer one of the same field (`layout::supersede_key`); with both disabled this trial fails
/// (tried on the fallback), with either alone it passes.
pub async fn only_final_states_reach_mongodb(target: &Server) {
    use piano_core::proto::client_message::Msg as Cm;
    use piano_core::proto::server_message::Msg as Sm;
    with_rig(target, |rig| async move {
        let s = &rig.server;
        let room = unique("dr-crown");
        let mut owner = s.player_as(&room, "user:dr-owner", &["member"]).await;
        owner.join().await;
        // A second player keeps the room from emptying (and being discarded).
        let mut other = s.player(&room, "Other").await;
        other.join().await;
        let backends = rig.stack.backends();
        let mongo = backends.mongo.as_ref().expect("the stack has MongoDB");
        let crown_now = || async {
            let doc = mongo
                .find_one(
                    piano_backends::layout::ROOMS,
                    serde_json::json!({ "_id": room }),
                )
                .await
                .expect("read the room document");
            doc.map(|d| d["crown"].clone()).unwrap_or_default()
        };
        let within = Duration::from_secs(20);
        eventually("the crown's owner reaches MongoDB", within, || async {
            (crown_now().await["owner_user"] == "user:dr-owner").then_some(())
        })
        .await;
        owner
            .send(Cm::DropOwnership(piano_core::proto::DropOwnership {}))
            .await;
        owner
            .recv_matching(|m| matches!(m, Sm::OwnerChanged(_)).then_some(()))
            .await;
        eventually("the dropped crown reaches MongoDB", within, || async {
            (crown_now().await["previous_user"] == "user:dr-owner").then_some(())
        })
        .await;

        let mut oplog = mongo.config().clone();
        let namespace = format!("{}.{}", oplog.database, piano_backends::layout::ROOMS);
        oplog.database = "local".into();
        let entries = piano_backends::mongo::DataApi::new(oplog)
            .find(
                "oplog.rs",
                serde_json::json!({ "ns": namespace, "o2._id": room }),
                Default::default(),
            )
            .await
            .expect("read the oplog");
        let crowns: Vec<&serde_json::Value> = entries
            .iter()
            .filter_map(|e| match e["op"].as_str() {
                Some("i") => e["o"].get("crown"),
                // secantusdb's diff; MongoDB 5+ writes `diff.u`; older ones `$set`.
                Some("u") => e["o"]["diff"]["updatedFields"]
                    .get("crown")
                    .or_else(|| e["o"]["diff"]["u"].get("crown"))
                    .or_else(|| e["o"]["$set"].get("crown")),
                _ => None,
            })
            .collect();
        assert!(
            crowns
                .iter()
                .all(|c| !c["owner_user"].is_null() || !c["previous_user"].is_null()),
            "an intermediate crown reached MongoDB: {crowns:#?}"
        );
        // One write for the drop (a redelivery of the same write, which the outbox may make
        // after a lost answer, repeats the same crown and is not a second state).
        let mut states = crowns.clone();
        states.dedup();
        let dropped = states.iter().filter(|c| c["owner_user"].is_null()).count();
        assert_eq!(dropped, 1, "the drop is one write: {crowns:#?}");
        owner.close().await;
        other.close().await;
    })
    .await;
}
