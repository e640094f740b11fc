//! Passwords: generated at random, kept only as argon2id hashes (salted and deliberately slow,
//! so a copied data directory does not give the passwords away). Verifying one costs tens of
//! milliseconds by design; `Authority` remembers verified credentials so a client pays it once.

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::distributions::{Alphanumeric, DistString};

/// Characters in a generated password: about 250 bits, letters and digits only, so it survives
/// shells, YAML and connection strings unquoted.
pub const GENERATED_LEN: usize = 42;

/// The least capacity reserved for argon2's working memory (19 MiB at our parameters). glibc's
/// malloc serves an allocation above its largest dynamic mmap threshold (32 MiB on 64-bit, 16 on
/// 32-bit) with a mapping of its own every time, and unmaps it on free. Allocated at its own size,
/// the first hash's memory is mapped, but freeing it raises glibc's threshold to 19 MiB, so the
/// next hash's memory comes from the heap and stays resident after it is freed: a first `serve`
/// that hashes the `admin` token's two passwords kept 19 MiB until exit (issue 16). The pages
/// past the blocks argon2 uses are never touched: they cost address space, not memory.
const WORKING_MEMORY_RESERVE_BYTES: usize = 33 << 20;

pub fn generate() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, GENERATED_LEN)
}

/// The PHC string of `password` (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`: OWASP's
/// parameters, which the string records, so they can change without breaking old hashes).
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let hasher = Argon2::default();
    let params = hasher.params().clone();
    let phc = || -> Option<String> {
        let output = hash_into_output(&hasher, &params, password, &salt.as_salt())?;
        let phc = PasswordHash {
            algorithm: Algorithm::default().ident(),
            version: Some(Version::default().into()),
            params: ParamsString::try_from(&params).ok()?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Some(phc.to_string())
    };
    // Only a salt or parameters out of argon2's range fail, and both are fixed here.
    phc().unwrap_or_default()
}

/// Whether `password` is the one `phc` was made from (false for a damaged hash too).
pub fn verify(password: &str, phc: &str) -> bool {
    let check = || -> Option<bool> {
        let parsed = PasswordHash::new(phc).ok()?;
        let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
        let version = match parsed.version {
            Some(v) => Version::try_from(v).ok()?,
            None => Version::default(),
        };
        let params = Params::try_from(&parsed).ok()?;
        let expected = parsed.hash?;
        let hasher = Argon2::new(algorithm, version, params.clone());
        let computed = hash_into_output(&hasher, &params, password, &parsed.salt?)?;
        // `Output`'s comparison takes the same time wherever the first difference is.
        Some(computed == expected)
    };
    check().unwrap_or(false)
}

/// Argon2 of `password` with `salt`, its working memory reserved as
/// [`WORKING_MEMORY_RESERVE_BYTES`] says; what `PasswordHasher::hash_password` computes.
fn hash_into_output(
    hasher: &Argon2<'_>,
    params: &Params,
    password: &str,
    salt: &argon2::password_hash::Salt<'_>,
) -> Option<Output> {
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).ok()?;
    let blocks_needed = params.block_count();
    let reserve = blocks_needed.max(WORKING_MEMORY_RESERVE_BYTES / std::mem::size_of::<Block>());
    let mut memory = Vec::with_capacity(reserve);
    memory.resize(blocks_needed, Block::default());
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    Output::init_with(output_len, |out| {
        hasher
            .hash_password_into_with_memory(password.as_bytes(), salt_bytes, out, &mut memory)
            .map_err(Into::into)
    })
    .ok()
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

    /// Our hashing reserves its own memory; the strings must stay argon2's own, both ways, or
    /// hashes stored before (and seeds made elsewhere) would stop verifying.
    #[test]
    fn hashes_are_argon2s_own_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
        use argon2::{Argon2, PasswordHash};
        let theirs = Argon2::default()
            .hash_password(
                b"s3cret",
                &SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap(),
            )
            .unwrap()
            .to_string();
        assert!(super::verify("s3cret", &theirs));
        assert!(!super::verify("s3cret!", &theirs));
        let ours = super::hash("s3cret");
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"s3cret", &parsed)
            .is_ok());
        // Other parameters, as a PHC string records them, verify too.
        let params = argon2::Params::new(1024, 1, 2, None).unwrap();
        let other = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"pw", &SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap())
            .unwrap()
            .to_string();
        assert!(super::verify("pw", &other));
        assert!(!super::verify("pw2", &other));
    }
}
