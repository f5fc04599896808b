//! MPP key names ⇄ MIDI note numbers, and MPP velocities (0–1) ⇄ MIDI velocities (1–127).
//!
//! MPP names the 88 piano keys one octave lower than scientific pitch notation: MIDI 21 (A0) is
//! `a-1`, middle C (MIDI 60) is `c3`, MIDI 108 (C8) is `c7`; sharps take an `s` (`cs3`).

/// Lowest and highest MIDI notes MPP has a key for.
pub const LOWEST: u32 = 21;
pub const HIGHEST: u32 = 108;

const CLASSES: [&str; 12] = [
    "c", "cs", "d", "ds", "e", "f", "fs", "g", "gs", "a", "as", "b",
];

/// The MPP key for a MIDI note, or `None` outside the piano (MPP has no key to press).
pub fn name(note: u32) -> Option<String> {
    if !(LOWEST..=HIGHEST).contains(&note) {
        return None;
    }
    // Safe: note ≤ 108, so the octave is in -1..=7.
    let octave = (note / 12) as i32 - 2;
    Some(format!("{}{}", CLASSES[(note % 12) as usize], octave))
}

/// The MIDI note for an MPP key name, or `None` when it names no piano key.
pub fn note(name: &str) -> Option<u32> {
    // The pitch class is the letters; the octave the rest (`-1` or one digit).
    let split = name.find(|c: char| c == '-' || c.is_ascii_digit())?;
    let (class, octave) = name.split_at(split);
    let class = CLASSES.iter().position(|c| *c == class)? as i32;
    let octave: i32 = match octave {
        "-1" => -1,
        d if d.len() == 1 => d.parse().ok()?,
        _ => return None,
    };
    let midi = (octave + 2) * 12 + class;
    u32::try_from(midi)
        .ok()
        .filter(|n| (LOWEST..=HIGHEST).contains(n))
}

/// MPP velocity (0–1) for a MIDI velocity.
pub fn mpp_velocity(velocity: u32) -> f64 {
    f64::from(velocity.min(127)) / 127.0
}

/// MIDI velocity (1–127) for an MPP velocity; out-of-range values are clamped (MPP's own
/// servers clamp too), and 0 still sounds (a note on of velocity 0 is not a note here).
pub fn midi_velocity(v: f64) -> u32 {
    if !v.is_finite() {
        return 64;
    }
    ((v.clamp(0.0, 1.0) * 127.0).round() as u32).clamp(1, 127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_ends_and_middle_c() {
        for (midi, mpp) in [
            (21, "a-1"),
            (22, "as-1"),
            (23, "b-1"),
            (24, "c0"),
            (60, "c3"),
            (61, "cs3"),
            (69, "a3"),
            (107, "b6"),
            (108, "c7"),
        ] {
            assert_eq!(name(midi).as_deref(), Some(mpp), "{midi}");
            assert_eq!(note(mpp), Some(midi), "{mpp}");
        }
    }

    #[test]
    fn every_piano_key_round_trips_and_nothing_else_has_a_name() {
        for midi in 0..=127 {
            match name(midi) {
                Some(n) => assert_eq!(note(&n), Some(midi)),
                None => assert!(!(LOWEST..=HIGHEST).contains(&midi)),
            }
        }
        for bad in [
            "", "c", "h3", "c8", "b-1x", "c-2", "cs", "C3", "c33", "a-2", "gs7", "-1",
        ] {
            assert_eq!(note(bad), None, "{bad}");
        }
    }

    #[test]
    fn velocities_round_trip_and_clamp() {
        for v in 1..=127 {
            assert_eq!(midi_velocity(mpp_velocity(v)), v);
        }
        assert_eq!(midi_velocity(0.0), 1);
        assert_eq!(midi_velocity(1.5), 127);
        assert_eq!(midi_velocity(-3.0), 1);
        assert_eq!(midi_velocity(f64::NAN), 64);
        assert_eq!(midi_velocity(0.5), 64);
    }
}
