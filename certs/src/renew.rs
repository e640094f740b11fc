//! Renewing a server certificate from its CA before it expires, and its days-to-expiry as a
//! number a metric can report.
//!
//! The proxy calls [`renew_if_due`] on a timer ([`next_check_in`] says when). New files are
//! written atomically (temp + rename), so a file watcher sees the old chain or the new one,
//! never a torn file. By default the key is kept, so chain and key always match on disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use time::OffsetDateTime;

use crate::files::{self, CERT_MODE, KEY_MODE};
use crate::gen::{self, Ca};
use crate::inspect::{self, CertInfo};
use crate::CertError;

/// Default fraction of a certificate's lifetime after which it is renewed (80%, as IoT Edge).
pub const DEFAULT_RENEW_AT_FRACTION: f64 = 0.8;
/// Default longest wait between two renewal checks.
pub const DEFAULT_MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest wait between two renewal checks, so a failing renewal does not spin.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// When and how to renew.
#[derive(Clone, Debug)]
pub struct RenewPolicy {
    /// Renew once this fraction of the lifetime (not_before..not_after) has passed; 0 < f <= 1.
    pub renew_at_fraction: f64,
    /// Lifetime of the renewed certificate; `None` keeps the old certificate's lifetime.
    pub validity: Option<Duration>,
    /// Generate a new key instead of keeping the old one. The key file is replaced before the
    /// chain, so a reader may briefly see the new key with the old chain: a reloader must keep
    /// its last good config when the pair does not match (rustls refuses the mismatch).
    pub rotate_key: bool,
    /// Longest wait between two checks (see [`next_check_in`]).
    pub max_check_interval: Duration,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        RenewPolicy {
            renew_at_fraction: DEFAULT_RENEW_AT_FRACTION,
            validity: None,
            rotate_key: false,
            max_check_interval: DEFAULT_MAX_CHECK_INTERVAL,
        }
    }
}

/// The expiry state of a certificate.
#[derive(Clone, Debug)]
pub struct CertStatus {
    pub subject: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// When the policy says to renew.
    pub renew_at: OffsetDateTime,
    /// Days (fractional) from now to not_after; negative once expired. For people and for
    /// readiness; the metric is the expiry time itself (see [`expiry_unix_seconds`]).
    pub days_to_expiry: f64,
}

impl CertStatus {
    /// Whether renewal is due at `now`.
    pub fn due(&self, now: OffsetDateTime) -> bool {
        now >= self.renew_at
    }
}

fn status_of(info: &CertInfo, policy: &RenewPolicy, now: OffsetDateTime) -> CertStatus {
    let life = info.not_after - info.not_before;
    let fraction = policy.renew_at_fraction.clamp(0.0, 1.0);
    CertStatus {
        subject: info.subject.clone(),
        not_before: info.not_before,
        not_after: info.not_after,
        renew_at: info.not_before + life * fraction,
        days_to_expiry: (info.not_after - now).as_seconds_f64() / 86_400.0,
    }
}

fn check_policy(policy: &RenewPolicy) -> Result<(), CertError> {
    if !(policy.renew_at_fraction > 0.0 && policy.renew_at_fraction <= 1.0) {
        return Err(CertError::Input(format!(
            "renew_at_fraction must be in (0, 1], e.g. 0.8 for 80% of the lifetime (got {})",
            policy.renew_at_fraction
        )));
    }
    Ok(())
}

/// The expiry state of the first certificate in `path` (a certificate or a chain file).
pub fn status(path: &Path, policy: &RenewPolicy) -> Result<CertStatus, CertError> {
    check_policy(policy)?;
    let infos = inspect::inspect_file(path)?;
    Ok(status_of(&infos[0], policy, OffsetDateTime::now_utc()))
}

/// Days until the first certificate in `path` expires (negative once expired).
pub fn days_to_expiry(path: &Path) -> Result<f64, CertError> {
    Ok(status(path, &RenewPolicy::default())?.days_to_expiry)
}

/// When the first certificate in `path` expires, in Unix seconds: the metric
/// `connected_registry_server_cert_expiry_timestamp_seconds`. A timestamp in seconds is
/// Prometheus' convention (base unit, no moving value to scrape: alerts compute `- time()`).
pub fn expiry_unix_seconds(path: &Path) -> Result<i64, CertError> {
    Ok(status(path, &RenewPolicy::default())?
        .not_after
        .unix_timestamp())
}

/// How long to wait before the next check: until the renewal time, at most
/// `policy.max_check_interval`, at least [`MIN_CHECK_INTERVAL`].
pub fn next_check_in(status: &CertStatus, policy: &RenewPolicy) -> Duration {
    let wait = (status.renew_at - OffsetDateTime::now_utc()).as_seconds_f64();
    let wait = if wait.is_finite() && wait > 0.0 {
        Duration::from_secs_f64(wait)
    } else {
        Duration::ZERO
    };
    wait.clamp(
        MIN_CHECK_INTERVAL,
        policy.max_check_interval.max(MIN_CHECK_INTERVAL),
    )
}

/// What a renewal produced.
#[derive(Clone, Debug)]
pub struct Renewed {
    pub chain: PathBuf,
    pub key: PathBuf,
    /// Status of the new certificate.
    pub status: CertStatus,
}

/// Renews the server certificate in `server_chain` (leaf first) from the CA in
/// `ca_cert`/`ca_key` if the policy says it is due (or it has expired). Returns `None` when
/// nothing was due. The new chain keeps the old one's names (CN and SANs) and the CAs after
/// the leaf, with the given CA certificate first among them.
pub fn renew_if_due(
    server_chain: &Path,
    server_key: &Path,
    ca_cert: &Path,
    ca_key: &Path,
    policy: &RenewPolicy,
) -> Result<Option<Renewed>, CertError> {
    check_policy(policy)?;
    let now = OffsetDateTime::now_utc();
    let ders = crate::tls::load_certs(server_chain)?;
    let infos = inspect::inspect_ders(&ders, &server_chain.display().to_string())?;
    let old = &infos[0];
    if old.is_ca() {
        return Err(CertError::file(
            server_chain,
            format!("the first certificate '{}' is a CA, not a server certificate; renewal refuses to reissue a CA", old.subject),
        ));
    }
    if !status_of(old, policy, now).due(now) {
        return Ok(None);
    }
    let ca = Ca::load(ca_cert, ca_key, None)?;
    let renewed = renew_now(server_chain, server_key, &ca, old, &ders, policy)?;
    tracing::info!(
        chain = %server_chain.display(),
        subject = %old.subject,
        not_after = %inspect::fmt_time(renewed.status.not_after),
        "renewed the server certificate"
    );
    Ok(Some(renewed))
}

fn renew_now(
    server_chain: &Path,
    server_key: &Path,
    ca: &Ca,
    old: &CertInfo,
    ders: &[rustls_pki_types::CertificateDer<'static>],
    policy: &RenewPolicy,
) -> Result<Renewed, CertError> {
    let now = OffsetDateTime::now_utc();
    let lifetime = match policy.validity {
        Some(v) => time::Duration::try_from(v)
            .map_err(|e| CertError::Input(format!("renewal validity {v:?}: {e}")))?,
        None => (old.not_after - old.not_before - gen::BACKDATE).max(time::Duration::minutes(1)),
    };
    let hostname = old
        .common_name
        .clone()
        .or_else(|| old.dns_names.first().cloned())
        .or_else(|| old.ip_addresses.first().cloned())
        .ok_or_else(|| {
            CertError::file(
                server_chain,
                "the certificate has neither a CN nor a SAN to renew for",
            )
        })?;
    let mut sans: Vec<String> = old.dns_names.clone();
    sans.extend(old.ip_addresses.iter().cloned());
    let mut params = gen::server_params(&hostname, &sans, now - gen::BACKDATE, now + lifetime)?;
    // Keep the old usages (a client certificate stays a client certificate).
    if old.ext_key_usage_present {
        params.extended_key_usages = old
            .ext_key_usage
            .iter()
            .filter_map(|u| match *u {
                "serverAuth" => Some(ExtendedKeyUsagePurpose::ServerAuth),
                "clientAuth" => Some(ExtendedKeyUsagePurpose::ClientAuth),
                _ => None,
            })
            .collect();
    }
    if old.key_usage_present && !old.key_usage.contains(&"keyEncipherment") {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    let key = if policy.rotate_key {
        let key_type = match old.key_type.as_str() {
            "RSA 4096" => gen::KeyType::Rsa4096,
            t if t.starts_with("RSA") => gen::KeyType::Rsa2048,
            "Ed25519" => gen::KeyType::Ed25519,
            _ => gen::KeyType::EcdsaP256,
        };
        gen::generate_key(key_type)?
    } else {
        gen::load_signing_key(server_key)?
    };
    let cert_pem = ca.sign(&params, &key)?;
    // The CAs after the leaf: the given CA first, then the old tail minus any older copy of it.
    let ca_ders = rustls_pemfile::certs(&mut ca.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::generate("re-read the CA certificate", e))?;
    let mut chain_pem = cert_pem;
    chain_pem.push_str(&ca.cert_pem);
    let ca_subject = inspect::inspect_ders(&ca_ders, "CA")?
        .first()
        .map(|c| c.subject.clone())
        .unwrap_or_default();
    let tail = inspect::inspect_ders(&ders[1..], &server_chain.display().to_string())?;
    for (der, info) in ders[1..].iter().zip(tail.iter()) {
        if info.subject != ca_subject {
            chain_pem.push_str(&pem_of(der));
        }
    }
    if policy.rotate_key {
        files::write_atomic(server_key, key.serialize_pem().as_bytes(), KEY_MODE)?;
    }
    files::write_atomic(server_chain, chain_pem.as_bytes(), CERT_MODE)?;
    let new = inspect::inspect_file(server_chain)?;
    Ok(Renewed {
        chain: server_chain.to_owned(),
        key: server_key.to_owned(),
        status: status_of(&new[0], policy, OffsetDateTime::now_utc()),
    })
}

fn pem_of(der: &[u8]) -> String {
    crate::gen::pem_certificate(der)
}

/// The four files renewal needs, bundled for a timer loop.
#[derive(Clone, Debug)]
pub struct RenewTarget {
    /// Server certificate followed by its CAs (rewritten on renewal).
    pub server_chain: PathBuf,
    /// The server's key (kept unless `rotate_key`).
    pub server_key: PathBuf,
    /// The CA that issues the renewed certificate (the edge CA).
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
}

/// What one [`RenewTarget::check`] found.
#[derive(Clone, Debug)]
pub struct RenewCheck {
    /// The status of the certificate now on disk (after renewal, if one happened).
    pub status: CertStatus,
    /// Whether this check renewed it.
    pub renewed: bool,
    /// When to check again.
    pub next_check_in: Duration,
}

impl RenewTarget {
    /// Renews if due and says when to look again: the one call a proxy's timer makes.
    /// A failure (say, the CA key is missing) is returned for the caller to log; the caller
    /// retries after [`RenewPolicy::max_check_interval`] or sooner.
    pub fn check(&self, policy: &RenewPolicy) -> Result<RenewCheck, CertError> {
        let renewed = renew_if_due(
            &self.server_chain,
            &self.server_key,
            &self.ca_cert,
            &self.ca_key,
            policy,
        )?;
        let status = match &renewed {
            Some(r) => r.status.clone(),
            None => status(&self.server_chain, policy)?,
        };
        Ok(RenewCheck {
            next_check_in: next_check_in(&status, policy),
            renewed: renewed.is_some(),
            status,
        })
    }
}
