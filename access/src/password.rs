//! Passwords: generated at random, kept only as argon2id hashes (salted and deliberately slow,
//! so a copied data directory does not give the passwords away). Verifying one costs tens of
//! milliseconds by design; `Authority` remembers verified credentials so a client pays it once.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::distributions::{Alphanumeric, DistString};

/// Characters in a generated password: about 250 bits, letters and digits only, so it survives
/// shells, YAML and connection strings unquoted.
pub const GENERATED_LEN: usize = 42;

pub fn generate() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, GENERATED_LEN)
}

/// The PHC string of `password` (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`: OWASP's
/// parameters, which the string records, so they can change without breaking old hashes).
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        // Only a salt or parameters out of argon2's range fail, and both are fixed here.
        .unwrap_or_default()
}

/// Whether `password` is the one `phc` was made from (false for a damaged hash too).
pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hash_verifies_its_password_only() {
        let pw = super::generate();
        assert_eq!(pw.len(), super::GENERATED_LEN);
        let phc = super::hash(&pw);
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains(&pw));
        assert!(super::verify(&pw, &phc));
        assert!(!super::verify("wrong", &phc));
        assert!(!super::verify(&pw, "not a hash"));
        assert_ne!(super::hash(&pw), phc, "salted");
    }
}
