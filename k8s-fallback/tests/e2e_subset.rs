//! The e2e suite's shared trials (`tests/room_features.rs`, `tests/directory.rs`, `tests/tokens.rs`,
//! `tests/accounts.rs`), run
//! against the native fallback instead of the edge: same harness, same clients, same
//! assertions. One standalone `k8s-fallback` process serves them all (each trial uses its own
//! rooms). The trial that restarts the server is edge-only here; `standalone.rs` covers the
//! fallback's own restart.

use e2e_tests::*;
use std::path::Path;
use std::sync::OnceLock;

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

#[path = "common/edge_trials.rs"]
mod edge_trials;

static SERVER: OnceLock<Server> = OnceLock::new();

pub(crate) fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        Server::start_fallback_binary(
            Path::new(env!("CARGO_BIN_EXE_k8s-fallback")),
            &[("ADMIN_USERNAMES".into(), "root-admin".into())],
        )
    })
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
];
