//! The resume property (docs/resume.md): under any interleaving of drops, half-open sockets,
//! resumes, goodbyes, joins, messages, time and restarts, every client receives the room's
//! numbered messages meant for it gap-free and duplicate-free, or is told it cannot (a
//! snapshot, or a refused resume after which it joins anew); and every numbered note batch a
//! client sends reaches the room once, whatever it had to re-send.

use super::harness::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
enum Op {
    /// Client `c` plays a numbered batch (lost if its socket is dead).
    Play(u8),
    Chat(u8),
    /// The socket fails and the server notices.
    Drop(u8),
    /// The socket dies unnoticed (half-open): the server keeps sending into it.
    Vanish(u8),
    /// The client reconnects and resumes (or joins when it cannot).
    Back(u8),
    /// The client leaves with a goodbye, then joins again later on `Back`.
    Leave(u8),
    Ping(u8),
    Wait(u64),
    /// The host restarts: every socket is gone, only what it kept remains.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let c = || 0..3u8;
    prop_oneof![
        4 => c().prop_map(Op::Play),
        1 => c().prop_map(Op::Chat),
        2 => c().prop_map(Op::Drop),
        1 => c().prop_map(Op::Vanish),
        3 => c().prop_map(Op::Back),
        1 => c().prop_map(Op::Leave),
        1 => c().prop_map(Op::Ping),
        1 => (0..8_000u64).prop_map(Op::Wait),
        1 => Just(Op::Restart),
    ]
}

/// A client as the web client behaves (docs/resume.md §5).
#[derive(Default)]
struct Client {
    conn: Option<ConnId>,
    /// The connection it joined on: the room names it so through its resumes.
    chain: Option<ConnId>,
    /// Every connection it had since it joined (a frame sent to an older one it has not given
    /// up yet, half-open, is still meant for it).
    conns: BTreeSet<ConnId>,
    /// Its socket works (false: dropped or vanished, until `Back`).
    alive: bool,
    /// The server knows the socket is gone (dropped, or the host restarted).
    known_dead: bool,
    token: String,
    last_seq: u64,
    next_cseq: u64,
    /// Numbered batches not acknowledged yet.
    unacked: Vec<u64>,
    /// The room's numbered messages this client should get since it last (re)joined or got a
    /// snapshot, and what it got.
    expected: Vec<u64>,
    got: Vec<u64>,
    in_room: bool,
}

fn batch(cseq: u64, now: Millis) -> Vec<u8> {
    let mut b = notes_batch(now);
    // The batch carries its number, so listeners can tell each apart.
    if let Some(NoteEvent {
        kind: Some(E::NoteOn(n)),
        ..
    }) = b.events.first_mut()
    {
        n.note = 21 + (cseq % 88) as u32;
        n.velocity = 1 + (cseq / 88 % 126) as u32;
    }
    ClientMessage {
        msg: Some(M::Notes(b)),
        seq: cseq,
    }
    .encode_to_vec()
}

fn cseq_of(b: &proto::NoteBatch) -> Option<u64> {
    match b.events.first()?.kind.as_ref()? {
        E::NoteOn(n) => Some(u64::from(n.note - 21) + 88 * u64::from(n.velocity - 1)),
        _ => None,
    }
}

struct World {
    host: Host,
    clients: Vec<Client>,
    next_conn: ConnId,
    /// (user, cseq) of every note batch relayed, and how often.
    relayed: BTreeMap<(usize, u64), usize>,
    /// Every numbered broadcast's seq.
    numbered: BTreeSet<u64>,
}

impl World {
    fn user(i: usize) -> String {
        format!("u{i}")
    }

    /// Feeds an input and routes what the room sends: to live clients' inboxes, into the
    /// void for dead sockets.
    fn run(&mut self, input: Input<'_>) {
        let fx = self.host.input(input);
        self.route(&fx);
    }

    fn route(&mut self, fx: &[Effect]) {
        for e in fx {
            let (frame, to, except) = match e {
                Effect::Send { to, frame, .. } => (frame, Some(to.as_slice()), None),
                // What the host is asked to keep names every numbered broadcast, those with no
                // live target (only suspended connections want them) included.
                Effect::Keep(Keep::Replay(entry)) => (&entry.frame, None, Some(entry.except)),
                _ => continue,
            };
            let Ok(m) = ServerMessage::decode(frame.clone()) else {
                continue;
            };
            // A new numbered broadcast (replays carry an old number).
            if m.seq > 0 && self.numbered.insert(m.seq) {
                if let Some(SM::Notes(b)) = &m.msg
                    && let (Some(u), Some(c)) = (self.user_of(&b.sender_id), cseq_of(b))
                {
                    *self.relayed.entry((u, c)).or_default() += 1;
                }
                for cl in self.clients.iter_mut() {
                    let meant = match (to, except) {
                        (_, Some(except)) => cl.in_room && cl.chain.is_some() && cl.chain != except,
                        (Some(to), None) => {
                            cl.conns.iter().any(|c| to.contains(c)) || (cl.in_room && cl.known_dead)
                        }
                        (None, None) => false,
                    };
                    if meant {
                        cl.expected.push(m.seq);
                    }
                }
            }
            for t in to.unwrap_or_default() {
                let Some(i) = self
                    .clients
                    .iter()
                    .position(|c| c.conn == Some(*t) && c.alive)
                else {
                    continue;
                };
                self.deliver(i, m.clone());
            }
        }
    }

    fn user_of(&self, sender_id: &str) -> Option<usize> {
        (0..self.clients.len()).find(|i| pid(&World::user(*i)) == sender_id)
    }

    fn deliver(&mut self, i: usize, m: ServerMessage) {
        let cl = &mut self.clients[i];
        if m.seq > 0 {
            assert!(
                m.seq > cl.last_seq,
                "client {i}: {} after {}",
                m.seq,
                cl.last_seq
            );
            cl.last_seq = m.seq;
            cl.got.push(m.seq);
        }
        match m.msg {
            Some(SM::Joined(j)) => {
                cl.chain = cl.conn;
                cl.token = j.resume_token;
                cl.last_seq = cl.last_seq.max(j.seq);
                cl.in_room = true;
            }
            Some(SM::Resumed(r)) => {
                cl.token = r.resume_token;
                // A careless client re-sends all it kept (not only what came after
                // `last_client_seq`): the room must drop what it processed before.
                let _ = r.last_client_seq;
                if !r.complete {
                    // Told: from here on, the count starts again.
                    cl.expected.clear();
                    cl.got.clear();
                    cl.last_seq = r.snapshot.map_or(cl.last_seq, |j| j.seq.max(cl.last_seq));
                }
            }
            Some(SM::Pong(p)) => cl.unacked.retain(|s| *s > p.last_client_seq),
            _ => {}
        }
    }

    fn connect(&mut self, i: usize) -> ConnId {
        self.next_conn += 1;
        let conn = self.next_conn;
        self.clients[i].conn = Some(conn);
        self.clients[i].conns.insert(conn);
        self.clients[i].alive = true;
        self.clients[i].known_dead = false;
        self.run(Input::Connect {
            conn,
            identity: ident(&World::user(i)),
        });
        conn
    }

    fn send(&mut self, i: usize, bytes: &[u8]) {
        let Some(conn) = self.clients[i].conn.filter(|_| self.clients[i].alive) else {
            return;
        };
        self.run(Input::Frame {
            conn,
            frame: Frame::Binary(bytes),
        });
    }

    fn back(&mut self, i: usize) {
        if self.clients[i].alive && self.clients[i].in_room {
            return;
        }
        let conn = self.connect(i);
        let was_in = self.clients[i].in_room;
        if was_in {
            let (token, last_seq) = (self.clients[i].token.clone(), self.clients[i].last_seq);
            self.send(i, &client(M::Resume(proto::Resume { token, last_seq })));
            let resumed = self
                .host
                .take(conn)
                .iter()
                .any(|m| matches!(m, SM::Resumed(_)));
            if resumed {
                let now = self.host.now;
                for s in self.clients[i].unacked.clone() {
                    self.send(i, &batch(s, now));
                }
                return;
            }
            // Refused (the grace period ended): told, the client starts over.
            self.reset(i);
        }
        self.send(i, &client(M::Join(proto::Join::default())));
    }

    fn left(&mut self, i: usize) {
        let cl = &self.clients[i];
        assert_eq!(cl.got, cl.expected, "client {i} while in the room");
        self.reset(i);
    }

    fn reset(&mut self, i: usize) {
        let cl = &mut self.clients[i];
        cl.in_room = false;
        cl.unacked.clear();
        cl.conns = cl.conn.into_iter().collect();
        cl.expected.clear();
        cl.got.clear();
        cl.unacked.clear();
    }
}

proptest! {
    #[test]
    fn resumes_deliver_everything_once_or_say_so(
        ops in proptest::collection::vec(op(), 1..80),
        always in any::<bool>(),
    ) {
        check(ops, always)?;
    }
}

fn check(ops: Vec<Op>, always: bool) -> Result<(), TestCaseError> {
    {
        let mut w = World {
            host: Host::new("r"),
            clients: (0..3).map(|_| Client::default()).collect(),
            next_conn: 0,
            relayed: BTreeMap::new(),
            numbered: BTreeSet::new(),
        };
        let durability = if always {
            ReplayDurability::Always
        } else {
            ReplayDurability::WhileSuspended
        };
        w.host.room.keep_replay(durability);
        for i in 0..3 {
            w.back(i);
        }
        let mut restarted = false;
        for op in ops {
            w.host.advance(50);
            match op {
                Op::Play(c) => {
                    let i = c as usize;
                    if !w.clients[i].in_room {
                        continue;
                    }
                    w.clients[i].next_cseq += 1;
                    let s = w.clients[i].next_cseq;
                    w.clients[i].unacked.push(s);
                    let now = w.host.now;
                    w.send(i, &batch(s, now));
                }
                Op::Chat(c) => w.send(c as usize, &client(chat("hi"))),
                Op::Drop(c) => {
                    let i = c as usize;
                    if let Some(conn) = w.clients[i].conn.filter(|_| w.clients[i].alive) {
                        w.clients[i].alive = false;
                        w.clients[i].known_dead = true;
                        w.run(Input::Dropped { conn });
                    }
                }
                Op::Vanish(c) => w.clients[c as usize].alive = false,
                Op::Back(c) => w.back(c as usize),
                Op::Leave(c) => {
                    let i = c as usize;
                    if let Some(conn) = w.clients[i]
                        .conn
                        .filter(|_| w.clients[i].alive && w.clients[i].in_room)
                    {
                        // Whatever the room says after the goodbye is not for this client.
                        w.left(i);
                        w.clients[i].alive = false;
                        w.run(Input::Disconnect { conn });
                    }
                }
                Op::Ping(c) => w.send(
                    c as usize,
                    &client(M::Ping(proto::Ping { client_time: 1.0 })),
                ),
                Op::Wait(ms) => {
                    w.host.advance(ms);
                    w.run(Input::Tick);
                }
                Op::Restart => {
                    // Only a host that keeps every entry promises exactly-once across a crash
                    // (docs/resume.md §4); WhileSuspended hosts restart after idle time.
                    if !always {
                        continue;
                    }
                    restarted = true;
                    for cl in &mut w.clients {
                        cl.alive = false;
                        cl.known_dead = true;
                    }
                    let fx = w.host.wake(false);
                    w.host.room.keep_replay(durability);
                    w.route(&fx);
                }
            }
        }
        // Everyone comes back within the grace period and checks what it got.
        for i in 0..3 {
            w.back(i);
        }
        for i in 0..3 {
            let cl = &w.clients[i];
            prop_assert_eq!(
                &cl.got,
                &cl.expected,
                "client {} (restarted: {})",
                i,
                restarted
            );
        }
        for ((u, s), n) in &w.relayed {
            prop_assert_eq!(*n, 1, "batch {} of u{} relayed {} times", s, u, n);
        }
        // And the room processed every batch a client did not give up on (re-sent after the
        // resumes above, acknowledged by a ping).
        for i in 0..3 {
            w.send(i, &client(M::Ping(proto::Ping { client_time: 1.0 })));
            let cl = &w.clients[i];
            prop_assert!(
                !cl.in_room || cl.unacked.is_empty(),
                "u{} has {:?} unacknowledged",
                i,
                cl.unacked
            );
        }
    }
    Ok(())
}
