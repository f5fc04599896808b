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

pub async fn mongo_client_speaks_the_data_api() {
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

    // A duplicate key is the op's fault: permanent.
    let e = mongo
        .insert_one(&coll, json!({"_id": "b"}))
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

pub async fn redis_client_speaks_the_upstash_protocol() {
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

pub async fn clients_time_out_and_report_unreachable_services() {
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

pub async fn outbox_ops_are_idempotent() {
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
        .command(&cmd(["HKEYS", &keys.presence("r")]))
        .await
        .unwrap();
    assert_eq!(members, json!(["user:idem"]));
}
