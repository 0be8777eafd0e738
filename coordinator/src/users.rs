//! The web view's users: a name, a role, and an argon2id hash of their password (the PHC
//! string, salt and parameters in it). The password itself is never stored or logged.
//!
//! Roles, each with what the one below may do:
//! - `viewer`: sees the fleet, the jobs, the containers and the audit trail; no action.
//! - `operator`: creates, cancels, destroys and runs day-two jobs (on the nodes the policy lets
//!   the web view's identity act on: the agents decide that, not the web view).
//! - `admin`: manages users as well.

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash};

/// A user's role in the web view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether this role may submit, cancel, destroy and run day-two jobs.
    pub fn acts(self) -> bool {
        self >= Role::Operator
    }
}

/// The shortest password a user may have.
pub const MIN_PASSWORD: usize = 12;

/// A user name: 1–32 of `a-z 0-9 . _ -`, beginning with a letter (it is shown in the audit
/// trail and signed into requests, so it stays plain).
pub fn check_name(name: &str) -> Result<(), String> {
    if pvefleet_schemas::signing::is_user_name(name) {
        Ok(())
    } else {
        Err(format!("`{name}` is not a user name: 1 to 32 of a-z, 0-9, `.`, `_`, `-`, beginning with a letter"))
    }
}

pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(format!("a password needs at least {MIN_PASSWORD} characters"));
    }
    Ok(())
}

/// The argon2id hash of `password` (PHC string), with a fresh salt and the crate's defaults
/// (19 MiB, 2 passes: OWASP's recommendation).
pub fn hash(password: &str) -> anyhow::Result<String> {
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// Whether `password` is the one `phc` was made from (in constant time, by the crate).
pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// [`verify`] on a blocking thread, at most two at once: an argon2 check takes tens of
/// milliseconds of CPU and 19 MiB, which must not stall the pages and live streams.
pub async fn verify_off_runtime(password: String, phc: String) -> bool {
    static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    let Ok(_permit) = CHECKS.acquire().await else { return false };
    let password = zeroize::Zeroizing::new(password);
    tokio::task::spawn_blocking(move || verify(&password, &phc)).await.unwrap_or(false)
}

/// What a login compares against when the user does not exist: the same work as a real
/// check, so the time taken does not tell which names exist.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("not a password anyone has").expect("argon2 hashes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let phc = hash("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify("correct horse battery", &phc));
        assert!(!verify("correct horse batterx", &phc));
        assert!(!verify("correct horse battery", "not a phc string"));
        assert_ne!(hash("correct horse battery").unwrap(), phc, "each hash has its own salt");
    }

    #[test]
    fn names_roles_and_passwords_are_checked() {
        assert!(check_name("alice").is_ok() && check_name("ops.bot-1").is_ok());
        for bad in ["", "Alice", "1alice", "a b", "alice<script>", &"a".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
        assert_eq!(Role::parse("root"), None);
        assert!(Role::Admin.acts() && Role::Operator.acts() && !Role::Viewer.acts());
        assert!(check_password("short").is_err() && check_password("twelve chars").is_ok());
    }
}
