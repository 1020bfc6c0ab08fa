//! AUTH PLAIN and LOGIN (RFC 4954) against argon2 hashes from the config.

use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordVerifier};

use crate::config::AuthUser;

/// A hash of a password nobody has, verified for unknown users so that a
/// failed login takes as long whether or not the user exists.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2VhbGdhdGVkdW1teQ$Xz3QK2Ttn8ZMdV8h1ks0Gq6QyD5Ns3O0qWyYv8n4m2s";

/// The configured users.
#[derive(Clone, Default)]
pub struct Users(Arc<Vec<AuthUser>>);

impl Users {
    /// Wraps the configured users.
    pub fn new(users: Vec<AuthUser>) -> Users {
        Users(Arc::new(users))
    }

    /// Whether any user is configured (AUTH is advertised only then).
    pub fn any(&self) -> bool {
        !self.0.is_empty()
    }

    /// Checks a name and password; slow on purpose (argon2), so it runs on
    /// the blocking pool.
    pub async fn verify(&self, name: String, password: Vec<u8>) -> bool {
        let users = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let hash = users
                .iter()
                .find(|u| u.name == name)
                .map(|u| u.password_hash.as_str());
            let known = hash.is_some();
            let Ok(parsed) = PasswordHash::new(hash.unwrap_or(DUMMY_HASH)) else {
                return false;
            };
            let ok = Argon2::default()
                .verify_password(&password, &parsed)
                .is_ok();
            ok && known
        })
        .await
        .unwrap_or(false)
    }
}

/// Hashes a password for the config (`sealgate hash-password`).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt_bytes = crate::util::try_random_bytes::<16>().map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Decodes an AUTH PLAIN response: `authzid NUL authcid NUL password`.
/// An authzid different from the authcid is refused (no proxy logins).
pub fn decode_plain(b64: &str) -> Option<(String, Vec<u8>)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let mut parts = raw.split(|&b| b == 0);
    let authz = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let user = String::from_utf8(user.to_vec()).ok()?;
    if !authz.is_empty() && authz != user.as_bytes() {
        return None;
    }
    Some((user, pass.to_vec()))
}

/// Decodes one base64 line of AUTH LOGIN.
pub fn decode_b64(b64: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decoding() {
        assert_eq!(
            decode_plain("AGFsaWNlAHNlY3JldA=="),
            Some(("alice".into(), b"secret".to_vec()))
        );
        assert_eq!(
            decode_plain("YWxpY2UAYWxpY2UAc2VjcmV0"),
            Some(("alice".into(), b"secret".to_vec()))
        );
        assert_eq!(
            decode_plain("Ym9iAGFsaWNlAHNlY3JldA=="),
            None,
            "authzid bob != alice"
        );
        assert_eq!(decode_plain("not base64!"), None);
    }

    #[tokio::test]
    async fn verify_hashes() {
        let hash = hash_password("correct horse").unwrap();
        let users = Users::new(vec![AuthUser {
            name: "app".into(),
            password_hash: hash,
        }]);
        assert!(users.verify("app".into(), b"correct horse".to_vec()).await);
        assert!(!users.verify("app".into(), b"wrong".to_vec()).await);
        assert!(
            !users
                .verify("nobody".into(), b"correct horse".to_vec())
                .await
        );
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
