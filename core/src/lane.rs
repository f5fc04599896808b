//! The outbox's lanes, one per backend: named here, apart from the outbox's rules, so the
//! metrics can name them too without depending on the outbox.

/// One ordered lane per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    Mongo,
    Redis,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Mongo, Lane::Redis];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Mongo => "mongo",
            Lane::Redis => "redis",
        }
    }

    /// The lane a stored row names (`None`: not a lane this version knows).
    pub fn parse(s: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// The lane's position in [`Lane::ALL`] (per-lane arrays in the outbox and the metrics).
    pub fn index(self) -> usize {
        match self {
            Lane::Mongo => 0,
            Lane::Redis => 1,
        }
    }
}
