//! How a player shows in the room: name, colour and status changes (validated, broadcast, kept
//! in every connection's record so hibernation keeps them), the default colour, and cursor
//! positions (bounded and throttled).

use super::stored::Change;
use super::{ConnId, Effect, Out, Room, S, error, text};
use crate::Millis;
use crate::proto::{self, ErrorCode};
use sha2::{Digest, Sha256};

/// Cursor positions: at most one per 50 ms (20/s) per participant is relayed.
pub const CURSOR_MIN_INTERVAL_MS: u64 = 50;

impl Room {
    pub(super) fn on_profile(
        &mut self,
        conn: ConnId,
        m: usize,
        p: proto::UpdateProfile,
        out: &mut Out,
    ) {
        let name = match p
            .name
            .as_deref()
            .map(crate::names::display_name)
            .transpose()
        {
            Ok(n) => n,
            Err(e) => return error(out, conn, ErrorCode::InvalidValue, format!("name {e}")),
        };
        let color = match p.color.as_deref().map(text::color).transpose() {
            Ok(c) => c,
            Err(e) => return error(out, conn, ErrorCode::InvalidValue, &e),
        };
        let status = match p
            .status
            .as_deref()
            .map(|s| text::optional_line("status", s, text::MAX_STATUS_CHARS))
            .transpose()
        {
            Ok(s) => s,
            Err(e) => return error(out, conn, ErrorCode::InvalidValue, &e),
        };
        let member = &mut self.members[m];
        if let Some(n) = &name {
            member.info.name = n.clone();
        }
        if let Some(c) = &color {
            member.info.color = c.clone();
        }
        if let Some(s) = &status {
            member.info.status = s.clone();
        }
        let info = member.info.clone();
        for c in member.conns.clone() {
            if let Some(conn) = self.conns.get_mut(&c) {
                if name.is_some() {
                    conn.profile.name = name.clone();
                }
                if color.is_some() {
                    conn.profile.color = color.clone();
                }
                if let Some(s) = &status {
                    conn.profile.status = s.clone();
                }
            }
            out.extend(self.record(c).map(Effect::Remember));
        }
        if self.stored.crown.owner_user.as_deref() == Some(info.user_id.as_str()) && name.is_some()
        {
            self.stored.crown.owner_name = info.name.clone();
            out.push(Effect::Persist(Change::Crown(self.stored.crown.clone())));
        }
        self.send_to_all(
            S::ParticipantUpdated(proto::ParticipantUpdated {
                participant: Some(info),
            }),
            out,
        );
    }

    pub(super) fn on_cursor(
        &mut self,
        conn: ConnId,
        m: usize,
        x: f32,
        y: f32,
        now: Millis,
        out: &mut Out,
    ) {
        if !(x.is_finite()
            && y.is_finite()
            && (0.0..=100.0).contains(&x)
            && (0.0..=100.0).contains(&y))
        {
            return error(
                out,
                conn,
                ErrorCode::InvalidValue,
                "cursor x and y must be within 0-100",
            );
        }
        let member = &mut self.members[m];
        if member
            .last_cursor
            .is_some_and(|t| now < t + CURSOR_MIN_INTERVAL_MS)
        {
            return; // throttled: the next position carries the news
        }
        member.last_cursor = Some(now);
        let id = member.info.id.clone();
        self.send_to_others(
            conn,
            S::Cursor(proto::Cursor {
                participant_id: id,
                x,
                y,
            }),
            out,
        );
    }
}

/// A default colour per user, bright enough to read on a dark keyboard.
pub(super) fn color_for(user_id: &str) -> String {
    let d = Sha256::digest(format!("color:{user_id}").as_bytes());
    let hue = f64::from(u16::from_be_bytes([d[0], d[1]])) / 65536.0 * 360.0;
    let (r, g, b) = hsl_to_rgb(hue, 0.65, 0.6);
    format!("#{r:02x}{g:02x}{b:02x}")
}

pub(super) fn hsl_to_rgb(h: f64, s: f64, l: f64) -> (u8, u8, u8) {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = l - c / 2.0;
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    (to(r), to(g), to(b))
}
