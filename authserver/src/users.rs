//! End users who log in at the authorization endpoint: name rules and Argon2id password
//! hashes (PHC strings, OWASP parameters: m=19 MiB, t=2, p=1).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Shortest and longest accepted password.
pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;

/// Usernames: 1–64 characters of letters, digits and `. _ @ -`.
pub fn valid_username(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 64
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

fn argon() -> Argon2<'static> {
    // Argon2id, version 0x13, the crate's defaults (m=19456 KiB, t=2, p=1).
    Argon2::default()
}

/// Hash a password into an Argon2id PHC string.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    argon()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Check a password against a stored PHC string. A malformed hash never verifies.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password, checked against when the user does not exist so that an
/// unknown name costs the same time as a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&crate::crypto::random_b64(24)).unwrap_or_else(|_| String::new())
    })
}

/// Memory one Argon2id check takes (19 MiB of blocks), rounded up with its overhead.
pub const CHECK_MIB: u64 = 20;

/// Memory for password checks when `TOLLGATE_PASSWORD_MEMORY_MIB` is not set and the
/// container has no memory limit.
pub const DEFAULT_MEMORY_MIB: u64 = 64;

/// The container's memory limit in MiB (cgroup v2 `memory.max`, or v1), if it has one.
fn cgroup_limit_mib() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    // cgroup v1 reports "no limit" as a number near i64::MAX.
    .find(|&b| b < (1 << 50))
    .map(|b| b / (1024 * 1024))
}

/// The memory budget for password checks: the configured one, or a quarter of the
/// container's memory limit, or [`DEFAULT_MEMORY_MIB`].
pub fn password_memory_mib(configured: Option<u64>) -> u64 {
    configured
        .or_else(|| cgroup_limit_mib().map(|m| m / 4))
        .unwrap_or(DEFAULT_MEMORY_MIB)
}

/// How many password checks may run at once within `budget_mib` (at least one).
pub fn password_slots(budget_mib: u64) -> usize {
    usize::try_from((budget_mib / CHECK_MIB).max(1)).unwrap_or(1)
}

/// How long a sign-in waits for a free password-check slot before it is answered 503.
pub const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Argon2 memory blocks (1 KiB each) of one check with this server's parameters.
const CHECK_BLOCKS: usize = Params::DEFAULT_M_COST as usize;

/// Check a password against a stored PHC string, computing in `memory` (a slot's buffer,
/// grown to the hash's `m` once) instead of a fresh allocation: the memory of the checks
/// is then exactly the slots' buffers, whatever the allocator keeps. A hash asking for
/// more memory than this server's parameters never verifies (none is ever made here).
fn verify_password_in(password: &str, phc: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(h.algorithm), Params::try_from(&h))
    else {
        return false;
    };
    let version = match h.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let need = params.block_count();
    if need > CHECK_BLOCKS {
        tracing::warn!(
            m_cost = params.m_cost(),
            "a stored password hash asks for more memory than a check may take"
        );
        return false;
    }
    if memory.len() < need {
        memory.resize(need, Block::new());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..])
        .is_ok()
        && crate::crypto::ct_eq(&out, expected.as_bytes())
}

/// The password checks running at once, bounded so that their memory (19 MiB each) stays
/// within a budget however many sign-ins arrive together. Each slot computes in its own
/// buffer, allocated on first use and kept: at most `size` buffers ever exist.
pub struct PasswordChecks {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    buffers: std::sync::Arc<std::sync::Mutex<Vec<Vec<Block>>>>,
    size: usize,
}

/// Every slot stayed busy for [`SLOT_WAIT`]: the caller answers 503 with `Retry-After`.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

impl PasswordChecks {
    pub fn new(slots: usize) -> PasswordChecks {
        let size = slots.max(1);
        PasswordChecks {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(size)),
            buffers: std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
            size,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Take every slot (tests: a server whose password checks are all busy).
    #[cfg(test)]
    pub async fn hold_all(&self) -> tokio::sync::OwnedSemaphorePermit {
        let n = u32::try_from(self.size).unwrap();
        self.slots.clone().acquire_many_owned(n).await.unwrap()
    }

    /// Verify `password` against `phc` (or, with `None`, against a dummy hash, so that an
    /// unknown user costs the same) on the blocking pool, holding a slot for the whole
    /// check.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, Busy> {
        let permit = match tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            _ => return Err(Busy),
        };
        let known = phc.is_some();
        let buffers = self.buffers.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let take = || {
                buffers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop()
                    .unwrap_or_default()
            };
            let mut memory = take();
            let phc = phc.unwrap_or_else(|| dummy_hash().to_string());
            let ok = verify_password_in(&password, &phc, &mut memory);
            buffers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(memory);
            ok
        })
        .await
        .unwrap_or(false);
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify_only_the_password() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
        assert!(!verify_password("correct horse", "not-a-hash"));
        assert_ne!(h, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn checks_in_a_slot_buffer_agree_with_the_reference() {
        let h = hash_password("correct horse").unwrap();
        let mut mem = Vec::new();
        assert!(verify_password_in("correct horse", &h, &mut mem));
        assert_eq!(mem.len(), CHECK_BLOCKS);
        assert!(!verify_password_in("correct horsE", &h, &mut mem));
        assert!(
            verify_password_in("correct horse", &h, &mut mem),
            "buffer reused"
        );
        assert!(!verify_password_in("correct horse", "not-a-hash", &mut mem));
        // A hash with more memory than a slot holds never verifies.
        let big = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(CHECK_BLOCKS as u32 * 2, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        assert!(verify_password("pw", &big));
        assert!(!verify_password_in("pw", &big, &mut mem));
    }

    #[test]
    fn password_slots_follow_the_memory_budget() {
        assert_eq!(password_slots(64), 3);
        assert_eq!(password_slots(40), 2);
        assert_eq!(password_slots(1), 1, "at least one");
        assert_eq!(password_memory_mib(Some(100)), 100);
        assert!(password_memory_mib(None) >= 1);
    }

    #[tokio::test]
    async fn password_checks_are_bounded_and_answer_busy() {
        let checks = PasswordChecks::new(1);
        let h = hash_password("correct horse").unwrap();
        assert_eq!(
            checks.verify("correct horse".into(), Some(h.clone())).await,
            Ok(true)
        );
        assert_eq!(checks.verify("correct horse".into(), None).await, Ok(false));
        let held = checks.hold_all().await;
        assert_eq!(
            checks.verify("correct horse".into(), Some(h.clone())).await,
            Err(Busy)
        );
        drop(held);
        assert_eq!(
            checks.verify("correct horse".into(), Some(h)).await,
            Ok(true)
        );
    }

    #[test]
    fn usernames() {
        assert!(valid_username("alice.b@example-1"));
        assert!(!valid_username(""));
        assert!(!valid_username("a b"));
        assert!(!valid_username("<script>"));
        assert!(!valid_username(&"a".repeat(65)));
    }
}
