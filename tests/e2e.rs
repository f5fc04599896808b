//! The end-to-end suite: one list of trials, each run against every target — the edge
//! (`wrangler dev`: the worker and Durable Objects in workerd), a standalone fallback and a
//! two-replica fallback on Redis (`targets.rs`) — with real HTTP, WebSocket and browser clients.
//!
//! A trial is `async fn name(s: &Server)` in one of the modules below and one line in
//! [`trials`]. It names its rooms and users with [`unique`] and looks only at what carries
//! them, so trials run concurrently on one server. A trial that is about one host says so
//! with [`Spec::only`] and a reason; one that restarts its server or counts its storage runs
//! alone on it ([`Spec::alone`]), after the others.
//!
//! Each target starts on first use and is shut down when the run ends, pass or fail. Trials
//! are named `<target>::<trial>`: `cargo test -p e2e-tests --test e2e -- fallback::` runs one
//! target, `-- rooms_are_isolated` one trial everywhere.

use e2e_tests::*;
use libtest_mimic::{Arguments, Failed, Trial};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

mod abuse;
mod abuse_accounts;
mod abuse_directory;
mod accounts;
mod analytics;
mod api_description;
mod basics;
mod bot;
mod client_api;
mod directory;
mod drifts;
mod metrics;
mod mpp;
mod oauth;
mod oauth_attacks;
mod oauth_browser;
mod oauth_support;
mod persistence;
mod reports;
mod resume;
mod resume_edge;
mod room_features;
mod sdk;
mod tokens;

type TrialFuture = Pin<Box<dyn Future<Output = ()>>>;

/// One trial of the list and where it runs.
#[derive(Clone, Copy)]
struct Spec {
    name: &'static str,
    run: fn(&'static Server) -> TrialFuture,
    /// The targets it runs on, and why not on the others.
    hosts: &'static [Host],
    why_only: &'static str,
    /// The targets on which it runs alone (nothing else on that server meanwhile).
    alone: &'static [Host],
    /// Runs while no other trial of this kind runs on any target (a browser each).
    one_at_a_time: bool,
}

const ALL: &[Host] = &[Host::Edge, Host::Fallback, Host::FallbackCluster];

impl Spec {
    fn new(path: &'static str, run: fn(&'static Server) -> TrialFuture) -> Spec {
        Spec {
            name: path.rsplit(':').next().unwrap_or(path).trim(),
            run,
            hosts: ALL,
            why_only: "",
            alone: &[],
            one_at_a_time: false,
        }
    }

    /// Runs on `hosts` only, for the reason given (the list must say why).
    fn only(self, hosts: &'static [Host], why: &'static str) -> Spec {
        assert!(
            !why.is_empty(),
            "{}: say why it is not on every host",
            self.name
        );
        Spec {
            hosts,
            why_only: why,
            ..self
        }
    }

    /// Runs alone on `hosts` (it restarts the server, looks at all of its storage, or floods it).
    fn alone(self, hosts: &'static [Host]) -> Spec {
        Spec {
            alone: hosts,
            ..self
        }
    }

    fn one_at_a_time(self) -> Spec {
        Spec {
            one_at_a_time: true,
            ..self
        }
    }
}

/// `t!(module::trial)`: a trial that runs against the target it is given.
macro_rules! t {
    ($($path:ident)::+) => {
        Spec::new(stringify!($($path)::+), |s| Box::pin($($path)::+(s)))
    };
}

/// Why the drift trials that take MongoDB down run on a rig of the edge and of the standalone
/// fallback only (`drifts.rs`).
const DRIFT_RIG: &str = "a server of its own on a MongoDB it takes down; the cluster's replicas run the same account code";

/// Why the reports' trials run on the edge and the standalone fallback only (`reports.rs`).
const REPORTS_RIG: &str = "a server of its own with SENTRY_DSN at a local receiver and test routes; the cluster's replicas run the same telemetry code";

/// Why the edge's own resume trials run there only (`resume_edge.rs`).
const RESUME_EDGE_RIG: &str = "the Room object loses its memory (hibernation, a restart of its edge server of its own, 60 s grace) and keeps sessions in its SQLite; the fallback's rooms never hibernate, its restarts are its own trials";

/// The one list. Each entry runs on every target unless it says otherwise.
fn trials() -> Vec<Spec> {
    use Host::*;
    vec![
        t!(basics::guest_token_is_an_eddsa_jwt_verifiable_with_the_jwks),
        t!(bot::bot_plays_and_answers_chat_commands),
        t!(bot::bot_survives_refused_answers),
        t!(bot::bot_example_binary_runs_and_stops_on_a_signal),
        t!(client_api::client_crate_requests_get_typed_answers),
        t!(client_api::client_crate_reconnects_and_resends_what_the_cut_lost),
        t!(basics::guest_token_refuses_bad_names),
        t!(basics::upgrade_refuses_missing_and_bad_tokens),
        t!(basics::upgrade_refuses_bad_room_names_and_plain_requests),
        t!(basics::browser_subprotocol_token_is_accepted_and_echoed),
        t!(basics::client_identity_headers_are_ignored),
        t!(basics::join_relay_ping_and_leave),
        t!(basics::malformed_frames_get_typed_errors_and_oversized_frames_close),
        t!(basics::rooms_are_isolated),
        t!(resume::a_cut_player_resumes_and_misses_nothing),
        t!(resume::a_resume_after_the_grace_period_is_a_rejoin),
        t!(resume::stolen_and_spent_resume_tokens_are_refused),
        t!(resume::a_resume_takes_over_a_half_open_socket),
        t!(resume::players_resume_after_the_server_restarts).alone(ALL),
        t!(basics::room_survives_hibernation).only(
            &[Edge],
            "workerd evicts idle Durable Objects; the fallback's room tasks never hibernate",
        ),
        t!(resume_edge::a_player_resumes_after_the_room_object_hibernated)
            .only(&[Edge], RESUME_EDGE_RIG),
        t!(resume_edge::a_player_resumes_after_the_edge_restarted).only(&[Edge], RESUME_EDGE_RIG),
        t!(resume_edge::a_player_who_drops_while_the_room_object_sleeps_resumes_from_a_snapshot)
            .only(&[Edge], RESUME_EDGE_RIG),
        t!(basics::browser_two_players_play_chat_and_see_the_room_list).one_at_a_time(),
        t!(basics::browser_resumes_after_a_dropped_connection).one_at_a_time(),
        t!(api_description::the_openapi_document_is_served_as_the_repository_has_it),
        t!(api_description::the_openapi_checker_catches_drift),
        t!(api_description::the_rarely_called_operations_answer_as_documented),
        t!(api_description::the_api_reference_page_renders_under_the_sites_csp).one_at_a_time(),
        t!(oauth_browser::browser_signs_in_through_a_provider_and_never_exposes_the_refresh_token)
            .one_at_a_time(),
        t!(sdk::sdk_two_clients_play_and_chat),
        t!(sdk::sdk_refusals_are_typed_errors),
        t!(sdk::sdk_follows_the_room_directory),
        t!(sdk::sdk_resumes_after_a_dropped_connection),
        t!(sdk::sdk_example_bot_plays_and_answers_chat),
        t!(sdk::sdk_runs_in_the_browser).one_at_a_time(),
        t!(room_features::profiles_and_cursors_are_validated_and_broadcast),
        t!(room_features::notes_quota_black_midi_and_owner_only_play),
        t!(room_features::chat_history_typing_rate_limit_and_welcome),
        t!(room_features::settings_password_and_crown),
        t!(room_features::moderation_kick_ban_unban_mute),
        t!(room_features::typed_join_failures),
        t!(room_features::room_survives_a_restart).alone(ALL),
        t!(directory::rooms_are_listed_by_players_and_private_rooms_are_absent),
        t!(directory::a_subscriber_sees_joins_leaves_and_emptied_rooms_go),
        t!(directory::thirty_one_players_overflow_into_lobby_2),
        t!(directory::joining_a_new_room_creates_it_with_the_joiners_settings),
        t!(tokens::rfc8725_bad_tokens_are_refused_at_rest_and_websocket),
        t!(tokens::rotated_keys_verify_while_listed_and_are_published),
        t!(accounts::register_login_connect_refresh_logout),
        t!(accounts::concurrent_registrations_of_one_name_one_wins),
        t!(accounts::profiles_and_admin_roles),
        t!(accounts::auth_endpoints_are_rate_limited_per_ip).alone(ALL),
        t!(accounts::session_limit_ends_older_sessions).alone(ALL),
        // Floods of 10,000 frames: `wrangler dev` runs the worker and every object on one
        // thread, and a request queued behind such a flood was answered 503 by the runtime (two
        // fresh-clone runs lost a concurrent trial's `POST /api/auth/guest` so).
        t!(abuse::note_off_and_pedal_flood_is_bounded_and_closed_1008).alone(&[Edge]),
        t!(abuse::typing_and_profile_floods_are_bounded_and_closed_1008).alone(&[Edge]),
        t!(abuse::one_user_gets_at_most_four_sockets_per_room),
        t!(abuse::password_guessing_is_slowed_per_user_and_room),
        t!(abuse::a_reader_that_never_reads_is_closed_1013),
        t!(abuse::a_silent_listener_at_the_edge_skips_notes_and_is_told).only(
            &[Edge],
            "the Room object counts what it sent since the client last spoke; the fallback sees its queue (a reader keeps it empty; k8s-fallback/src/sockets.rs tests the skipping)",
        ),
        t!(abuse::a_crate_listener_at_the_edge_acknowledges_what_it_reads).only(
            &[Edge],
            "the Room object counts what it sent since the client last spoke; the fallback sees its queue",
        ),
        t!(abuse_directory::room_list_subscriptions_are_capped_per_user),
        t!(abuse_directory::settings_toggles_reach_subscribers_coalesced),
        t!(abuse_directory::room_list_reads_are_cached),
        t!(abuse_directory::lookalike_room_names_are_refused),
        // At the edge it counts every Durable Object's file: nothing else may make rooms.
        t!(abuse_directory::probes_and_anonymous_reads_create_no_storage)
            .only(
                &[Edge, Fallback],
                "reads the host's own storage files; the cluster keeps rooms in Redis",
            )
            .alone(&[Edge]),
        t!(abuse_accounts::logout_closes_open_sockets_4001),
        t!(abuse_accounts::revoked_session_closes_open_sockets_4001),
        t!(abuse_accounts::role_change_closes_open_sockets_4002),
        t!(abuse_accounts::expiring_guest_token_closes_its_socket_4001),
        t!(abuse_accounts::refresh_and_logout_need_the_secret),
        t!(abuse_accounts::a_ban_holds_against_a_new_guest_token_from_the_same_network),
        t!(abuse_accounts::reserved_admin_names_need_the_bootstrap_secret),
        t!(abuse_accounts::every_response_carries_security_headers_and_cors_is_closed),
        // wrangler dev restarts the worker after an early answer to a streamed body.
        t!(abuse_accounts::oversized_auth_bodies_are_refused_while_streaming).alone(&[Edge]),
        t!(drifts::refresh_tokens_are_parsed_alike_with_capped_parts),
        t!(analytics::the_http_sink_receives_a_sessions_events),
        t!(analytics::queued_analytics_are_delivered_at_shutdown).only(
            &[Fallback],
            "a fallback of its own, stopped by the trial (the edge posts at each hand-over)",
        ),
        t!(drifts::registration_is_refused_while_the_account_database_is_unreachable)
            .only(&[Edge, Fallback], DRIFT_RIG),
        t!(drifts::account_lookups_back_off_for_one_interval_on_both_hosts)
            .only(&[Edge, Fallback], DRIFT_RIG),
        t!(drifts::an_imported_account_must_be_the_user_its_key_names)
            .only(&[Edge, Fallback], DRIFT_RIG),
        t!(drifts::only_final_states_reach_mongodb).only(&[Edge, Fallback], DRIFT_RIG),
        t!(drifts::an_expired_session_is_forgotten_at_the_next_login).only(
            &[Edge, Fallback],
            "a short REFRESH_TOKEN_TTL_SECS on a rig of its own (the cluster's sessions are Redis keys that expire by themselves)",
        ),
        t!(metrics::metrics_count_what_a_session_did).only(
            &[Edge, Fallback],
            "a server of its own for exact counts (the cluster's replicas count alike)",
        ),
        t!(reports::a_panic_is_reported_once).only(&[Edge, Fallback], REPORTS_RIG),
        t!(reports::a_panic_in_a_room_is_reported_once).only(&[Edge], REPORTS_RIG),
        t!(reports::a_server_error_is_reported_once).only(&[Edge, Fallback], REPORTS_RIG),
        t!(reports::a_dead_letter_is_reported_once).only(&[Edge, Fallback], REPORTS_RIG),
        t!(reports::an_error_storm_sends_a_bounded_number_of_reports)
            .only(&[Edge, Fallback], REPORTS_RIG),
        t!(reports::logs_are_json_lines_without_secrets).only(&[Edge, Fallback], REPORTS_RIG),
        t!(oauth::oidc_sign_in_creates_the_account_then_finds_it_and_it_plays),
        t!(oauth::discord_sign_in_creates_then_finds_and_a_refusal_signs_no_one_in),
        t!(oauth::members_link_and_unlink_providers),
        t!(oauth::one_identity_linked_by_two_members_at_once_goes_to_one),
        t!(oauth::password_login_with_cookie_true_gives_cookies_not_a_refresh_token),
        t!(oauth_attacks::forged_replayed_and_cookieless_callbacks_sign_no_one_in),
        t!(oauth_attacks::id_tokens_that_break_a_rule_are_refused),
        t!(oauth_attacks::return_to_must_be_a_path_on_this_site),
        t!(oauth_attacks::cookie_refresh_and_logout_need_our_origin_and_the_csrf_token),
        t!(oauth_attacks::oauth_failures_are_logged_without_the_flows_secrets),
        t!(mpp::mpp_client_plays_with_protobuf_players),
        t!(mpp::mpp_clients_are_closed_with_mpp_codes),
        t!(persistence::mongo_client_speaks_the_data_api).only(
            &[Edge],
            "the edge's MongoDB Data API client (the fallback's driver: k8s-fallback/tests/mongo.rs)",
        ),
        t!(persistence::redis_client_speaks_the_upstash_protocol).only(
            &[Edge],
            "the edge's Upstash REST client (the fallback speaks RESP: k8s-fallback/tests/cluster.rs)",
        ),
        t!(persistence::clients_time_out_and_report_unreachable_services)
            .only(&[Edge], "the edge's HTTP backend clients"),
        t!(persistence::outbox_ops_are_idempotent)
            .only(&[Edge], "the edge outbox's Data API and Upstash ops"),
        t!(persistence::edge_writes_accounts_and_chat_to_mongodb_and_presence_to_redis)
            .only(
                &[Edge],
                "edges of two deployments on the Data API and Upstash stack (fallback: mongo.rs)",
            )
            .alone(&[Edge]),
        t!(persistence::an_outage_of_both_backends_delays_writes_and_loses_none)
            .only(&[Edge], "the edge outbox under a Data API and Upstash outage")
            .alone(&[Edge]),
        t!(persistence::presence_of_players_lost_in_a_restart_is_cleared)
            .only(&[Edge], "a restarted edge clears its Upstash presence")
            .alone(&[Edge]),
    ]
}

/// A started target and its gate: trials hold it shared, a trial that runs alone exclusively.
struct Target {
    server: Server,
    gate: RwLock<()>,
}

static TARGETS: [OnceLock<Target>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn index(host: Host) -> usize {
    ALL.iter().position(|h| *h == host).unwrap_or(0)
}

fn tag(host: Host) -> &'static str {
    host.tag()
}

fn target(host: Host) -> &'static Target {
    TARGETS[index(host)].get_or_init(|| Target {
        server: Server::start(
            host,
            std::path::Path::new(env!("CARGO_BIN_EXE_piano-fallback")),
        ),
        gate: RwLock::new(()),
    })
}

/// The most one trial may run (its gate's wait not counted): a hang fails that trial with the
/// server's log instead of stalling the suite until CI kills it. `E2E_TRIAL_LIMIT_SECS` sets it.
fn trial_limit() -> Duration {
    std::env::var("E2E_TRIAL_LIMIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(480))
}

/// The trials running now and since when, for the watchdog's reports.
static RUNNING: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

fn run_on(host: Host, spec: Spec) -> Result<(), Failed> {
    let name = format!("{}::{}", tag(host), spec.name);
    let target = target(host);
    // A failed trial poisons the locks it held; the next one proceeds all the same.
    let _shared;
    let _exclusive;
    if spec.alone.contains(&host) {
        _exclusive = target.gate.write().unwrap_or_else(|p| p.into_inner());
    } else {
        _shared = target.gate.read().unwrap_or_else(|p| p.into_inner());
    }
    let _one = spec
        .one_at_a_time
        .then(|| ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner()));
    let limit = trial_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("runtime: {e}")))?;
    running(&name, true);
    // On a thread of its own: a trial stuck in a blocking call is given up on (and leaked)
    // rather than holding this worker, its gate and the suite.
    let (done, finished) = std::sync::mpsc::channel();
    let trial = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(async {
                    tokio::time::timeout(limit, (spec.run)(&target.server)).await
                })
            }));
            let _ = done.send(outcome);
        })
        .map_err(|e| Failed::from(format!("trial thread: {e}")))?;
    let outcome = finished.recv_timeout(limit + Duration::from_secs(30));
    running(&name, false);
    let stuck = |how: &str| {
        Failed::from(format!(
            "{name} {how} within {limit:?}; the server's logs:\n{}",
            target.server.log_tail(40)
        ))
    };
    match outcome {
        Ok(Ok(Ok(()))) => {
            let _ = trial.join();
            // Answers that differ from docs/openapi.yaml fail the trial that received them.
            let drift = openapi_proxy::take_violations(&name);
            match drift.is_empty() {
                true => Ok(()),
                false => Err(Failed::from(format!(
                    "answers differ from docs/openapi.yaml:\n{}",
                    drift.join("\n")
                ))),
            }
        }
        Ok(Ok(Err(_elapsed))) => Err(stuck("did not finish")),
        // The trial's own panic, reported as libtest would.
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // Its thread is left running, and its gates are released: what runs next may meet it.
        Err(_) => Err(stuck(
            "is stuck in a blocking call (its thread is left behind)",
        )),
    }
}

fn running(name: &str, started: bool) {
    let mut now = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    match started {
        true => now.insert(name.to_owned(), Instant::now()),
        false => now.remove(name),
    };
}

/// Every minute, names the trials that have run for over two: when something hangs, the log
/// says what.
fn watchdog() {
    let _ = std::thread::Builder::new()
        .name("e2e-watchdog".into())
        .spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(60));
                let now = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
                let slow: Vec<String> = now
                    .iter()
                    .filter(|(_, since)| since.elapsed() > Duration::from_secs(120))
                    .map(|(name, since)| format!("{name} ({}s)", since.elapsed().as_secs()))
                    .collect();
                if !slow.is_empty() {
                    eprintln!("e2e: still running: {}", slow.join(", "));
                }
            }
        });
}

fn main() {
    let mut args = Arguments::from_args();
    // Trials mostly wait on servers: two at a time per target keeps a 2-core machine busy
    // without starving the servers themselves.
    args.test_threads = args.test_threads.or(Some(2 * ALL.len()));
    let specs = trials();
    watchdog();
    let mut shared = Vec::new();
    let mut alone = Vec::new();
    // Trial by trial, target by target: the targets' work interleaves from the start.
    for spec in specs {
        for &host in spec.hosts {
            let trial = Trial::test(format!("{}::{}", tag(host), spec.name), move || {
                run_on(host, spec)
            });
            match spec.alone.contains(&host) {
                true => alone.push(trial),
                false => shared.push(trial),
            }
        }
        if spec.hosts != ALL {
            eprintln!(
                "e2e: {} runs on {:?} only: {}",
                spec.name, spec.hosts, spec.why_only
            );
        }
    }
    // Trials that run alone come last, so they rarely wait for a gate.
    shared.extend(alone);
    let conclusion = libtest_mimic::run(&args, shared);
    for (host, slot) in ALL.iter().zip(&TARGETS) {
        if let Some(t) = slot.get() {
            if conclusion.has_failed() {
                eprintln!(
                    "--- last lines of the {host:?} target's logs ---\n{}",
                    t.server.log_tail(60)
                );
            }
            // Statics are never dropped: stop every target by hand.
            t.server.shutdown();
        }
    }
    drifts::stop_rigs();
    reports::stop_rigs();
    resume_edge::stop_rigs();
    if let Some(stack) = persistence::STACK.get() {
        stack.stop_all();
    }
    // What the answers covered of the API description, and drift no passing trial claimed
    // (a failed trial's, or an answer to a thread of no trial): the run fails on it too.
    if !openapi_proxy::report() && !conclusion.has_failed() {
        eprintln!("e2e: answers differ from docs/openapi.yaml (above)");
        std::process::exit(101);
    }
    conclusion.exit();
}
