//! SMTP AUTH users: the credentials file (`[smtp] credentials`), one `user:hash` line per
//! user with an argon2 PHC hash as `knock passwd` prints it, `#` comments allowed. Owns
//! checking a user name and password; the SASL exchange (PLAIN, LOGIN) is the server
//! engine's, and the relay rule is ingest's.

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The users who may authenticate, with their password hashes.
#[derive(Clone)]
pub struct Credentials {
    users: Arc<HashMap<String, String>>,
    /// Checked for unknown users so that they take as long as known ones.
    decoy: Arc<String>,
}

// Hashes stay out of `{:?}` output.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} users)", self.users.len())
    }
}

impl Credentials {
    /// Reads the credentials file; errors name the file and line.
    pub fn load(path: &Path) -> anyhow::Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("smtp.credentials: reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("smtp.credentials: in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Credentials> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .with_context(|| format!("line {}: expected user:hash", i + 1))?;
            PasswordHash::new(hash)
                .map_err(|e| anyhow::anyhow!("line {}: not a password hash: {e}", i + 1))?;
            if users.insert(user.to_string(), hash.to_string()).is_some() {
                anyhow::bail!("line {}: user {user:?} is listed twice", i + 1);
            }
        }
        Ok(Credentials {
            users: Arc::new(users),
            decoy: Arc::new(hash_password("decoy password")?),
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Slow on purpose (argon2): call it off the runtime's
    /// worker threads, as [`Credentials::check`] does.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(hash) => (hash.as_str(), true),
            None => (self.decoy.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known
    }

    /// [`Credentials::verify`] on the blocking pool.
    pub async fn check(&self, user: String, password: String) -> bool {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.verify(&user, &password))
            .await
            .unwrap_or(false)
    }
}

/// An argon2id hash of `password` with a fresh salt, in PHC form.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_users_with_their_passwords_only() {
        let text = format!(
            "# relay users\nalice:{}\n\nbob:{}\n",
            hash_password("wonderland").unwrap(),
            hash_password("builder").unwrap()
        );
        let c = Credentials::parse(&text).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.verify("alice", "wonderland"));
        assert!(c.verify("bob", "builder"));
        assert!(!c.verify("alice", "builder"));
        assert!(!c.verify("carol", "wonderland"));
        assert!(
            !c.verify("carol", "decoy password"),
            "the decoy lets no one in"
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let e = Credentials::parse("alice\n").err().unwrap();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = Credentials::parse("alice:plaintext\n").err().unwrap();
        assert!(e.to_string().contains("not a password hash"), "{e}");
        let h = hash_password("x").unwrap();
        let e = Credentials::parse(&format!("a:{h}\na:{h}\n"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
