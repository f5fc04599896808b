//! Room settings: who may change them ([`super::perms`]), validation (all or nothing), the room
//! password (hashed with a salt from the host's seed, never echoed), and what a change affects
//! (everyone is told; toggling Black MIDI re-evaluates every quota).

use super::perms::{self, Action, Actor};
use super::stored::{self, Change, PasswordHash};
use super::{ConnId, Effect, Out, Room, S, error, text};
use crate::Millis;
use crate::proto::{self, ErrorCode};
use sha2::{Digest, Sha256};

/// Largest room an owner may set; admins may go up to [`MAX_PLAYERS_ADMIN`].
pub const MAX_PLAYERS: u32 = 99;
pub const MAX_PLAYERS_ADMIN: u32 = 10_000;

impl Room {
    pub fn settings_proto(&self) -> proto::RoomSettings {
        let s = &self.stored.settings;
        proto::RoomSettings {
            visible: s.visible,
            has_password: self.stored.password.is_some(),
            max_players: s.max_players,
            owner_only_chat: s.owner_only_chat,
            owner_only_play: s.owner_only_play,
            allow_guests: s.allow_guests,
            allow_bots: s.allow_bots,
            allow_black_midi: s.allow_black_midi,
            welcome_message: s.welcome_message.clone(),
            color: s.color.clone(),
            profanity_filter: s.profanity_filter,
            kind: self.kind.as_str().into(),
        }
    }

    pub(super) fn on_settings(
        &mut self,
        conn: ConnId,
        m: usize,
        p: proto::UpdateSettings,
        now: Millis,
        out: &mut Out,
    ) {
        let actor = self.actor(m);
        if !perms::allowed(actor, Action::ChangeSettings) {
            return error(
                out,
                conn,
                ErrorCode::NotAllowed,
                "only the owner or a moderator may change settings",
            );
        }
        match self.patched_settings(actor, &p) {
            Ok(settings) => self.apply_settings(settings, p.password, now, out),
            Err((code, message)) => error(out, conn, code, message),
        }
    }

    /// The settings with `p` applied, if every given value is valid (all or nothing).
    pub(super) fn patched_settings(
        &self,
        actor: Actor,
        p: &proto::UpdateSettings,
    ) -> Result<stored::Settings, (ErrorCode, String)> {
        let invalid = |m: String| (ErrorCode::InvalidValue, m);
        let mut s = self.stored.settings.clone();
        if let Some(max) = p.max_players {
            if max == 0 || max > MAX_PLAYERS_ADMIN {
                return Err(invalid(format!("max players must be 1-{MAX_PLAYERS}")));
            }
            if max > MAX_PLAYERS && !perms::allowed(actor, Action::RaiseCapacity) {
                return Err((
                    ErrorCode::NotAllowed,
                    format!("only admins may set max players above {MAX_PLAYERS}"),
                ));
            }
            s.max_players = max;
        }
        if let Some(w) = &p.welcome_message {
            s.welcome_message = text::optional_line("welcome message", w, text::MAX_WELCOME_CHARS)
                .map_err(invalid)?;
        }
        if let Some(c) = &p.color {
            s.color = text::color(c).map_err(invalid)?;
        }
        if p.password
            .as_ref()
            .is_some_and(|pw| pw.chars().count() > text::MAX_PASSWORD_CHARS)
        {
            return Err(invalid(format!(
                "password is over {} characters",
                text::MAX_PASSWORD_CHARS
            )));
        }
        let flags = [
            (p.visible, &mut s.visible),
            (p.owner_only_chat, &mut s.owner_only_chat),
            (p.owner_only_play, &mut s.owner_only_play),
            (p.allow_guests, &mut s.allow_guests),
            (p.allow_bots, &mut s.allow_bots),
            (p.allow_black_midi, &mut s.allow_black_midi),
            (p.profanity_filter, &mut s.profanity_filter),
        ];
        for (new, field) in flags {
            if let Some(v) = new {
                *field = v;
            }
        }
        Ok(s)
    }

    /// Stores validated settings (and a new password, if given), tells everyone, and
    /// re-evaluates quotas when Black MIDI was toggled.
    pub(super) fn apply_settings(
        &mut self,
        settings: stored::Settings,
        password: Option<String>,
        now: Millis,
        out: &mut Out,
    ) {
        if let Some(pw) = password {
            self.stored.password = if pw.is_empty() {
                None
            } else {
                Some(PasswordHash::new(&pw, self.next_salt()))
            };
            out.push(Effect::Persist(Change::Password(
                self.stored.password.clone(),
            )));
        }
        let quotas_change = settings.allow_black_midi != self.stored.settings.allow_black_midi;
        self.stored.settings = settings;
        out.push(Effect::Persist(Change::Settings(
            self.stored.settings.clone(),
        )));
        self.send_to_all(
            S::SettingsChanged(proto::SettingsChanged {
                settings: Some(self.settings_proto()),
            }),
            out,
        );
        if quotas_change {
            for i in 0..self.members.len() {
                self.refresh_quota(i, now, out);
            }
        }
    }

    pub(super) fn next_salt(&mut self) -> Vec<u8> {
        self.salts_made += 1;
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(self.name.as_bytes());
        h.update(self.salts_made.to_le_bytes());
        h.finalize()[..16].to_vec()
    }
}
