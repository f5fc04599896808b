//! Resuming through a failover and a hand-over in cluster mode (docs/resume.md §4): a real
//! `redis-server` and `k8s-fallback` replicas. The lease holder is killed with SIGKILL while a
//! performer keeps sending numbered note batches; every player resumes on the new holder and
//! every listener ends up with every batch. A drain's 1012 is resumable the same way.

mod common;

use common::*;
use e2e_tests::proto::{self, client_message, server_message::Msg};
use e2e_tests::{Client, Event, note_on};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Numbered batches the performer sends, one every [`EVERY`]: the kill comes in the middle.
const BATCHES: u32 = 80;
const EVERY: Duration = Duration::from_millis(50);
/// The first note (batch `i` plays `FIRST + i`).
const FIRST: u32 = 21;

async fn connect(url: &str) -> Client {
    Client::connect(url, &[]).await.expect("connect")
}

/// Resumes through `url` (the room may be moving: retried until `within`).
async fn resume_through(c: &mut Client, url: &str, within: Duration) -> proto::Resumed {
    c.conn.dial.url = url.to_owned();
    let deadline = Instant::now() + within;
    loop {
        if let Some(answer) = c.try_resume().await {
            return answer.expect("resumed, not refused");
        }
        assert!(Instant::now() < deadline, "could not resume through {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads (and drops) what arrives until `until` or the socket ends.
async fn pump(c: &mut Client, until: tokio::time::Instant) {
    while !c.is_gone() {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if c.next_event(left).await.is_none() {
            return;
        }
    }
}

/// A listener's notes from `performer` until it has all of them (resuming whenever its socket
/// ends), then a second more to catch late duplicates: how many times each note arrived. The
/// client stays open (others are still listening: they must not see it leave).
async fn listen(
    mut c: Client,
    performer: String,
    url: String,
) -> (BTreeMap<u32, u32>, u32, Client) {
    let mut got = BTreeMap::new();
    let mut resumes = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_from = None;
    loop {
        let complete = (FIRST..FIRST + BATCHES).all(|n| got.contains_key(&n));
        if complete && quiet_from.is_none() {
            quiet_from = Some(Instant::now());
        }
        if quiet_from.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing notes: {:?}",
            (FIRST..FIRST + BATCHES)
                .filter(|n| !got.contains_key(n))
                .collect::<Vec<_>>()
        );
        match c.next_event(Duration::from_millis(200)).await {
            Some(Event::Msg(Msg::Notes(b))) if b.sender_id == performer => {
                for e in &b.events {
                    if let Some(proto::note_event::Kind::NoteOn(n)) = &e.kind {
                        *got.entry(n.note).or_insert(0) += 1;
                    }
                }
            }
            Some(Event::Msg(Msg::ParticipantLeft(l))) => {
                panic!("nobody leaves during a failover: {l:?}")
            }
            Some(Event::Closed(_) | Event::Broken(_)) => {
                resume_through(&mut c, &url, Duration::from_secs(30)).await;
                resumes += 1;
            }
            _ => {}
        }
    }
    assert_eq!(c.resume.out_of_order, 0, "seq only grows");
    (got, resumes, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_resume_through_kill_9_of_the_lease_holder_and_no_batch_is_lost() {
    let redis = Redis::start();
    let env = vec![
        ("REDIS_URL", redis.url()),
        ("JWT_PRIVATE_KEY", e2e_tests::random_key_pem()),
        (
            "DATA_DIR",
            scratch_dir("cluster-resume").display().to_string(),
        ),
        ("RESUME_GRACE_MS", "30000".to_owned()),
    ];
    let mut replicas = vec![
        Replica::start("ra", &env),
        Replica::start("rb", &env),
        Replica::start("rc", &env),
    ];
    let room = format!("resume-jam-{}", e2e_tests::now_ms());
    let (ta, _) = guest(&replicas[0], "OnA").await;
    let (tb, _) = guest(&replicas[1], "Performer").await;
    let (tc, _) = guest(&replicas[2], "OnC").await;
    // The room starts on a (its first player): a listener there, the performer on b, a
    // listener on c.
    let mut on_a = connect(&replicas[0].ws_url(&room, &ta)).await;
    on_a.join().await;
    let mut performer = connect(&replicas[1].ws_url(&room, &tb)).await;
    performer.join().await;
    let mut on_c = connect(&replicas[2].ws_url(&room, &tc)).await;
    on_c.join().await;
    let info = get_json(&replicas[2].http(&format!("/api/rooms/{room}"))).await;
    assert_eq!(info["served_by"].as_str(), Some(replicas[0].id.as_str()));
    let perf_id = performer.id().to_owned();
    // Everyone is in: both listeners hear a first (unnumbered) batch.
    performer.send(note_on(FIRST + BATCHES, 1)).await;
    for l in [&mut on_a, &mut on_c] {
        l.recv_matching(|m| matches!(m, Msg::Notes(_)).then_some(()))
            .await;
    }

    // Listeners through the survivors: a's players come back through b.
    let listeners = [
        tokio::spawn(listen(
            on_a,
            perf_id.clone(),
            replicas[1].ws_url(&room, &ta),
        )),
        tokio::spawn(listen(
            on_c,
            perf_id.clone(),
            replicas[2].ws_url(&room, &tc),
        )),
    ];
    let url_b = replicas[1].ws_url(&room, &tb);
    let perf = tokio::spawn(async move {
        let mut resumes = 0;
        for i in 0..BATCHES {
            performer.send_numbered(note_on(FIRST + i, 90)).await;
            pump(&mut performer, tokio::time::Instant::now() + EVERY).await;
            if performer.is_gone() {
                let r = resume_through(&mut performer, &url_b, Duration::from_secs(30)).await;
                eprintln!("performer resumed: {r:?}");
                resumes += 1;
            }
        }
        // Until the room acknowledged every batch (re-sent after a resume if need be).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !performer.resume.unacked.is_empty() {
            assert!(Instant::now() < deadline, "{:?}", performer.resume.unacked);
            performer
                .send(client_message::Msg::Ping(proto::Ping { client_time: 1.0 }))
                .await;
            pump(&mut performer, tokio::time::Instant::now() + EVERY * 4).await;
            if performer.is_gone() {
                resume_through(&mut performer, &url_b, Duration::from_secs(30)).await;
                resumes += 1;
            }
        }
        (performer, resumes)
    });

    // kill -9 the lease holder mid-performance.
    tokio::time::sleep(EVERY * (BATCHES / 3)).await;
    replicas[0].kill();
    let killed_at = Instant::now();

    let (performer, perf_resumes) = perf.await.expect("performer");
    let mut done = vec![performer];
    let mut duplicates = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let (got, resumes, c) = l.await.expect("listener");
        done.push(c);
        let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
        eprintln!(
            "listener {i}: resumed {resumes} time(s), {} notes, duplicates {twice:?}",
            got.len()
        );
        assert!(resumes >= 1, "listener {i} lost its socket and resumed");
        duplicates.push(twice.len());
    }
    eprintln!(
        "failover with resume: performer resumed {perf_resumes} time(s), all done {:?} after the kill, duplicate batches per listener {duplicates:?}",
        killed_at.elapsed()
    );
    assert!(perf_resumes >= 1, "the performer resumed");
    // Exactly once through another replica: an entry is in Redis before its frame is
    // published. The dying holder's own listener may (rarely) have been sent a batch whose
    // entry had not reached Redis yet: re-sent by the performer, it then arrives twice.
    assert_eq!(duplicates[1], 0, "every batch reached c exactly once");
    for c in done {
        c.close().await;
    }
    drop(replicas);
}

/// A drain (SIGTERM) closes its players with 1012: they resume on the new holder, and nobody
/// sees anyone leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_closed_by_a_drain_resume_on_the_new_holder() {
    let redis = Redis::start();
    let env = vec![
        ("REDIS_URL", redis.url()),
        ("JWT_PRIVATE_KEY", e2e_tests::random_key_pem()),
        ("LEASE_TTL_MS", "30000".to_owned()),
    ];
    let mut a = Replica::start("resume-drain-a", &env);
    let b = Replica::start("resume-drain-b", &env);
    let room = format!("resume-handover-{}", e2e_tests::now_ms());
    let (ta, _) = guest(&a, "Owner").await;
    let (tb, _) = guest(&b, "Guest").await;
    let mut owner = connect(&a.ws_url(&room, &ta)).await;
    owner.join().await;
    let mut other = connect(&b.ws_url(&room, &tb)).await;
    other.join().await;
    let owner_id = owner.id().to_owned();
    owner.send_numbered(note_on(60, 90)).await;
    other
        .recv_matching(|m| matches!(m, Msg::Notes(_)).then_some(()))
        .await;

    let term = tokio::task::spawn_blocking(move || {
        let status = a.terminate();
        (a, status)
    });
    for p in [&mut owner, &mut other] {
        loop {
            match p.next_event(Duration::from_secs(10)).await {
                Some(Event::Msg(Msg::ParticipantLeft(l))) => panic!("nobody leaves: {l:?}"),
                Some(Event::Msg(_)) => continue,
                Some(Event::Closed(Some(f))) => break assert_eq!(u16::from(f.code), 1012),
                e => panic!("expected 1012, got {e:?}"),
            }
        }
    }
    let (_a, status) = term.await.expect("terminate");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    // Both come back through b, as the same participants.
    let url = b.ws_url(&room, &ta);
    let resumed = resume_through(&mut owner, &url, Duration::from_secs(10)).await;
    assert_eq!(resumed.you.map(|p| p.id), Some(owner_id.clone()));
    assert_eq!(resumed.last_client_seq, 1, "the batch before the drain");
    let url = b.ws_url(&room, &tb);
    resume_through(&mut other, &url, Duration::from_secs(10)).await;
    owner.send_numbered(note_on(61, 90)).await;
    loop {
        match other.recv().await {
            Msg::Notes(n) if n.sender_id == owner_id => break,
            Msg::ParticipantLeft(l) => panic!("nobody leaves in a hand-over: {l:?}"),
            _ => {}
        }
    }
    owner.close().await;
    other.close().await;
}
