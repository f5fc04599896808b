//! Every outbox rule, against a reference host: rows in a map (as a host's table), a scripted
//! backend per lane, and a "database" the backend writes into.

use super::*;
use crate::room::stored::{ChatRecord, Crown, RoomKind, Settings};
use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Debug, Clone)]
struct Row {
    lane: Lane,
    /// Rows with the same key: a newer one replaces a queued older one.
    key: Option<&'static str>,
    /// The write: `field=value`, idempotent.
    write: String,
    attempts: u32,
}

/// What the scripted backend does with the next delivery of a lane.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Down,
    Refuse,
    /// Applies the write but the answer is lost (a timeout after the fact).
    AppliedButLost,
}

#[derive(Default)]
struct Host {
    outbox: Outbox,
    rows: BTreeMap<i64, Row>,
    next_id: i64,
    dead: Vec<String>,
    script: HashMap<Lane, VecDeque<Answer>>,
    /// Every write the backends applied, in order.
    applied: Vec<(Lane, String)>,
    db: HashMap<String, String>,
}

impl Host {
    fn store(&mut self, lane: Lane, key: Option<&'static str>, write: &str) {
        if let Some(k) = key {
            self.rows.retain(|_, r| r.key != Some(k));
        }
        self.next_id += 1;
        self.rows.insert(
            self.next_id,
            Row {
                lane,
                key,
                write: write.into(),
                attempts: 0,
            },
        );
        self.outbox.queued(lane);
    }

    fn answers(&mut self, lane: Lane, answers: &[Answer]) {
        self.script.entry(lane).or_default().extend(answers);
    }

    fn apply(&mut self, lane: Lane, write: &str) {
        self.applied.push((lane, write.to_owned()));
        if let Some((field, value)) = write.split_once('=') {
            self.db.insert(field.into(), value.into());
        }
    }

    /// One delivery pass at `now`, as a host's alarm or timer runs it.
    fn run(&mut self, now: Millis) {
        while let Some(lane) = self.outbox.next_lane(now) {
            let ids: Vec<i64> = self
                .rows
                .iter()
                .filter(|(_, r)| r.lane == lane)
                .map(|(id, _)| *id)
                .take(BATCH)
                .collect();
            for id in ids {
                let row = self.rows[&id].clone();
                let answer = self
                    .script
                    .get_mut(&lane)
                    .and_then(VecDeque::pop_front)
                    .unwrap_or(Answer::Ok);
                let outcome = match answer {
                    Answer::Ok => {
                        self.apply(lane, &row.write);
                        Outcome::Delivered
                    }
                    Answer::AppliedButLost => {
                        self.apply(lane, &row.write);
                        Outcome::Failed { transient: true }
                    }
                    Answer::Down => Outcome::Failed { transient: true },
                    Answer::Refuse => Outcome::Failed { transient: false },
                };
                let meta = RowMeta {
                    id,
                    lane,
                    attempts: row.attempts,
                };
                let verdict = self.outbox.report(&meta, outcome, now);
                match verdict {
                    Verdict::Delete => {
                        self.rows.remove(&id);
                    }
                    Verdict::Retry { attempts, .. } => {
                        if let Some(r) = self.rows.get_mut(&id) {
                            r.attempts = attempts;
                        }
                    }
                    Verdict::Bury => {
                        self.rows.remove(&id);
                        self.dead.push(row.write.clone());
                    }
                }
                if !verdict.lane_goes_on() {
                    break;
                }
            }
            let left = self.rows.values().any(|r| r.lane == lane);
            self.outbox.lane_done(lane, left);
        }
    }

    /// Runs at every deadline the outbox asks for until nothing waits (bounded).
    fn run_until_idle(&mut self, mut now: Millis) -> Millis {
        for _ in 0..1000 {
            self.run(now);
            match self.outbox.poll_timeout(now) {
                Some(at) => now = at.max(now),
                None => return now,
            }
        }
        panic!("the outbox never went idle");
    }

    fn applied(&self, lane: Lane) -> Vec<&str> {
        self.applied
            .iter()
            .filter(|(l, _)| *l == lane)
            .map(|(_, w)| w.as_str())
            .collect()
    }
}

#[test]
fn the_backoff_schedule_doubles_from_a_second_to_a_minute() {
    let table: [(u32, u64); 10] = [
        (0, 1000),
        (1, 1000),
        (2, 2000),
        (3, 4000),
        (4, 8000),
        (5, 16_000),
        (6, 32_000),
        (7, 60_000),
        (8, 60_000),
        (u32::MAX, 60_000),
    ];
    for (attempts, delay) in table {
        assert_eq!(retry_delay_ms(attempts), delay, "after {attempts} failures");
    }
}

#[test]
fn a_failing_lane_is_retried_on_the_schedule_and_a_success_resets_it() {
    let mut h = Host::default();
    h.store(Lane::Mongo, None, "a=1");
    h.answers(Lane::Mongo, &[Answer::Down; 4]);
    let mut now = 10_000;
    let mut waits = Vec::new();
    for _ in 0..4 {
        h.run(now);
        let next = h.outbox.poll_timeout(now).expect("a retry is asked for");
        waits.push(next - now);
        // Coming back early delivers nothing.
        h.run(next - 1);
        assert!(h.applied.is_empty());
        now = next;
    }
    assert_eq!(waits, [1000, 2000, 4000, 8000]);
    h.run(now);
    assert_eq!(h.applied(Lane::Mongo), ["a=1"]);
    assert_eq!(h.outbox.poll_timeout(now), None, "nothing waits");
    // The next failure starts the schedule again.
    h.store(Lane::Mongo, None, "b=1");
    h.answers(Lane::Mongo, &[Answer::Down]);
    h.run(now);
    assert!(h.rows.values().any(|r| r.attempts == 1));
    assert_eq!(h.outbox.poll_timeout(now), Some(now + 1000));
}

#[test]
fn lanes_are_independent() {
    let mut h = Host::default();
    h.store(Lane::Mongo, None, "m=1");
    h.store(Lane::Redis, None, "r=1");
    h.store(Lane::Mongo, None, "m=2");
    h.store(Lane::Redis, None, "r=2");
    h.answers(Lane::Mongo, &[Answer::Down; 3]);
    h.run(0);
    assert_eq!(
        h.applied(Lane::Redis),
        ["r=1", "r=2"],
        "redis is not held up"
    );
    assert!(h.applied(Lane::Mongo).is_empty());
    assert_eq!(h.outbox.backing_off_until(Lane::Mongo, 0), Some(1000));
    assert_eq!(h.outbox.backing_off_until(Lane::Redis, 0), None);
    // A write to the healthy lane during the other's backoff goes out at once.
    h.store(Lane::Redis, None, "r=3");
    assert_eq!(h.outbox.poll_timeout(500), Some(500));
    h.run(500);
    assert_eq!(h.applied(Lane::Redis), ["r=1", "r=2", "r=3"]);
    assert!(h.applied(Lane::Mongo).is_empty());
    h.run_until_idle(500);
    assert_eq!(h.applied(Lane::Mongo), ["m=1", "m=2"]);
}

#[test]
fn order_within_a_lane_is_kept_through_failures() {
    let mut h = Host::default();
    for i in 1..=5 {
        h.store(Lane::Mongo, None, &format!("x={i}"));
    }
    // Fails at the third row: the fourth and fifth wait for it.
    h.answers(
        Lane::Mongo,
        &[Answer::Ok, Answer::Ok, Answer::Down, Answer::Down],
    );
    h.run_until_idle(0);
    assert_eq!(h.applied(Lane::Mongo), ["x=1", "x=2", "x=3", "x=4", "x=5"]);
    assert_eq!(h.db["x"], "5");
}

#[test]
fn one_run_per_lane_at_a_time() {
    let mut o = Outbox::new();
    o.queued(Lane::Mongo);
    assert_eq!(o.next_lane(0), Some(Lane::Mongo));
    assert_eq!(o.next_lane(0), None, "a second run would reorder the lane");
    assert_eq!(o.poll_timeout(0), None, "the run's end asks again");
    o.lane_done(Lane::Mongo, true);
    assert_eq!(
        o.poll_timeout(0),
        Some(0),
        "a full batch: come back at once"
    );
    assert_eq!(o.next_lane(0), Some(Lane::Mongo));
    o.lane_done(Lane::Mongo, false);
    assert_eq!(o.poll_timeout(0), None);
    assert_eq!(o.next_lane(0), None);
}

#[test]
fn batches_are_bounded_and_the_rest_follows_at_once() {
    let mut h = Host::default();
    for i in 0..(BATCH + 5) {
        h.store(Lane::Redis, None, &format!("k{i}=v"));
    }
    // One lane run delivers one batch; the host is asked back immediately.
    let lane = h.outbox.next_lane(7).expect("due");
    h.outbox.lane_done(lane, true);
    h.run(7);
    assert_eq!(
        h.applied.len(),
        BATCH + 5,
        "`run` loops while a lane is due"
    );
    assert_eq!(h.outbox.poll_timeout(7), None);
}

#[test]
fn a_refused_row_becomes_a_dead_letter_after_its_tries_and_the_lane_goes_on() {
    let table: [(&[Answer], usize, bool); 4] = [
        // answers for the first row, rows delivered, first row dead
        (&[Answer::Refuse], 2, false),
        (&[Answer::Refuse, Answer::Refuse], 2, false),
        (&[Answer::Refuse, Answer::Refuse, Answer::Refuse], 1, true),
        // Transient failures never bury: an outage delays data, it does not lose it.
        (&[Answer::Down; 20], 2, false),
    ];
    for (answers, delivered, dead) in table {
        let mut h = Host::default();
        h.store(Lane::Mongo, None, "bad=1");
        h.store(Lane::Mongo, None, "good=1");
        h.answers(Lane::Mongo, answers);
        h.run_until_idle(0);
        assert_eq!(h.applied.len(), delivered, "{answers:?}");
        assert_eq!(h.dead == ["bad=1"], dead, "{answers:?}");
        assert!(h.rows.is_empty());
    }
    let mut o = Outbox::new();
    let row = RowMeta {
        id: 1,
        lane: Lane::Redis,
        attempts: 0,
    };
    assert_eq!(o.report(&row, Outcome::Unreadable, 0), Verdict::Bury);
}

#[test]
fn a_delivery_whose_answer_was_lost_is_delivered_again_harmlessly() {
    let mut h = Host::default();
    h.store(Lane::Mongo, None, "crown=alice");
    h.store(Lane::Mongo, None, "settings=blue");
    h.answers(Lane::Mongo, &[Answer::AppliedButLost]);
    h.run_until_idle(0);
    assert_eq!(
        h.applied(Lane::Mongo),
        ["crown=alice", "crown=alice", "settings=blue"]
    );
    assert_eq!(h.db["crown"], "alice");
    assert_eq!(h.db["settings"], "blue");
}

#[test]
fn rows_left_by_a_crash_are_delivered_by_the_next_start() {
    let mut h = Host::default();
    h.store(Lane::Mongo, None, "a=1");
    h.store(Lane::Mongo, None, "b=1");
    h.answers(Lane::Mongo, &[Answer::AppliedButLost]);
    h.run(0);
    // The process dies: its delivery state is gone, the rows are not.
    let mut restarted = Outbox::new();
    assert_eq!(restarted.poll_timeout(0), None, "knows nothing yet");
    for lane in Lane::ALL {
        restarted.set_waiting(lane, h.rows.values().any(|r| r.lane == lane));
    }
    h.outbox = restarted;
    assert_eq!(h.outbox.poll_timeout(5), Some(5), "delivers at once");
    h.run_until_idle(5);
    assert_eq!(h.applied(Lane::Mongo), ["a=1", "a=1", "b=1"]);
    assert!(h.rows.is_empty());
}

#[test]
fn a_newer_write_of_the_same_fields_replaces_a_queued_one() {
    let mut h = Host::default();
    h.answers(Lane::Mongo, &[Answer::Down]);
    h.store(Lane::Mongo, Some("rooms/r/crown"), "crown=a");
    h.run(0);
    // During the outage the crown changes hands three times and chat goes on.
    h.store(Lane::Mongo, None, "chat1=hi");
    h.store(Lane::Mongo, Some("rooms/r/crown"), "crown=b");
    h.store(Lane::Mongo, None, "chat2=yo");
    h.store(Lane::Mongo, Some("rooms/r/crown"), "crown=c");
    assert_eq!(h.rows.len(), 3, "one row per field, plus the chat");
    h.run_until_idle(0);
    assert_eq!(h.applied(Lane::Mongo), ["chat1=hi", "chat2=yo", "crown=c"]);
    assert_eq!(h.db["crown"], "c");
}

fn crown(owner: Option<&str>) -> Change {
    Change::Crown(Crown {
        owner_user: owner.map(Into::into),
        ..Default::default()
    })
}

fn chat(id: u64) -> Change {
    Change::ChatAppended(ChatRecord {
        id,
        time: 1,
        participant_id: "p".into(),
        user_id: "u".into(),
        name: "n".into(),
        color: "c".into(),
        text: "t".into(),
    })
}

#[test]
fn only_each_fields_final_state_per_action_is_mirrored() {
    let settings = Change::Settings(Settings::defaults(RoomKind::Normal));
    let table: Vec<(Vec<Change>, Vec<Change>)> = vec![
        (vec![], vec![]),
        (vec![crown(Some("a"))], vec![crown(Some("a"))]),
        // A dropped crown: first ownerless, then remembering its owner.
        (vec![crown(None), crown(Some("a"))], vec![crown(Some("a"))]),
        (
            vec![crown(None), settings.clone(), crown(Some("b"))],
            vec![settings.clone(), crown(Some("b"))],
        ),
        // Each chat change is its own document: all of them, in order.
        (
            vec![
                chat(1),
                Change::ChatDeleted(1),
                chat(2),
                Change::ChatCleared,
            ],
            vec![
                chat(1),
                Change::ChatDeleted(1),
                chat(2),
                Change::ChatCleared,
            ],
        ),
        (
            vec![
                Change::Bans(vec![]),
                chat(3),
                Change::Mutes(vec![]),
                Change::Bans(vec![]),
            ],
            vec![chat(3), Change::Mutes(vec![]), Change::Bans(vec![])],
        ),
        (
            vec![Change::Password(None), Change::Discard],
            vec![Change::Password(None), Change::Discard],
        ),
    ];
    for (action, mirrored) in table {
        let got: Vec<Change> = final_changes(&action).into_iter().cloned().collect();
        assert_eq!(got, mirrored, "{action:?}");
    }
}

#[test]
fn lanes_round_trip_through_their_stored_names() {
    for lane in Lane::ALL {
        assert_eq!(Lane::parse(lane.as_str()), Some(lane));
        let json = serde_json::to_string(&lane).unwrap();
        assert_eq!(json, format!("\"{}\"", lane.as_str()));
    }
    assert_eq!(Lane::parse("kafka"), None);
}
