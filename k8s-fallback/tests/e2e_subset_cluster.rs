//! The same shared e2e trials as `e2e_subset.rs`, against a two-replica cluster: a real
//! `redis-server`, two `k8s-fallback` replicas, and a round-robin TCP balancer in front, so the
//! players of each trial's rooms land on both replicas (every second connection goes to the
//! other one) and every room feature is exercised across the Redis relay.

mod common;

use common::{Redis, Replica};
use e2e_tests::*;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

#[allow(dead_code)] // room_survives_a_restart restarts wrangler: edge-only
#[path = "../../tests/room_features.rs"]
mod room_features;

#[path = "../../tests/directory.rs"]
mod directory;

#[path = "../../tests/tokens.rs"]
mod tokens;

#[allow(dead_code)] // the session-limit and rate-limit trials restart wrangler: edge-only
#[path = "../../tests/accounts.rs"]
mod accounts;

#[path = "../../tests/abuse.rs"]
mod abuse;

#[path = "../../tests/abuse_accounts.rs"]
mod abuse_accounts;

#[allow(dead_code)] // the storage probe reads the standalone SQLite store
#[path = "../../tests/abuse_directory.rs"]
mod abuse_directory;

#[path = "common/edge_trials.rs"]
mod edge_trials;

struct Cluster {
    server: Server,
    _replica_b: Replica,
    _redis: Redis,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

pub(crate) fn server() -> &'static Server {
    &CLUSTER
        .get_or_init(|| {
            let redis = Redis::start();
            let mut server = Server::start_fallback_binary(
                Path::new(env!("CARGO_BIN_EXE_k8s-fallback")),
                &[
                    ("REDIS_URL".into(), redis.url()),
                    ("ADMIN_USERNAMES".into(), ADMIN_USERNAMES.into()),
                    // Every trial's clients share 127.0.0.1 (see e2e_subset.rs).
                    ("ROOM_SOCKETS_PER_NETWORK".into(), "100000".into()),
                    ("MAX_WEBSOCKETS_PER_IP".into(), "1000000".into()),
                    ("MAX_CONNECTIONS_PER_IP".into(), "1000000".into()),
                ],
            );
            let previous_x = server.previous_key.public_jwk()["x"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let b = Replica::start(
                "e2e-b",
                &[
                    ("REDIS_URL", redis.url()),
                    ("JWT_PRIVATE_KEY", server.key_pem.clone()),
                    ("JWT_VERIFY_KEYS", previous_x),
                    ("ADMIN_USERNAMES", ADMIN_USERNAMES.into()),
                    ("ADMIN_BOOTSTRAP_SECRET", ADMIN_BOOTSTRAP_SECRET.into()),
                    ("CORS_ORIGINS", CORS_ALLOWED_ORIGIN.into()),
                    ("ROOM_SOCKETS_PER_NETWORK", "100000".into()),
                    ("MAX_WEBSOCKETS_PER_IP", "1000000".into()),
                    ("MAX_CONNECTIONS_PER_IP", "1000000".into()),
                ],
            );
            server.port = balancer(vec![server.port, b.port]);
            Cluster {
                server,
                _replica_b: b,
                _redis: redis,
            }
        })
        .server
}

/// Listens on a free loopback port and sends each TCP connection to the next backend in turn.
fn balancer(backends: Vec<u16>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind balancer");
    let port = listener.local_addr().expect("balancer address").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("balancer runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let next = AtomicUsize::new(0);
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    });
    port
}

/// As the edge suite names its rooms (`tests/edge.rs`).
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", now_ms() % 1_000_000_000)
}

fn run(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f);
}

macro_rules! trials {
    ($($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run($module::$name());
            }
        )*
    };
}

trials![
    edge_trials::join_relay_ping_and_leave,
    edge_trials::malformed_frames_get_typed_errors_and_oversized_frames_close,
    room_features::profiles_and_cursors_are_validated_and_broadcast,
    room_features::notes_quota_black_midi_and_owner_only_play,
    room_features::chat_history_typing_rate_limit_and_welcome,
    room_features::settings_password_and_crown,
    room_features::moderation_kick_ban_unban_mute,
    room_features::typed_join_failures,
    directory::rooms_are_listed_by_players_and_private_rooms_are_absent,
    directory::a_subscriber_sees_joins_leaves_and_emptied_rooms_go,
    directory::thirty_one_players_overflow_into_lobby_2,
    directory::joining_a_new_room_creates_it_with_the_joiners_settings,
    tokens::rfc8725_bad_tokens_are_refused_at_rest_and_websocket,
    tokens::rotated_keys_verify_while_listed_and_are_published,
    accounts::register_login_connect_refresh_logout,
    accounts::concurrent_registrations_of_one_name_one_wins,
    accounts::profiles_and_admin_roles,
    abuse::note_off_and_pedal_flood_is_bounded_and_closed_1008,
    abuse::typing_and_profile_floods_are_bounded_and_closed_1008,
    abuse::one_user_gets_at_most_four_sockets_per_room,
    abuse::password_guessing_is_slowed_per_user_and_room,
    abuse::a_reader_that_never_reads_is_closed_1013,
    abuse_directory::room_list_subscriptions_are_capped_per_user,
    abuse_directory::settings_toggles_reach_subscribers_coalesced,
    abuse_directory::room_list_reads_are_cached,
    abuse_directory::lookalike_room_names_are_refused,
    abuse_accounts::logout_closes_open_sockets_4001,
    abuse_accounts::revoked_session_closes_open_sockets_4001,
    abuse_accounts::role_change_closes_open_sockets_4002,
    abuse_accounts::expiring_guest_token_closes_its_socket_4001,
    abuse_accounts::refresh_and_logout_need_the_secret,
    abuse_accounts::oversized_auth_bodies_are_refused_while_streaming,
    abuse_accounts::a_ban_holds_against_a_new_guest_token_from_the_same_network,
    abuse_accounts::reserved_admin_names_need_the_bootstrap_secret,
    abuse_accounts::every_response_carries_security_headers_and_cors_is_closed,
];
