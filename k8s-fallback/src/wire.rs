//! The messages replicas exchange through Redis pub/sub, in a small binary encoding.
//!
//! Player frames cross this hop once per relay, so they travel as raw bytes (no JSON, no base64)
//! and a broadcast is published once per target replica with the list of its connections.
//! Every message is addressed to one replica's channel ([`crate::cluster::replica_channel`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use piano_core::identity::Identity;
use piano_core::room::{ConnId, Delivery, Protocol};

#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    /// Follower → lease holder: a player connected on the follower (`from`).
    Connect {
        room: String,
        conn: ConnId,
        from: String,
        identity: Identity,
        protocol: Protocol,
    },
    /// Follower → lease holder: a frame from that player. `at_us` is when the follower read it
    /// (wall clock, µs), carried through to measure relay latency across replicas.
    Frame {
        room: String,
        conn: ConnId,
        binary: bool,
        at_us: u64,
        data: Bytes,
    },
    /// Follower → lease holder: the player's socket closed; `dropped`: without a goodbye
    /// (`Input::Dropped`: the room may keep the place for a resume).
    Disconnect {
        room: String,
        conn: ConnId,
        dropped: bool,
    },
    /// Lease holder → follower: send `data` to these local connections (`delivery`: whether
    /// it may be skipped for one that fell behind).
    Deliver {
        at_us: u64,
        conns: Vec<ConnId>,
        data: Bytes,
        delivery: Delivery,
    },
    /// Lease holder → follower: close this connection.
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    /// Lease holder → follower: this MPP connection left for `room` (`Effect::ChangeRoom`).
    Move {
        conn: ConnId,
        room: String,
        frame: String,
    },
}

const CONNECT: u8 = 1;
const FRAME: u8 = 2;
const DISCONNECT: u8 = 3;
const DELIVER: u8 = 4;
const CLOSE: u8 = 5;
const MOVE: u8 = 6;
/// A `Deliver` of a frame that may be skipped: its own tag, so a replica of an older version
/// drops it (a note batch) during a rolling update rather than misreading it.
const DELIVER_FRESH: u8 = 7;
/// A `Disconnect` without a goodbye: its own tag, so the layout stays that of `DISCONNECT`.
const DROPPED: u8 = 8;

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn take_u8(b: &mut Bytes) -> Option<u8> {
    (b.remaining() >= 1).then(|| b.get_u8())
}

fn take_u16(b: &mut Bytes) -> Option<u16> {
    (b.remaining() >= 2).then(|| b.get_u16())
}

fn take_u32(b: &mut Bytes) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32())
}

fn take_u64(b: &mut Bytes) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}

fn take_bytes(b: &mut Bytes) -> Option<Bytes> {
    let n = take_u32(b)? as usize;
    (b.remaining() >= n).then(|| b.split_to(n))
}

fn take_str(b: &mut Bytes) -> Option<String> {
    String::from_utf8(take_bytes(b)?.to_vec()).ok()
}

impl Wire {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        match self {
            Wire::Connect {
                room,
                conn,
                from,
                identity,
                protocol,
            } => {
                b.put_u8(CONNECT);
                put_str(&mut b, room);
                b.put_u64(*conn);
                put_str(&mut b, from);
                put_str(&mut b, &serde_json::to_string(identity).unwrap_or_default());
                // Only MPP connections carry the byte: a protobuf Connect stays as replicas of
                // the previous version read it (rolling upgrades).
                if *protocol == Protocol::Mpp {
                    b.put_u8(1);
                }
            }
            Wire::Frame {
                room,
                conn,
                binary,
                at_us,
                data,
            } => {
                b.reserve(data.len() + room.len() + 32);
                b.put_u8(FRAME);
                put_str(&mut b, room);
                b.put_u64(*conn);
                b.put_u8(u8::from(*binary));
                b.put_u64(*at_us);
                b.put_u32(data.len() as u32);
                b.put_slice(data);
            }
            Wire::Disconnect {
                room,
                conn,
                dropped,
            } => {
                b.put_u8(if *dropped { DROPPED } else { DISCONNECT });
                put_str(&mut b, room);
                b.put_u64(*conn);
            }
            Wire::Deliver {
                at_us,
                conns,
                data,
                delivery,
            } => {
                b.reserve(data.len() + conns.len() * 8 + 16);
                b.put_u8(match delivery {
                    Delivery::Reliable => DELIVER,
                    Delivery::Fresh => DELIVER_FRESH,
                });
                b.put_u64(*at_us);
                b.put_u32(conns.len() as u32);
                for c in conns {
                    b.put_u64(*c);
                }
                b.put_u32(data.len() as u32);
                b.put_slice(data);
            }
            Wire::Close { conn, code, reason } => {
                b.put_u8(CLOSE);
                b.put_u64(*conn);
                b.put_u16(*code);
                put_str(&mut b, reason);
            }
            Wire::Move { conn, room, frame } => {
                b.put_u8(MOVE);
                b.put_u64(*conn);
                put_str(&mut b, room);
                put_str(&mut b, frame);
            }
        }
        b.freeze()
    }

    /// `None` for anything malformed (another version, a stray publisher): it is dropped.
    pub fn decode(mut b: Bytes) -> Option<Wire> {
        let b = &mut b;
        let wire = match take_u8(b)? {
            CONNECT => Wire::Connect {
                room: take_str(b)?,
                conn: take_u64(b)?,
                from: take_str(b)?,
                identity: serde_json::from_str(&take_str(b)?).ok()?,
                protocol: match take_u8(b) {
                    None => Protocol::Protobuf,
                    Some(1) => Protocol::Mpp,
                    Some(_) => return None,
                },
            },
            FRAME => Wire::Frame {
                room: take_str(b)?,
                conn: take_u64(b)?,
                binary: take_u8(b)? != 0,
                at_us: take_u64(b)?,
                data: take_bytes(b)?,
            },
            tag @ (DISCONNECT | DROPPED) => Wire::Disconnect {
                room: take_str(b)?,
                conn: take_u64(b)?,
                dropped: tag == DROPPED,
            },
            tag @ (DELIVER | DELIVER_FRESH) => {
                let at_us = take_u64(b)?;
                let n = take_u32(b)? as usize;
                if b.remaining() < n.saturating_mul(8) {
                    return None;
                }
                let conns = (0..n).map(|_| b.get_u64()).collect();
                Wire::Deliver {
                    at_us,
                    conns,
                    data: take_bytes(b)?,
                    delivery: match tag {
                        DELIVER_FRESH => Delivery::Fresh,
                        _ => Delivery::Reliable,
                    },
                }
            }
            CLOSE => Wire::Close {
                conn: take_u64(b)?,
                code: take_u16(b)?,
                reason: take_str(b)?,
            },
            MOVE => Wire::Move {
                conn: take_u64(b)?,
                room: take_str(b)?,
                frame: take_str(b)?,
            },
            _ => return None,
        };
        b.is_empty().then_some(wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let all = [
            Wire::Connect {
                room: "lobby ü".into(),
                conn: 7,
                from: "r1".into(),
                identity: Identity {
                    user_id: "guest:1".into(),
                    name: "Ada".into(),
                    roles: vec!["guest".into()],
                    // The fields a room needs across replicas travel too.
                    session_id: Some("s1".into()),
                    expires_at: Some(1_700_000_000_000),
                    network: Some("abc123".into()),
                },
                protocol: Protocol::Mpp,
            },
            Wire::Frame {
                room: "x".into(),
                conn: u64::MAX,
                binary: true,
                at_us: 5,
                data: Bytes::from_static(b"\x00\x01"),
            },
            Wire::Disconnect {
                room: "x".into(),
                conn: 1,
                dropped: false,
            },
            Wire::Disconnect {
                room: "x".into(),
                conn: 2,
                dropped: true,
            },
            Wire::Deliver {
                at_us: 9,
                conns: vec![1, 2, 3],
                data: Bytes::from_static(b"abc"),
                delivery: Delivery::Reliable,
            },
            Wire::Deliver {
                at_us: 0,
                conns: vec![4],
                data: Bytes::from_static(b"notes"),
                delivery: Delivery::Fresh,
            },
            Wire::Close {
                conn: 3,
                code: 1012,
                reason: "moved".into(),
            },
            Wire::Move {
                conn: 4,
                room: "r ü".into(),
                frame: r#"[{"m":"ch","_id":"r ü"}]"#.into(),
            },
        ];
        for w in all {
            let enc = w.encode();
            assert_eq!(Wire::decode(enc.clone()).as_ref(), Some(&w));
            // Every truncation is refused, never a panic; but an MPP Connect without its last
            // byte is a protobuf one (the byte is only there for MPP).
            for cut in 0..enc.len() {
                let got = Wire::decode(enc.slice(..cut));
                let mpp_connect = matches!(
                    &w,
                    Wire::Connect {
                        protocol: Protocol::Mpp,
                        ..
                    }
                );
                if mpp_connect && cut == enc.len() - 1 {
                    assert!(matches!(
                        got,
                        Some(Wire::Connect {
                            protocol: Protocol::Protobuf,
                            ..
                        })
                    ));
                } else {
                    assert_eq!(got, None);
                }
            }
        }
        assert_eq!(Wire::decode(Bytes::from_static(b"\x09")), None);
        assert_eq!(
            Wire::decode(Bytes::from_static(b"\x04\0\0\0\0\0\0\0\0\xff\xff\xff\xff")),
            None
        );
    }
}
