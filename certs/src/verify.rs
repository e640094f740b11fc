//! Will a client that trusts ROOT accept this chain for this hostname, and if not, why?
//!
//! rustls-webpki (the verifier rustls clients use) gives the authoritative yes or no. Its
//! error alone ("UnknownIssuer") rarely tells an operator what to fix, so the chain is also
//! walked here step by step to name the exact cause: missing intermediate, wrong order,
//! expired, not yet valid, hostname not in SAN, CA flag missing, key usage wrong, or a root
//! that is not in the trust bundle (which, in a nested deployment, means the parent layer's
//! root CA is missing from the child's trust bundle).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use crate::inspect::{self, fmt_time, CertInfo};
use crate::CertError;

/// The cause of a problem, for callers (and tests) that act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The chain lacks a CA between the leaf and the trusted root.
    MissingIntermediate,
    /// The certificates are all there but not leaf first, each followed by its issuer.
    WrongOrder,
    Expired,
    NotYetValid,
    /// The hostname is not among the leaf's subjectAltNames.
    HostnameMismatch,
    /// A certificate that signed another is not marked CA:TRUE.
    CaFlagMissing,
    /// A key usage or extended key usage forbids the certificate's use here.
    KeyUsageWrong,
    /// The first certificate is a CA, not a server certificate.
    CaAsLeaf,
    /// The chain leads to a root that the trust bundle does not contain.
    UntrustedRoot,
    /// A certificate's signature does not verify with its issuer's key.
    BadSignature,
    /// Anything else the verifier reported.
    Other,
}

/// One reason the chain is (or may be) refused, in plain words with the fix.
#[derive(Clone, Debug)]
pub struct Problem {
    pub kind: ProblemKind,
    pub message: String,
}

/// The outcome of a verification.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The answer: rustls-webpki accepted the chain (and the hostname, if given) and no
    /// RFC 5280 violation that other clients enforce (e.g. a CA without keyCertSign, which
    /// OpenSSL refuses) was found. Order problems that clients tolerate are warnings only.
    pub accepted: bool,
    /// What rustls-webpki alone said (the authoritative yes/no for rustls clients).
    pub rustls_accepts: bool,
    /// rustls-webpki's own error when it refused.
    pub verifier_error: Option<String>,
    /// The explained causes. When `accepted` is true these are warnings (e.g. order that
    /// rustls tolerates but stricter clients do not).
    pub problems: Vec<Problem>,
    /// The path found, leaf first, as subjects; the last one is the trust anchor if trusted.
    pub path: Vec<String>,
    pub hostname: Option<String>,
    /// Where the trust came from, for messages (a file name).
    pub trust_label: String,
    /// Subjects of every certificate in the trust bundle.
    pub trusted_subjects: Vec<String>,
    /// The root CA (subject) the chain leads to but the trust bundle lacks, if that is the problem.
    pub missing_root: Option<String>,
}

impl Verdict {
    /// True when a problem of this kind was found.
    pub fn has(&self, kind: ProblemKind) -> bool {
        self.problems.iter().any(|p| p.kind == kind)
    }

    /// The report `certs verify` prints.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let for_host = self
            .hostname
            .as_deref()
            .map(|h| format!(" for {h}"))
            .unwrap_or_default();
        if self.accepted {
            let _ = writeln!(
                out,
                "ACCEPTED: a client that trusts {} accepts this chain{for_host}.",
                self.trust_label
            );
            if !self.path.is_empty() {
                let _ = writeln!(out, "Path: {}", self.path.join("  <-  "));
            }
            if !self.problems.is_empty() {
                let _ = writeln!(out, "Warnings (rustls accepts, stricter clients may not):");
            }
        } else {
            let _ = writeln!(
                out,
                "REJECTED: a client that trusts {} refuses this chain{for_host}.",
                self.trust_label
            );
            if self.rustls_accepts {
                let _ = writeln!(
                    out,
                    "(rustls alone would accept it; OpenSSL-based clients and RFC 5280 do not.)"
                );
            }
            if !self.problems.is_empty() {
                let _ = writeln!(out, "Why:");
            }
        }
        for p in &self.problems {
            let _ = writeln!(out, "  - {}", p.message);
        }
        if let Some(err) = &self.verifier_error {
            let _ = writeln!(out, "(rustls-webpki says: {err})");
        }
        out
    }
}

struct Parsed<'a> {
    der: &'a [u8],
    cert: X509Certificate<'a>,
    info: CertInfo,
}

fn parse_all<'a>(
    ders: &'a [CertificateDer<'a>],
    origin: &str,
) -> Result<Vec<Parsed<'a>>, CertError> {
    ders.iter()
        .enumerate()
        .map(|(i, der)| {
            let cert = inspect::parse(der, &format!("{origin}: certificate {}", i + 1))?;
            let info = inspect::info(der, &cert);
            Ok(Parsed {
                der: der.as_ref(),
                cert,
                info,
            })
        })
        .collect()
}

/// Verifies the chain in file `chain` against the trust bundle in file `trust`.
pub fn verify_files(
    chain: &Path,
    trust: &Path,
    hostname: Option<&str>,
) -> Result<Verdict, CertError> {
    let chain_ders = crate::tls::load_certs(chain)?;
    let trust_ders = crate::tls::load_certs(trust)?;
    verify_chain(
        &chain_ders,
        &chain.display().to_string(),
        &trust_ders,
        &trust.display().to_string(),
        hostname,
        OffsetDateTime::now_utc(),
    )
}

/// Verifies `chain` (as presented: leaf first) against `trust` at time `now`.
/// `chain_label` and `trust_label` name the sources in messages.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    chain_label: &str,
    trust: &[CertificateDer<'_>],
    trust_label: &str,
    hostname: Option<&str>,
    now: OffsetDateTime,
) -> Result<Verdict, CertError> {
    if chain.is_empty() {
        return Err(CertError::Input(format!(
            "{chain_label}: holds no certificate"
        )));
    }
    let server_name = match hostname {
        Some(h) => Some(ServerName::try_from(h.to_string()).map_err(|_| {
            CertError::Input(format!(
                "--hostname {h:?} is neither a DNS name nor an IP address"
            ))
        })?),
        None => None,
    };
    let c = parse_all(chain, chain_label)?;
    let t = parse_all(trust, trust_label)?;

    let (rustls_accepts, verifier_error) =
        webpki_verdict(chain, trust, trust_label, server_name.as_ref(), now)?;
    let mut problems = Vec::new();
    let mut path = Vec::new();

    // Which certificate is the leaf? The first, unless the first is a CA and a non-CA
    // certificate appears later (then the order is wrong).
    let mut leaf = 0;
    if c[0].info.is_ca() {
        if let Some(j) = c.iter().position(|p| !p.info.is_ca()) {
            leaf = j;
            problems.push(Problem {
                kind: ProblemKind::WrongOrder,
                message: format!(
                    "wrong order: the server certificate '{}' is certificate {} of {chain_label}, \
                     but it must come first (then its issuer, then that one's issuer)",
                    c[j].info.subject,
                    j + 1
                ),
            });
        } else {
            problems.push(Problem {
                kind: ProblemKind::CaAsLeaf,
                message: format!(
                    "the first certificate '{}' is a CA certificate (CA:TRUE), not a server \
                     certificate: a server must present its own certificate first. Issue one with \
                     `connected-registry certs issue server --ca ... --hostname ...`",
                    c[0].info.subject
                ),
            });
        }
    }
    // Order among the rest: each certificate should be followed by its issuer.
    if leaf == 0 {
        for note in inspect::chain_order(&c.iter().map(|p| p.info.clone()).collect::<Vec<_>>()) {
            if note.starts_with("wrong order") {
                problems.push(Problem {
                    kind: ProblemKind::WrongOrder,
                    message: format!("{note} (in {chain_label})"),
                });
            }
        }
    }

    // Walk from the leaf to a trust anchor, explaining the first break.
    let mut cur = &c[leaf];
    let mut trusted = false;
    let mut missing_root = None;
    for _step in 0..16 {
        path.push(cur.info.subject.clone());
        check_time(cur, now, &mut problems);
        if t.iter().any(|a| same_key_and_name(a, cur)) {
            trusted = true;
            break;
        }
        let candidates: Vec<&Parsed<'_>> = c
            .iter()
            .chain(t.iter())
            .filter(|p| p.cert.subject().as_raw() == cur.cert.issuer().as_raw())
            .filter(|p| !std::ptr::eq(*p, cur))
            .collect();
        if candidates.is_empty() {
            if cur.info.self_issued {
                missing_root = Some(cur.info.subject.clone());
                problems.push(Problem {
                    kind: ProblemKind::UntrustedRoot,
                    message: format!(
                        "the chain ends at the root CA '{}', which is not in {trust_label}. A client \
                         must trust that root: add it to {trust_label} (or, if the server should be \
                         under another root, reissue its certificate from that root's chain). \
                         {trust_label} holds: {}",
                        cur.info.subject,
                        list_subjects(&t)
                    ),
                });
            } else if std::ptr::eq(cur, &c[leaf]) {
                problems.push(Problem {
                    kind: ProblemKind::MissingIntermediate,
                    message: format!(
                        "missing intermediate: '{}' was issued by '{}', which is neither in \
                         {chain_label} nor in {trust_label}. Serve the full chain: append the issuing \
                         CA certificate and every CA above it except the root (the \
                         *-full-chain.cert.pem from `certs issue server`). If '{}' is itself a root, \
                         add it to {trust_label} instead",
                        cur.info.subject, cur.info.issuer, cur.info.issuer
                    ),
                });
            } else {
                missing_root = Some(cur.info.issuer.clone());
                problems.push(Problem {
                    kind: ProblemKind::UntrustedRoot,
                    message: format!(
                        "unknown CA: the chain ends at '{}', issued by '{}', and {trust_label} does \
                         not contain '{}'. Add that root CA certificate to {trust_label} (in a nested \
                         deployment: the root CA of the layer that issued this server's certificate). \
                         {trust_label} holds: {}",
                        cur.info.subject,
                        cur.info.issuer,
                        cur.info.issuer,
                        list_subjects(&t)
                    ),
                });
            }
            break;
        }
        let verified = candidates
            .iter()
            .find(|p| cur.cert.verify_signature(Some(p.cert.public_key())).is_ok());
        let Some(issuer) = verified else {
            problems.push(Problem {
                kind: ProblemKind::BadSignature,
                message: format!(
                    "'{}' names '{}' as issuer, but no certificate of that name (in {chain_label} or \
                     {trust_label}) signed it: two different CAs share that name (e.g. the chain was \
                     regenerated). Reissue the certificate from the current CA, or trust the CA that \
                     really signed it",
                    cur.info.subject, cur.info.issuer
                ),
            });
            break;
        };
        if !issuer.info.is_ca() {
            problems.push(Problem {
                kind: ProblemKind::CaFlagMissing,
                message: format!(
                    "'{}' signed '{}' but is not a CA (basicConstraints CA:TRUE is missing): clients \
                     refuse certificates signed by a non-CA. Reissue '{}' as a CA (certs new-chain does)",
                    issuer.info.subject, cur.info.subject, issuer.info.subject
                ),
            });
        } else if issuer.info.key_usage_present && !issuer.info.key_usage.contains(&"keyCertSign") {
            problems.push(Problem {
                kind: ProblemKind::KeyUsageWrong,
                message: format!(
                    "wrong key usage: CA '{}' lacks keyCertSign (it has: {}), so it may not sign \
                     '{}'. Reissue the CA with keyCertSign",
                    issuer.info.subject,
                    none_if_empty(&issuer.info.key_usage),
                    cur.info.subject
                ),
            });
        }
        cur = issuer;
    }
    if !trusted
        && !problems.iter().any(|p| {
            matches!(
                p.kind,
                ProblemKind::UntrustedRoot
                    | ProblemKind::MissingIntermediate
                    | ProblemKind::BadSignature
            )
        })
    {
        problems.push(Problem {
            kind: ProblemKind::Other,
            message: format!(
                "no path from '{}' to {trust_label} within 16 certificates (a loop in the chain?)",
                c[leaf].info.subject
            ),
        });
    }

    check_leaf(&c[leaf], hostname, &mut problems);

    let accepted = rustls_accepts && problems.iter().all(|p| p.kind == ProblemKind::WrongOrder);
    if !accepted && problems.is_empty() {
        problems.push(Problem {
            kind: ProblemKind::Other,
            message: format!(
                "the verifier refused the chain: {}",
                verifier_error.as_deref().unwrap_or("unknown reason")
            ),
        });
    }
    Ok(Verdict {
        accepted,
        rustls_accepts,
        verifier_error,
        problems,
        path,
        hostname: hostname.map(str::to_owned),
        trust_label: trust_label.to_owned(),
        trusted_subjects: t.iter().map(|p| p.info.subject.clone()).collect(),
        missing_root,
    })
}

fn none_if_empty(v: &[&str]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn list_subjects(t: &[Parsed<'_>]) -> String {
    t.iter()
        .map(|p| format!("'{}'", p.info.subject))
        .collect::<Vec<_>>()
        .join(", ")
}

fn same_key_and_name(a: &Parsed<'_>, b: &Parsed<'_>) -> bool {
    a.der == b.der
        || (a.cert.subject().as_raw() == b.cert.subject().as_raw()
            && a.cert.public_key().raw == b.cert.public_key().raw)
}

fn check_time(p: &Parsed<'_>, now: OffsetDateTime, problems: &mut Vec<Problem>) {
    if now > p.info.not_after {
        problems.push(Problem {
            kind: ProblemKind::Expired,
            message: format!(
                "expired: '{}' was valid until {} ({}). Renew it (certs issue ... again, or let \
                 the proxy's renewal do it) and serve the new file",
                p.info.subject,
                fmt_time(p.info.not_after),
                inspect::fmt_relative(p.info.not_after, now)
            ),
        });
    } else if now < p.info.not_before {
        problems.push(Problem {
            kind: ProblemKind::NotYetValid,
            message: format!(
                "not yet valid: '{}' is valid only from {} ({}). Either its issuer's clock is ahead \
                 or this machine's clock is behind: check both clocks (NTP)",
                p.info.subject,
                fmt_time(p.info.not_before),
                inspect::fmt_relative(p.info.not_before, now)
            ),
        });
    }
}

fn check_leaf(leaf: &Parsed<'_>, hostname: Option<&str>, problems: &mut Vec<Problem>) {
    let i = &leaf.info;
    if i.ext_key_usage_present
        && !i.ext_key_usage.contains(&"serverAuth")
        && !i.ext_key_usage.contains(&"anyExtendedKeyUsage")
    {
        problems.push(Problem {
            kind: ProblemKind::KeyUsageWrong,
            message: format!(
                "wrong key usage: '{}' has extended key usage {} but not serverAuth, so it may not \
                 identify a TLS server{}. Issue a server certificate with `certs issue server`",
                i.subject,
                none_if_empty(&i.ext_key_usage),
                if i.ext_key_usage.contains(&"clientAuth") {
                    " (it is a client certificate)"
                } else {
                    ""
                }
            ),
        });
    }
    if i.key_usage_present
        && !i.key_usage.contains(&"digitalSignature")
        && !(i.key_type.starts_with("RSA") && i.key_usage.contains(&"keyEncipherment"))
    {
        problems.push(Problem {
            kind: ProblemKind::KeyUsageWrong,
            message: format!(
                "wrong key usage: '{}' has key usage {} without digitalSignature, which a TLS \
                 server key needs. Reissue it with `certs issue server`",
                i.subject,
                none_if_empty(&i.key_usage)
            ),
        });
    }
    if let Some(host) = hostname {
        let host_l = host.trim_end_matches('.').to_ascii_lowercase();
        let ok = match IpAddr::from_str(&host_l) {
            Ok(ip) => i
                .ip_addresses
                .iter()
                .any(|a| IpAddr::from_str(a).ok() == Some(ip)),
            Err(_) => i.dns_names.iter().any(|d| dns_matches(d, &host_l)),
        };
        if !ok {
            let mut names: Vec<String> = i.dns_names.iter().map(|d| format!("DNS:{d}")).collect();
            names.extend(i.ip_addresses.iter().map(|a| format!("IP:{a}")));
            let message = if !i.has_san {
                format!(
                    "hostname not in SAN: '{}' has no subjectAltName at all; clients ignore the CN \
                     and match {host} only against SANs. Reissue it with `certs issue server \
                     --hostname {host}`",
                    i.subject
                )
            } else {
                format!(
                    "hostname not in SAN: {host} is not among the names of '{}' ({}). Reissue it \
                     with `certs issue server --hostname {host}` (or add --san {host}), or connect \
                     by one of those names",
                    i.subject,
                    names.join(", ")
                )
            };
            problems.push(Problem {
                kind: ProblemKind::HostnameMismatch,
                message,
            });
        }
    }
}

/// RFC 6125 matching: exact (case-insensitive), or a leading `*.` wildcard for one label.
fn dns_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    if pattern == host {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        if let Some((first, rest)) = host.split_once('.') {
            return !first.is_empty() && rest == suffix;
        }
    }
    false
}

fn webpki_verdict(
    chain: &[CertificateDer<'_>],
    trust: &[CertificateDer<'_>],
    trust_label: &str,
    server_name: Option<&ServerName<'_>>,
    now: OffsetDateTime,
) -> Result<(bool, Option<String>), CertError> {
    let anchors = trust
        .iter()
        .map(|der| {
            webpki::anchor_from_trusted_cert(der).map_err(|e| {
                CertError::Input(format!("{trust_label}: unusable trust anchor: {e:?}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ee = match webpki::EndEntityCert::try_from(&chain[0]) {
        Ok(ee) => ee,
        Err(e) => return Ok((false, Some(format!("{e:?}")))),
    };
    let provider = crate::tls::provider();
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    let result = ee.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &anchors,
        &chain[1..],
        time,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    if let Err(e) = result {
        return Ok((false, Some(format!("{e:?}"))));
    }
    if let Some(name) = server_name {
        if let Err(e) = ee.verify_is_valid_for_subject_name(name) {
            return Ok((false, Some(format!("{e:?}"))));
        }
    }
    Ok((true, None))
}

#[cfg(test)]
mod tests {
    use super::dns_matches;

    #[test]
    fn wildcard_matches_one_label_only() {
        assert!(dns_matches("*.example.com", "a.example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(dns_matches("Edge.Local", "edge.local"));
    }
}
