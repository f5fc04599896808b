//! The e2e suite's shared trials (`tests/room_features.rs`, `tests/directory.rs`, `tests/tokens.rs`,
//! `tests/accounts.rs`, `tests/drifts.rs`), run
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

#[path = "../../tests/abuse.rs"]
mod abuse;

#[path = "../../tests/abuse_accounts.rs"]
mod abuse_accounts;

#[path = "../../tests/abuse_directory.rs"]
mod abuse_directory;

#[path = "../../tests/drifts.rs"]
mod drifts;

#[path = "common/edge_trials.rs"]
mod edge_trials;

static SERVER: OnceLock<Server> = OnceLock::new();

pub(crate) fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        Server::start_fallback_binary(
            Path::new(env!("CARGO_BIN_EXE_k8s-fallback")),
            &[
                ("ADMIN_USERNAMES".into(), ADMIN_USERNAMES.into()),
                // Every trial's clients share 127.0.0.1 and run at once (wrangler dev's have no
                // CF-Connecting-IP, so no network at all): per-IP caps would pit the trials
                // against each other. This host's own tests cover them (http_limits.rs, reach.rs).
                ("ROOM_SOCKETS_PER_NETWORK".into(), "100000".into()),
                ("MAX_WEBSOCKETS_PER_IP".into(), "1000000".into()),
                ("MAX_CONNECTIONS_PER_IP".into(), "1000000".into()),
            ],
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
    abuse_directory::probes_and_anonymous_reads_create_no_storage,
    drifts::refresh_tokens_are_parsed_alike_with_capped_parts,
    drifts::registration_is_refused_while_the_account_database_is_unreachable,
    drifts::account_lookups_back_off_for_one_interval_on_both_hosts,
    drifts::an_imported_account_must_be_the_user_its_key_names,
];
