//! Password hashing: PBKDF2-HMAC-SHA256 with a random salt, compared in constant time.
//!
//! PBKDF2 rather than a memory-hard KDF: Workers give a request little CPU and 128 MiB of
//! memory shared by the isolate, and argon2/scrypt at a useful cost would exceed either. The
//! iteration count is stored with each hash, so it can be raised without invalidating old ones.

use hmac::Hmac;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Room passwords guard a room, not an account, and are checked on every join.
pub const ROOM_ITERATIONS: u32 = 10_000;
/// Account passwords (see README for the measured cost on workerd).
pub const ACCOUNT_ITERATIONS: u32 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordHash {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub hash: Vec<u8>,
}

impl PasswordHash {
    /// A room password's hash.
    pub fn new(password: &str, salt: Vec<u8>) -> PasswordHash {
        PasswordHash::with_iterations(password, salt, ROOM_ITERATIONS)
    }

    pub fn with_iterations(password: &str, salt: Vec<u8>, iterations: u32) -> PasswordHash {
        let hash = derive(password, &salt, iterations);
        PasswordHash {
            salt,
            iterations,
            hash,
        }
    }

    pub fn verify(&self, password: &str) -> bool {
        use subtle::ConstantTimeEq;
        derive(password, &self.salt, self.iterations)
            .ct_eq(&self.hash)
            .into()
    }
}

fn derive(password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    // Only fails for an output length HMAC cannot produce; 32 bytes always works.
    let _ = pbkdf2::pbkdf2::<Hmac<Sha256>>(password.as_bytes(), salt, iterations, &mut out);
    out
}
