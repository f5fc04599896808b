//! Members' totals in a real `redis-server` (`k8s_fallback::user_stats`): each deployment keeps
//! its own under `REDIS_KEY_PREFIX`, and `last_seen` never moves backwards when replicas' hand-
//! overs land out of order.

mod common;

use common::Redis;
use k8s_fallback::redis_handle::RedisHandle;
use k8s_fallback::user_stats::{redis_add, redis_get, redis_key_base};
use piano_core::room::StatsDelta;
use std::time::Duration;

fn delta(notes: u64, last_seen: u64) -> StatsDelta {
    StatsDelta {
        notes,
        last_seen,
        ..StatsDelta::default()
    }
}

#[tokio::test]
async fn totals_are_per_deployment_and_last_seen_only_rises() {
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).expect("redis url");
    let conn = RedisHandle::connect(client, Duration::from_secs(2))
        .await
        .expect("redis");
    let a = redis_key_base("pr:", "alpha");
    let b = redis_key_base("pr:", "beta");
    let user = "user:ada".to_string();
    redis_add(&conn, &a, vec![(user.clone(), delta(3, 2_000))]).await;
    // An older hand-over from another replica lands last.
    redis_add(&conn, &a, vec![(user.clone(), delta(2, 1_000))]).await;
    redis_add(&conn, &b, vec![(user.clone(), delta(7, 500))]).await;
    let got = redis_get(&conn, &a, &user)
        .await
        .expect("read")
        .expect("some");
    assert_eq!((got.notes_played, got.last_seen), (5, Some(2_000)));
    let other = redis_get(&conn, &b, &user)
        .await
        .expect("read")
        .expect("some");
    assert_eq!((other.notes_played, other.last_seen), (7, Some(500)));
    assert_eq!(
        redis_get(&conn, &a, "user:nobody").await.expect("read"),
        None
    );
}
