//! Who may do what in a room. One table, used by every handler and tested as a whole.

/// A privileged action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ChangeSettings,
    /// Set max players above [`super::MAX_PLAYERS`].
    RaiseCapacity,
    Kick,
    Ban,
    Unban,
    Mute,
    TransferOwnership,
    DropOwnership,
    DeleteOthersChat,
    ClearChat,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::ChangeSettings,
        Action::RaiseCapacity,
        Action::Kick,
        Action::Ban,
        Action::Unban,
        Action::Mute,
        Action::TransferOwnership,
        Action::DropOwnership,
        Action::DeleteOthersChat,
        Action::ClearChat,
    ];
}

/// What matters about the actor: its roles and whether it holds this room's crown.
#[derive(Debug, Clone, Copy, Default)]
pub struct Actor {
    pub owner: bool,
    pub moderator: bool,
    pub admin: bool,
}

impl Actor {
    pub fn from_roles(roles: &[String], owner: bool) -> Actor {
        Actor {
            owner,
            moderator: roles.iter().any(|r| r == "moderator"),
            admin: roles.iter().any(|r| r == "admin"),
        }
    }

    /// Moderators and admins act in every room.
    pub fn staff(&self) -> bool {
        self.moderator || self.admin
    }
}

pub fn allowed(actor: Actor, action: Action) -> bool {
    use Action::*;
    match action {
        ChangeSettings | Kick | Ban | Unban | Mute | TransferOwnership => {
            actor.owner || actor.staff()
        }
        RaiseCapacity => actor.admin,
        DropOwnership => actor.owner,
        DeleteOthersChat | ClearChat => actor.staff(),
    }
}

/// Moderation of a moderator or admin needs an admin: an owner cannot kick a moderator.
pub fn may_target(actor: Actor, target: Actor) -> bool {
    !target.staff() || actor.admin
}
