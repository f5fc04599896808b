//! The fidelity scenario's performance: a `.mid` file read with `midly` into timed note events,
//! and the piece shipped in `bench/fidelity/` (written by `bench fidelity-piece`).
//!
//! The piece: bars 1–19 of J. S. Bach's Prelude in C major, BWV 846 (1722, public domain),
//! encoded by hand from the score's harmonies (each bar's five notes as the written
//! sixteenth-note figure, twice; the bass held for the half bar, the tenor a sixteenth less),
//! humanized (±12 ms, velocities shaped by a seeded generator) with the sustain pedal changed
//! each bar, then a generated coda that is denser than Bach: two-octave runs in thirty-seconds
//! (16 notes/s) over held bass notes, block chords of six to eight notes struck together, and a
//! final pedalled chord. About 48 s at ♩ = 120, ~1,000 events.

use midly::num::{u4, u7, u15, u24, u28};
use midly::{Format, Header, MetaMessage, MidiMessage, Smf, Timing, TrackEvent, TrackEventKind};
use piano_core::proto::{self, note_event::Kind};
use std::path::{Path, PathBuf};

/// One event of the performance: when, from the piece's start, and what.
#[derive(Debug, Clone)]
pub struct Timed {
    pub at_us: u64,
    pub kind: Kind,
}

pub fn piece_path() -> PathBuf {
    e2e_tests::repo_root().join("bench/fidelity/bwv846-coda.mid")
}

/// Reads a Standard MIDI File (any format, metrical or timecode timing, tempo changes) into
/// note events in time order, channels kept. Note-on with velocity 0 is a note-off (the
/// protocol refuses velocity 0); aftertouch and system events are not piano events and go.
pub fn read(path: &Path) -> Result<Vec<Timed>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let smf = Smf::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    // Every track's events on one time line (tick, track, index keeps the file's order).
    let mut all = Vec::new();
    for (t, track) in smf.tracks.iter().enumerate() {
        let mut tick = 0u64;
        for (i, ev) in track.iter().enumerate() {
            tick += u64::from(ev.delta.as_int());
            all.push((tick, t, i, ev.kind));
        }
    }
    all.sort_by_key(|(tick, t, i, _)| (*tick, *t, *i));
    // Microseconds per tick: from the tempo (metrical) or the frame rate (timecode).
    let (metrical, per_tick_fixed) = match smf.header.timing {
        Timing::Metrical(ppq) => (Some(u64::from(ppq.as_int().max(1))), 0.0),
        Timing::Timecode(fps, sub) => (None, 1e6 / (f64::from(fps.as_f32()) * f64::from(sub))),
    };
    let mut tempo = 500_000u64; // µs per quarter note until a tempo event says otherwise
    let (mut last_tick, mut us) = (0u64, 0f64);
    let mut out = Vec::new();
    for (tick, _, _, kind) in all {
        us += (tick - last_tick) as f64
            * match metrical {
                Some(ppq) => tempo as f64 / ppq as f64,
                None => per_tick_fixed,
            };
        last_tick = tick;
        let at_us = us.round() as u64;
        let (channel, message) = match kind {
            TrackEventKind::Meta(MetaMessage::Tempo(t)) => {
                tempo = u64::from(t.as_int());
                continue;
            }
            TrackEventKind::Midi { channel, message } => (u32::from(channel.as_int()), message),
            _ => continue,
        };
        let kind = match message {
            MidiMessage::NoteOn { key, vel } if vel.as_int() > 0 => Kind::NoteOn(proto::NoteOn {
                note: key.as_int().into(),
                velocity: vel.as_int().into(),
                channel,
            }),
            MidiMessage::NoteOn { key, .. } | MidiMessage::NoteOff { key, .. } => {
                Kind::NoteOff(proto::NoteOff {
                    note: key.as_int().into(),
                    channel,
                })
            }
            MidiMessage::Controller { controller, value } if controller.as_int() < 120 => {
                Kind::ControlChange(proto::ControlChange {
                    control: controller.as_int().into(),
                    value: value.as_int().into(),
                    channel,
                })
            }
            MidiMessage::ProgramChange { program } => Kind::ProgramChange(proto::ProgramChange {
                program: program.as_int().into(),
                channel,
            }),
            MidiMessage::PitchBend { bend } => Kind::PitchBend(proto::PitchBend {
                value: bend.as_int().into(),
                channel,
            }),
            _ => continue,
        };
        out.push(Timed { at_us, kind });
    }
    Ok(out)
}

const PPQ: u32 = 480;
const SIXTEENTH: u32 = PPQ / 4;

/// BWV 846, bars 1–19: the five notes of each bar (MIDI numbers, C4 = 60).
const PRELUDE: [[u8; 5]; 19] = [
    [60, 64, 67, 72, 76],
    [60, 62, 69, 74, 77],
    [59, 62, 67, 74, 77],
    [60, 64, 67, 72, 76],
    [60, 64, 69, 76, 81],
    [60, 62, 66, 69, 74],
    [59, 62, 67, 74, 79],
    [59, 60, 64, 67, 72],
    [57, 60, 64, 67, 72],
    [50, 57, 62, 66, 72],
    [55, 59, 62, 67, 71],
    [55, 58, 64, 67, 73],
    [53, 57, 62, 69, 74],
    [53, 56, 62, 65, 71],
    [52, 55, 60, 67, 72],
    [52, 53, 57, 60, 65],
    [50, 53, 57, 60, 65],
    [43, 50, 55, 59, 65],
    [48, 52, 55, 60, 64],
];

/// Notes of a piece being written: (tick, order, event); order puts offs before ons at a tick.
struct Score {
    events: Vec<(u32, u8, MidiMessage)>,
    seed: u64,
}

impl Score {
    fn rand(&mut self) -> f64 {
        // xorshift64*: the same piece every time.
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        (self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A human's timing: ±12 ticks (±12 ms at ♩ = 120).
    fn human(&mut self, tick: u32) -> u32 {
        (f64::from(tick) + (self.rand() - 0.5) * 24.0).max(0.0) as u32
    }

    fn note(&mut self, tick: u32, len: u32, key: u8, vel: u8) {
        let on = self.human(tick);
        let off = (on + len)
            .saturating_sub(12 + (self.rand() * 20.0) as u32)
            .max(on + 10);
        let vel = (f64::from(vel) + (self.rand() - 0.5) * 12.0).clamp(1.0, 127.0) as u8;
        self.events.push((
            on,
            1,
            MidiMessage::NoteOn {
                key: u7::new(key),
                vel: u7::new(vel),
            },
        ));
        self.events.push((
            off,
            0,
            MidiMessage::NoteOff {
                key: u7::new(key),
                vel: u7::new(64),
            },
        ));
    }

    fn pedal(&mut self, down: u32, up: u32) {
        for (tick, value) in [(down, 127), (up, 0)] {
            let tick = self.human(tick);
            self.events.push((
                tick,
                2,
                MidiMessage::Controller {
                    controller: u7::new(64),
                    value: u7::new(value),
                },
            ));
        }
    }
}

/// Writes the shipped piece (see the module's comment) to `path`.
pub fn write_piece(path: &Path) -> Result<(), String> {
    let mut s = Score {
        events: Vec::new(),
        seed: 0x8460_1722,
    };
    let bar = 16 * SIXTEENTH;
    for (b, notes) in PRELUDE.iter().enumerate() {
        let start = b as u32 * bar;
        // Louder towards the middle, as most players shape it.
        let level = 56.0 + 18.0 * (std::f64::consts::PI * b as f64 / 18.0).sin();
        for half in 0..2 {
            let h = start + half * 8 * SIXTEENTH;
            s.note(h, 8 * SIXTEENTH, notes[0], level as u8 - 6);
            s.note(h + SIXTEENTH, 7 * SIXTEENTH, notes[1], level as u8 - 4);
            for rep in 0..2 {
                for (k, &key) in notes[2..].iter().enumerate() {
                    let tick = h + (2 + rep * 3 + k as u32) * SIXTEENTH;
                    s.note(tick, SIXTEENTH + 20, key, level as u8 + 2 * k as u8);
                }
            }
        }
        // Pedal changed just after each bar's bass note, lifted just before the next bar.
        s.pedal(start + 40, start + bar - 30);
    }
    // Coda: runs in thirty-seconds over held bass, block chords, a pedalled final chord.
    let thirty_second = SIXTEENTH / 2;
    let mut t = PRELUDE.len() as u32 * bar;
    let c_major = [0u8, 2, 4, 5, 7, 9, 11];
    let scale = |from: u8, steps: usize, up: bool| -> Vec<u8> {
        let degree = |n: i32| -> u8 {
            let (o, d) = (n.div_euclid(7), n.rem_euclid(7) as usize);
            (i32::from(from) + 12 * o + i32::from(c_major[d])) as u8
        };
        (0..steps as i32)
            .map(|i| degree(if up { i } else { -i }))
            .collect()
    };
    for (bass, run_from, up) in [
        (36u8, 60u8, true),
        (43, 84, false),
        (41, 65, true),
        (43, 89, false),
    ] {
        s.note(t, bar / 2, bass, 70);
        s.note(t, bar / 2, bass + 12, 64);
        s.pedal(t + 20, t + bar / 2 - 20);
        for (i, key) in scale(run_from, 15, up).into_iter().enumerate() {
            s.note(
                t + i as u32 * thirty_second,
                thirty_second + 10,
                key,
                60 + (i as u8 * 2),
            );
        }
        t += bar / 2;
    }
    let chords: [&[u8]; 6] = [
        &[36, 48, 55, 60, 64, 67, 72],
        &[41, 53, 57, 60, 65, 69, 72, 77],
        &[43, 55, 59, 62, 65, 67, 71],
        &[36, 48, 52, 55, 60, 64, 67, 72],
        &[38, 50, 57, 62, 65, 69],
        &[43, 55, 59, 62, 67, 71, 74],
    ];
    for chord in chords {
        s.pedal(t + 30, t + 2 * PPQ / 2 - 20);
        for &key in chord {
            s.note(t, PPQ / 2 + 40, key, 82);
        }
        t += PPQ;
    }
    s.pedal(t + 10, t + 4 * PPQ);
    for key in [24u8, 36, 48, 55, 60, 64, 67, 72, 76, 84] {
        s.note(t, 4 * PPQ, key, 76);
    }
    s.events.sort_by_key(|(tick, order, _)| (*tick, *order));
    let mut track = vec![TrackEvent {
        delta: u28::new(0),
        kind: TrackEventKind::Meta(MetaMessage::Tempo(u24::new(500_000))),
    }];
    let mut last = 0;
    for (tick, _, message) in s.events {
        track.push(TrackEvent {
            delta: u28::new(tick - last),
            kind: TrackEventKind::Midi {
                channel: u4::new(0),
                message,
            },
        });
        last = tick;
    }
    track.push(TrackEvent {
        delta: u28::new(0),
        kind: TrackEventKind::Meta(MetaMessage::EndOfTrack),
    });
    let mut smf = Smf::new(Header::new(
        Format::SingleTrack,
        Timing::Metrical(u15::new(PPQ as u16)),
    ));
    smf.tracks.push(track);
    let mut bytes = Vec::new();
    smf.write_std(&mut bytes).map_err(|e| e.to_string())?;
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}
