//! The edge and the fallback as one service: `wrangler dev` (the real worker and Durable
//! Objects) and a fallback replica sharing one signing key and one Redis (the edge through the
//! Upstash REST gateway of `e2e_tests::stack`, the fallback natively). A member registered on
//! the fallback plays at the edge with the fallback's token, and once they log out on the
//! fallback the edge refuses that token too.

use e2e_tests::stack::{Part, Stack};
use e2e_tests::{Client, Server};
use std::path::Path;
use std::time::Duration;

fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f);
}

async fn ws_status(s: &Server, room: &str, token: &str) -> u16 {
    let url = format!("{}?token={token}", s.ws_url(room));
    match Client::connect(&url, &[]).await {
        Ok(mut c) => {
            c.join().await;
            c.close().await;
            101
        }
        Err(_) => e2e_tests::refused_upgrade(&url, &[]).await.status,
    }
}

#[test]
fn a_fallback_members_token_works_at_the_edge_until_logout() {
    run(async {
        let stack = Stack::start();
        let edge = Server::start_edge_with(&stack.vars("edge-interop"));
        let fallback = Server::start_fallback_binary(
            Path::new(env!("CARGO_BIN_EXE_k8s-fallback")),
            &[
                ("JWT_PRIVATE_KEY".into(), edge.key_pem.clone()),
                (
                    "REDIS_URL".into(),
                    format!("redis://127.0.0.1:{}/", stack.port(Part::Redis)),
                ),
                ("REDIS_KEY_PREFIX".into(), stack.prefix.clone()),
                ("DEPLOYMENT_ID".into(), "fallback-interop".into()),
            ],
        );
        let name = format!("bridge-{}", e2e_tests::now_ms() % 1_000_000_000);
        let http = reqwest::Client::new();
        let reg: serde_json::Value = http
            .post(fallback.http("/api/auth/register"))
            .json(&serde_json::json!({"username": name, "password": "correct horse"}))
            .send()
            .await
            .expect("register on the fallback")
            .json()
            .await
            .expect("json");
        let access = reg["access_token"]
            .as_str()
            .expect("access token")
            .to_owned();
        let refresh = reg["refresh_token"]
            .as_str()
            .expect("refresh token")
            .to_owned();
        let room = format!("bridge-room-{}", e2e_tests::now_ms() % 1_000_000);

        // The edge never issued this session: it is live while the shared list does not
        // name it.
        assert_eq!(ws_status(&edge, &room, &access).await, 101);

        let status = http
            .post(fallback.http("/api/auth/logout"))
            .json(&serde_json::json!({"refresh_token": refresh}))
            .send()
            .await
            .expect("logout")
            .status();
        assert_eq!(status, 204);
        // Refused at both now (the revocation is written by the fallback as it logs out).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut at_edge = 0;
        while std::time::Instant::now() < deadline {
            at_edge = ws_status(&edge, &room, &access).await;
            if at_edge == 401 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(at_edge, 401, "the edge still takes a logged-out session");
        assert_eq!(ws_status(&fallback, &room, &access).await, 401);

        // A token with a made-up session, signed with the shared key, is live only while the
        // shared Redis can be asked: with Redis gone, the edge refuses it.
        stack.kill_part(Part::RedisRest);
        let mut claims = edge.claims(&format!("user:{name}"), &name);
        claims.roles = vec!["member".into()];
        claims.sid = Some("made-up-session".into());
        claims.generation = Some(1);
        let forged = edge.sign(&claims);
        assert_eq!(ws_status(&edge, &room, &forged).await, 401);
    });
}
