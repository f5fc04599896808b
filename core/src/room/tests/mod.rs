//! The room's tests, one file per concern (named like the production files), all on one
//! harness ([`harness`]): a host's view of a room, and builders and decoders of frames.

mod harness;

mod admission;
mod budget;
mod chat;
mod counting;
mod crown;
mod directory;
mod hibernation;
mod invariants;
mod join;
mod lifecycle;
mod members;
mod moderation;
mod mpp;
mod notes;
mod perms;
mod profile;
mod resume;
mod resume_delivery;
mod settings;
mod stats;
mod wire;
