//! Providers' identity claims in the fallback's two account stores (SQLite, and a real
//! redis-server): set once, replaced only from the claim read, released only by the account
//! they name; and two links of one identity racing through the core's linker give one success
//! and one `identity_linked_elsewhere`.

mod common;

use common::{Redis, scratch_dir};
use k8s_fallback::accounts::Accounts;
use k8s_fallback::redis_handle::RedisHandle;
use piano_core::account::{AccountData, ApiError};
use piano_core::oauth::link::{Claim, Linker};
use piano_core::oauth::{ExternalProfile, OAuthError};
use piano_core::password::PasswordHash;
use std::sync::Arc;
use std::time::Duration;

async fn redis_store(redis: &Redis) -> Accounts {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let conn = RedisHandle::connect(client, Duration::from_secs(2))
        .await
        .expect("connect to redis");
    Accounts::redis(conn, "pr:")
}

fn claim(account: &str, at: u64, by: &str) -> Claim {
    Claim {
        account: account.into(),
        at,
        by: by.into(),
    }
}

async fn claims_behave(store: &Accounts) {
    let id = "discord:42";
    let a = claim("alice", 1, "aa");
    assert_eq!(store.claim_identity(id, &a).await.unwrap(), a);
    // Set-if-absent: the second claimant reads the first one's claim.
    let b = claim("bob", 2, "bb");
    assert_eq!(store.claim_identity(id, &b).await.unwrap(), a);
    // Replace only from exactly the claim there.
    assert!(!store.replace_claim(id, &b, &b).await.unwrap());
    assert!(
        !store
            .replace_claim(id, &claim("alice", 1, "zz"), &b)
            .await
            .unwrap()
    );
    assert!(store.replace_claim(id, &a, &b).await.unwrap());
    assert_eq!(store.identity_claim(id).await.unwrap(), Some(b.clone()));
    // Released only by the account it names.
    assert!(!store.release_claim(id, "alice").await.unwrap());
    assert_eq!(store.identity_claim(id).await.unwrap(), Some(b));
    assert!(store.release_claim(id, "bob").await.unwrap());
    assert_eq!(store.identity_claim(id).await.unwrap(), None);
    assert_eq!(store.claim_identity(id, &a).await.unwrap(), a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_set_once_replaced_from_what_was_read_and_released_by_their_account() {
    let dir = scratch_dir("oauth-claims");
    claims_behave(&Accounts::sqlite(&dir).unwrap()).await;
    let redis = Redis::start();
    claims_behave(&redis_store(&redis).await).await;
}

fn member(key: &str) -> AccountData {
    let pw = PasswordHash::with_iterations("password1", vec![1; 16], 1);
    AccountData::new(key, None, pw, false, [1, 2, 3], 0)
}

/// Both members link the same identity at once, many times over: one wins each time.
async fn links_race(store: Arc<Accounts>) {
    for (a, b) in [("ann", "ben")] {
        assert!(store.create(a, &member(a)).await.unwrap());
        assert!(store.create(b, &member(b)).await.unwrap());
    }
    for round in 0..20 {
        let profile =
            ExternalProfile::new("discord", &format!("{round}"), Some("nelly"), None, None);
        let now = 1_000_000u64 + round;
        let run = |who: &'static str, seed: u8| {
            let (store, profile) = (store.clone(), profile.clone());
            tokio::spawn(async move {
                store
                    .settle(Linker::link(profile, who, &[seed; 16], now))
                    .await
            })
        };
        let (x, y) = (run("ann", 1), run("ben", 2));
        let (x, y) = (x.await.unwrap(), y.await.unwrap());
        let (won, lost) = match (&x, &y) {
            (Ok(_), Err(_)) => (x.unwrap(), y.unwrap_err()),
            (Err(_), Ok(_)) => (y.unwrap(), x.unwrap_err()),
            other => panic!("round {round}: {other:?}"),
        };
        assert_eq!(
            lost,
            ApiError::OAuth(OAuthError::LinkedElsewhere),
            "round {round}"
        );
        let claim = store
            .identity_claim(&profile.key())
            .await
            .unwrap()
            .expect("claimed");
        assert_eq!(
            claim.account, won.0,
            "round {round}: the claim names the winner"
        );
        let account = store.load(&won.0).await.unwrap().unwrap();
        assert!(account.has_identity("discord", &format!("{round}")));
        // Each account may link one identity of a provider: unlink for the next round.
        store.unlink(&won.0, "discord").await.unwrap();
        assert_eq!(store.identity_claim(&profile.key()).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_links_of_one_identity_give_one_success() {
    let dir = scratch_dir("oauth-links");
    links_race(Arc::new(Accounts::sqlite(&dir).unwrap())).await;
    let redis = Redis::start();
    links_race(Arc::new(redis_store(&redis).await)).await;
}

/// A bad `OAUTH_PROVIDERS` or `PUBLIC_URL` stops the server from starting, with the core's
/// message.
#[test]
fn bad_provider_settings_refuse_to_start() {
    let dir = scratch_dir("oauth-config");
    let with = |name: &'static str, value: &'static str| {
        let dir = dir.display().to_string();
        k8s_fallback::config::from_lookup(move |k| match k {
            "DATA_DIR" => Some(dir.clone()),
            k if k == name => Some(value.to_owned()),
            _ => None,
        })
    };
    let err = |r: Result<k8s_fallback::config::Config, String>| r.err().unwrap_or_default();
    assert!(
        err(with(
            "OAUTH_PROVIDERS",
            r#"[{"id":"D","kind":"discord","client_id":"1"}]"#
        ))
        .contains("OAUTH_PROVIDERS: id \"D\" must be 2-16 of a-z 0-9")
    );
    assert!(err(with("OAUTH_PROVIDERS", "{")).starts_with("OAUTH_PROVIDERS"));
    assert!(err(with("PUBLIC_URL", "https://piano.example/app")).contains("PUBLIC_URL"));
    assert!(err(with("PUBLIC_URL", "http://piano.example")).contains("PUBLIC_URL"));
    let ok = with(
        "OAUTH_PROVIDERS",
        r#"[{"id":"discord","kind":"discord","client_id":"1"}]"#,
    )
    .expect("a good configuration");
    assert_eq!(ok.oauth_providers.len(), 1);
    let ok = with("PUBLIC_URL", "https://piano.example/").expect("an origin");
    assert_eq!(ok.public_url.as_deref(), Some("https://piano.example"));
}
