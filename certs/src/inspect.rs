//! Reading certificates back in plain words: subject, issuer, SANs, validity, key type,
//! SHA-256 fingerprint, CA flag, key usages, and whether a chain file is in the right order.

use std::fmt::Write as _;
use std::path::Path;

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::CertError;

/// What one certificate says about itself.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// The subject CN, if any.
    pub common_name: Option<String>,
    /// DNS names and IP addresses from subjectAltName, as text.
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    /// Whether the certificate has a subjectAltName extension at all.
    pub has_san: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// "ECDSA P-256", "RSA 2048", "Ed25519", ...
    pub key_type: String,
    /// SHA-256 of the DER, upper-case hex with colons (as `openssl x509 -fingerprint -sha256`).
    pub sha256: String,
    pub serial: String,
    /// basicConstraints CA flag; `None` when the extension is absent.
    pub ca: Option<bool>,
    pub path_len: Option<u32>,
    /// Key usage names, empty when the extension is absent (`key_usage_present` says which).
    pub key_usage: Vec<&'static str>,
    pub key_usage_present: bool,
    pub ext_key_usage: Vec<&'static str>,
    pub ext_key_usage_present: bool,
    /// Issuer name equals subject name.
    pub self_issued: bool,
}

impl CertInfo {
    /// True when the certificate claims to be a CA.
    pub fn is_ca(&self) -> bool {
        self.ca == Some(true)
    }

    /// Seconds until expiry from `now` (negative once expired).
    pub fn seconds_to_expiry(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_seconds()
    }

    /// The role in plain words, guessed from the extensions.
    pub fn role(&self) -> &'static str {
        if self.is_ca() {
            if self.self_issued {
                "root CA"
            } else {
                "intermediate or edge CA"
            }
        } else if self.ext_key_usage.contains(&"serverAuth") {
            "server certificate"
        } else if self.ext_key_usage.contains(&"clientAuth") {
            "client certificate"
        } else {
            "end-entity certificate"
        }
    }
}

/// Parses one DER certificate. `origin` names where it came from, for errors.
pub fn parse<'a>(der: &'a [u8], origin: &str) -> Result<X509Certificate<'a>, CertError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| CertError::Input(format!("{origin}: not a valid X.509 certificate: {e}")))
}

fn key_type(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        "1.2.840.113549.1.1.1" => {
            let bits = spki.parsed().map(|k| k.key_size()).unwrap_or(0);
            format!("RSA {bits}")
        }
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => "ECDSA P-256".into(),
                "1.3.132.0.34" => "ECDSA P-384".into(),
                "1.3.132.0.35" => "ECDSA P-521".into(),
                other => format!("ECDSA (curve {other})"),
            }
        }
        "1.3.101.112" => "Ed25519".into(),
        "1.3.101.113" => "Ed448".into(),
        other => format!("unknown key algorithm {other}"),
    }
}

/// Describes a parsed certificate.
pub fn info(der: &[u8], cert: &X509Certificate<'_>) -> CertInfo {
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let mut has_san = false;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        has_san = true;
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::IPAddress(b) => ip_addresses.push(ip_text(b)),
                _ => {}
            }
        }
    }
    let (ca, path_len) = match cert.basic_constraints() {
        Ok(Some(bc)) => (Some(bc.value.ca), bc.value.path_len_constraint),
        _ => (None, None),
    };
    let (key_usage, key_usage_present) = match cert.key_usage() {
        Ok(Some(ku)) => {
            let k = ku.value;
            let mut v = Vec::new();
            for (on, n) in [
                (k.digital_signature(), "digitalSignature"),
                (k.non_repudiation(), "nonRepudiation"),
                (k.key_encipherment(), "keyEncipherment"),
                (k.data_encipherment(), "dataEncipherment"),
                (k.key_agreement(), "keyAgreement"),
                (k.key_cert_sign(), "keyCertSign"),
                (k.crl_sign(), "cRLSign"),
            ] {
                if on {
                    v.push(n);
                }
            }
            (v, true)
        }
        _ => (Vec::new(), false),
    };
    let (ext_key_usage, ext_key_usage_present) = match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            let e = eku.value;
            let mut v = Vec::new();
            for (on, n) in [
                (e.any, "anyExtendedKeyUsage"),
                (e.server_auth, "serverAuth"),
                (e.client_auth, "clientAuth"),
                (e.code_signing, "codeSigning"),
                (e.email_protection, "emailProtection"),
                (e.time_stamping, "timeStamping"),
                (e.ocsp_signing, "OCSPSigning"),
            ] {
                if on {
                    v.push(n);
                }
            }
            (v, true)
        }
        _ => (Vec::new(), false),
    };
    let digest = Sha256::digest(der);
    let sha256 = digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        dns_names,
        ip_addresses,
        has_san,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        key_type: key_type(cert),
        sha256,
        serial: cert.raw_serial_as_string(),
        ca,
        path_len,
        key_usage,
        key_usage_present,
        ext_key_usage,
        ext_key_usage_present,
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
    }
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => hex::encode(bytes),
    }
}

/// Every certificate of a PEM file, described, in file order.
pub fn inspect_file(path: &Path) -> Result<Vec<CertInfo>, CertError> {
    let ders = crate::tls::load_certs(path)?;
    inspect_ders(&ders, &path.display().to_string())
}

/// Describes DER certificates; `origin` names the source for errors.
pub fn inspect_ders(ders: &[CertificateDer<'_>], origin: &str) -> Result<Vec<CertInfo>, CertError> {
    ders.iter()
        .enumerate()
        .map(|(i, der)| {
            let cert = parse(der, &format!("{origin}: certificate {}", i + 1))?;
            Ok(info(der, &cert))
        })
        .collect()
}

/// Formats a time as "2026-11-22 11:40:33 UTC".
pub fn fmt_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// How far `t` is from `now`, in words ("in 89 days", "3 days ago").
pub fn fmt_relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (t - now).whole_seconds();
    let (n, unit) = {
        let a = secs.unsigned_abs();
        if a >= 86_400 * 2 {
            (a / 86_400, "days")
        } else if a >= 7200 {
            (a / 3600, "hours")
        } else if a >= 120 {
            (a / 60, "minutes")
        } else {
            (a, "seconds")
        }
    };
    if secs >= 0 {
        format!("in {n} {unit}")
    } else {
        format!("{n} {unit} ago")
    }
}

/// What the order of a chain file looks like, in words: each certificate should be issued
/// by the next one (leaf first, root last if present at all).
pub fn chain_order(infos: &[CertInfo]) -> Vec<String> {
    let mut notes = Vec::new();
    if infos.len() < 2 {
        return notes;
    }
    for (i, pair) in infos.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        if child.issuer != parent.subject {
            let found = infos
                .iter()
                .position(|c| c.subject == child.issuer && c.subject != child.subject);
            notes.push(match found {
                Some(j) => format!(
                    "wrong order: certificate {} ('{}') is issued by certificate {} ('{}'), which should come right after it",
                    i + 1,
                    child.subject,
                    j + 1,
                    child.issuer
                ),
                None if child.self_issued => format!(
                    "certificate {} ('{}') is a self-issued root but is followed by more certificates: the root belongs last",
                    i + 1,
                    child.subject
                ),
                None => format!(
                    "certificate {} ('{}') is issued by '{}', which is not in this file, yet certificate {} follows it",
                    i + 1,
                    child.subject,
                    child.issuer,
                    i + 2
                ),
            });
        }
    }
    notes
}

/// The full plain-words report `certs inspect` prints.
pub fn describe(infos: &[CertInfo], now: OffsetDateTime) -> String {
    let mut out = String::new();
    let n = infos.len();
    for (i, c) in infos.iter().enumerate() {
        let _ = writeln!(out, "Certificate {} of {n}: {}", i + 1, c.role());
        let _ = writeln!(out, "  subject:      {}", c.subject);
        let _ = writeln!(
            out,
            "  issuer:       {}{}",
            c.issuer,
            if c.self_issued { " (itself)" } else { "" }
        );
        let mut sans: Vec<String> = c.dns_names.iter().map(|d| format!("DNS:{d}")).collect();
        sans.extend(c.ip_addresses.iter().map(|ip| format!("IP:{ip}")));
        let _ = writeln!(
            out,
            "  names (SAN):  {}",
            if sans.is_empty() {
                "none".to_string()
            } else {
                sans.join(", ")
            }
        );
        let state = if now < c.not_before {
            "NOT YET VALID"
        } else if now > c.not_after {
            "EXPIRED"
        } else {
            "valid now"
        };
        let _ = writeln!(
            out,
            "  valid:        from {} ({}) to {} ({}): {state}",
            fmt_time(c.not_before),
            fmt_relative(c.not_before, now),
            fmt_time(c.not_after),
            fmt_relative(c.not_after, now)
        );
        let _ = writeln!(out, "  key:          {}", c.key_type);
        let _ = writeln!(
            out,
            "  CA:           {}",
            match (c.ca, c.path_len) {
                (Some(true), Some(p)) => format!("yes (may sign, at most {p} CA(s) below it)"),
                (Some(true), None) => "yes (may sign certificates)".into(),
                (Some(false), _) => "no".into(),
                (None, _) => "no (no basicConstraints)".into(),
            }
        );
        let _ = writeln!(
            out,
            "  key usage:    {}",
            if c.key_usage_present {
                c.key_usage.join(", ")
            } else {
                "any (no keyUsage)".into()
            }
        );
        let _ = writeln!(
            out,
            "  extended use: {}",
            if c.ext_key_usage_present {
                c.ext_key_usage.join(", ")
            } else {
                "any (no extendedKeyUsage)".into()
            }
        );
        let _ = writeln!(out, "  serial:       {}", c.serial);
        let _ = writeln!(out, "  SHA-256:      {}", c.sha256);
    }
    if n > 1 {
        let notes = chain_order(infos);
        if notes.is_empty() {
            let _ = writeln!(
                out,
                "Chain order: right (each certificate is issued by the one after it)."
            );
        } else {
            let _ = writeln!(out, "Chain order: WRONG");
            for note in notes {
                let _ = writeln!(out, "  - {note}");
            }
        }
    }
    out
}
