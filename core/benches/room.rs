//! Core micro-benchmarks (issue 9): the room state machine alone, no I/O.
//!
//! - `notes_50_players`: one note batch (a note-on and three control changes, as the load
//!   generator sends) from one player of a 50-player room: decode, validate, quota, stamp,
//!   one encode, one `Effect::Send` to the 49 others.
//! - `join_50_players`: a new player's Join into a room of 50: the Joined snapshot for the
//!   newcomer and one ParticipantJoined for the others.
//!
//! `cargo bench -p piano-core --bench room` (quick by default: 1 s warm-up, 3 s measurement;
//! criterion's command-line options override). `scripts/bench` runs it in the standard run and
//! copies the estimates (`target/criterion/<name>/new/estimates.json`) into the results.

use criterion::{Criterion, criterion_group, criterion_main};
use piano_core::Millis;
use piano_core::identity::Identity;
use piano_core::proto::{self, ClientMessage, client_message, note_event};
use piano_core::room::stored::{RoomKind, Stored};
use piano_core::room::{ConnId, Effect, Frame, Input, Room};
use prost::Message as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

const START: Millis = 1_800_000_000_000;
const SEED: [u8; 32] = [7; 32];
const PLAYERS: u64 = 50;

fn identity(user: &str) -> Identity {
    Identity {
        user_id: user.into(),
        name: format!("Player {user}"),
        roles: vec!["guest".into()],
        ..Default::default()
    }
}

fn encode(msg: client_message::Msg) -> Vec<u8> {
    ClientMessage {
        msg: Some(msg),
        ..Default::default()
    }
    .encode_to_vec()
}

fn frame(room: &mut Room, conn: ConnId, bytes: &[u8], now: Millis) -> Vec<Effect> {
    room.handle(
        Input::Frame {
            conn,
            frame: Frame::Binary(bytes),
        },
        now,
    )
}

/// A normal room with capacity 99 and `PLAYERS` joined players on connections 1..=PLAYERS.
fn full_room() -> Room {
    let mut stored = Stored::new(RoomKind::Normal);
    stored.settings.max_players = 99;
    let (mut room, _) = Room::restore("bench", Some(stored), [], START, SEED);
    let join = encode(client_message::Msg::Join(proto::Join::default()));
    for conn in 1..=PLAYERS {
        room.handle(
            Input::Connect {
                conn,
                identity: identity(&format!("u{conn}")),
            },
            START,
        );
        frame(&mut room, conn, &join, START);
    }
    assert_eq!(room.participant_count(), PLAYERS as usize);
    room
}

fn batch(time: Millis, seq: u32) -> Vec<u8> {
    let cc = |control: u32, value: u32| proto::NoteEvent {
        delay: 0,
        kind: Some(note_event::Kind::ControlChange(proto::ControlChange {
            control,
            value,
            channel: 0,
        })),
    };
    encode(client_message::Msg::Notes(proto::NoteBatch {
        time,
        events: vec![
            proto::NoteEvent {
                delay: 0,
                kind: Some(note_event::Kind::NoteOn(proto::NoteOn {
                    note: seq % 128,
                    velocity: 90,
                    channel: 0,
                })),
            },
            cc(20, 1),
            cc(21, 2),
            cc(22, 3),
        ],
        sender_id: String::new(),
    }))
}

fn notes_50_players(c: &mut Criterion) {
    let mut room = full_room();
    let mut now = START;
    let mut seq = 0u32;
    c.bench_function("notes_50_players", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Untimed: the client's encoding. The clock advances 5 ms per batch and the
                // senders take turns, so each plays 4 batches/s and stays within its quota.
                now += 5;
                seq = seq.wrapping_add(1);
                let sender = 1 + u64::from(seq) % PLAYERS;
                let bytes = batch(now, seq);
                let t = Instant::now();
                let fx = frame(&mut room, sender, &bytes, now);
                debug_assert!(matches!(&fx[..], [Effect::Send { .. }]));
                drop(black_box(fx));
                total += t.elapsed();
            }
            total
        })
    });
}

fn join_50_players(c: &mut Criterion) {
    let mut room = full_room();
    let join = encode(client_message::Msg::Join(proto::Join::default()));
    let newcomer: ConnId = PLAYERS + 1;
    let mut now = START;
    c.bench_function("join_50_players", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                now += 5;
                // Untimed: the connection (Welcome) before, and the leave after.
                room.handle(
                    Input::Connect {
                        conn: newcomer,
                        identity: identity("newcomer"),
                    },
                    now,
                );
                let t = Instant::now();
                let fx = frame(&mut room, newcomer, &join, now);
                drop(black_box(fx));
                total += t.elapsed();
                room.handle(Input::Disconnect { conn: newcomer }, now);
            }
            total
        })
    });
}

fn quick() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = quick();
    targets = notes_50_players, join_50_players
}
criterion_main!(benches);
