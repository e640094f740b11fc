//! Generating the edge CA chain (root, intermediate, edge CA) and issuing server and client
//! certificates from it, with rcgen.
//!
//! The roles follow IoT Edge's test chain: a root CA that devices trust, an intermediate CA
//! that keeps the root offline, and an edge CA per device that issues that device's server
//! certificate. Files are PEM with plain names; keys are PKCS#8 and mode 0600.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::files::{self, CERT_MODE, KEY_MODE};
use crate::CertError;

/// Default validity of the root CA, in days.
pub const DEFAULT_ROOT_DAYS: u32 = 3650;
/// Default validity of the intermediate CA, in days.
pub const DEFAULT_INTERMEDIATE_DAYS: u32 = 1825;
/// Default validity of the edge CA, in days.
pub const DEFAULT_EDGE_CA_DAYS: u32 = 365;
/// Default validity of a server certificate, in days (IoT Edge's default is also 90).
pub const DEFAULT_SERVER_DAYS: u32 = 90;
/// Default validity of a client certificate, in days.
pub const DEFAULT_CLIENT_DAYS: u32 = 365;
/// Certificates start this long before "now", so a device whose clock is a little behind
/// its parent's does not see a brand-new certificate as "not yet valid".
pub const BACKDATE: Duration = Duration::minutes(5);
/// The longest common name X.509 allows (ub-common-name); IoT Edge refuses longer hostnames too.
pub const MAX_CN_LEN: usize = 64;

/// File names written by [`new_chain`], relative to its output directory.
pub const ROOT_CA_CERT: &str = "root-ca.cert.pem";
pub const ROOT_CA_KEY: &str = "root-ca.key.pem";
pub const INTERMEDIATE_CA_CERT: &str = "intermediate-ca.cert.pem";
pub const INTERMEDIATE_CA_KEY: &str = "intermediate-ca.key.pem";
pub const EDGE_CA_CERT: &str = "edge-ca.cert.pem";
pub const EDGE_CA_KEY: &str = "edge-ca.key.pem";
/// The edge CA followed by the intermediate: what a server appends after its own certificate.
pub const EDGE_CA_CHAIN: &str = "edge-ca-chain.cert.pem";

/// The key algorithm of a generated certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: small, fast, accepted by every TLS client.
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256 (PKCS#1 v1.5 signatures), for old clients.
    Rsa2048,
    /// RSA 4096 with SHA-256.
    Rsa4096,
    /// Ed25519: accepted by rustls and OpenSSL, not by every client (e.g. browsers, Go before 1.13 for TLS).
    Ed25519,
}

impl KeyType {
    /// The names accepted on the command line.
    pub const NAMES: &'static [&'static str] = &["ecdsa-p256", "rsa2048", "rsa4096", "ed25519"];
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa4096 => "rsa4096",
            KeyType::Ed25519 => "ed25519",
        })
    }
}

impl FromStr for KeyType {
    type Err = CertError;
    fn from_str(s: &str) -> Result<Self, CertError> {
        match s.to_ascii_lowercase().as_str() {
            "ecdsa-p256" | "ecdsa" | "p256" | "ec" => Ok(KeyType::EcdsaP256),
            "rsa2048" | "rsa-2048" | "rsa" => Ok(KeyType::Rsa2048),
            "rsa4096" | "rsa-4096" => Ok(KeyType::Rsa4096),
            "ed25519" => Ok(KeyType::Ed25519),
            other => Err(CertError::Input(format!(
                "unknown key type {other:?}: use one of {}",
                KeyType::NAMES.join(", ")
            ))),
        }
    }
}

/// Generates a fresh key pair of the given type.
pub fn generate_key(key_type: KeyType) -> Result<KeyPair, CertError> {
    match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CertError::generate("generate an ECDSA P-256 key", e)),
        KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| CertError::generate("generate an Ed25519 key", e)),
        KeyType::Rsa2048 => generate_rsa(2048),
        KeyType::Rsa4096 => generate_rsa(4096),
    }
}

/// aws-lc-rs, the one crypto library in the binary, makes the RSA key and signs with it.
fn generate_rsa(bits: usize) -> Result<KeyPair, CertError> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
    let what = format!("generate an RSA {bits} key");
    let size = match bits {
        2048 => KeySize::Rsa2048,
        4096 => KeySize::Rsa4096,
        other => {
            return Err(CertError::generate(
                &what,
                format!("{other} bits is not offered; use 2048 or 4096"),
            ))
        }
    };
    let key = RsaKeyPair::generate(size).map_err(|e| CertError::generate(&what, e))?;
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key)
        .map_err(|e| CertError::generate(&what, e))?;
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_ref());
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| CertError::generate(&what, e))
}

/// A PKCS#1 RSA key (`BEGIN RSA PRIVATE KEY`, as `openssl genrsa -traditional` writes) as the
/// PKCS#8 the signer takes.
fn pkcs1_rsa_to_signing_key(pem: &str) -> Result<KeyPair, String> {
    use aws_lc_rs::encoding::AsDer;
    let pkcs1 = match rustls_pemfile::private_key(&mut pem.as_bytes()) {
        Ok(Some(rustls_pki_types::PrivateKeyDer::Pkcs1(der))) => der,
        Ok(_) => return Err("bad PKCS#1 RSA key: no RSA PRIVATE KEY block".into()),
        Err(e) => return Err(format!("bad PKCS#1 RSA key: {e}")),
    };
    let key = aws_lc_rs::rsa::KeyPair::from_der(pkcs1.secret_pkcs1_der())
        .map_err(|e| format!("bad PKCS#1 RSA key: {e}"))?;
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key)
        .map_err(|e| format!("cannot convert RSA key: {e}"))?;
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_ref());
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| format!("unusable RSA key: {e}"))
}

/// Loads a private key for signing (a CA key, or a server key being renewed).
///
/// PKCS#8 of any type and PKCS#1 RSA are accepted; a SEC1 EC key must be converted first
/// (the signer takes only PKCS#8), and the error says how.
pub fn load_signing_key(path: &Path) -> Result<KeyPair, CertError> {
    let pem = files::read_string(path)?;
    if pem.contains("ENCRYPTED PRIVATE KEY") || pem.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(CertError::file(
            path,
            "the private key is encrypted; give an unencrypted key \
             (openssl pkey -in KEY -out KEY.plain)",
        ));
    }
    if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
        return pkcs1_rsa_to_signing_key(&pem).map_err(|message| CertError::file(path, message));
    }
    if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
        return Err(CertError::file(
            path,
            "this is a SEC1 EC key; signing needs PKCS#8: convert it with \
             `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8` and use that file",
        ));
    }
    if !pem.contains("-----BEGIN PRIVATE KEY-----") {
        return Err(CertError::file(
            path,
            "holds no private key (expected \"-----BEGIN PRIVATE KEY-----\" PKCS#8 PEM)",
        ));
    }
    KeyPair::from_pem(&pem).map_err(|e| CertError::file(path, format!("unusable private key: {e}")))
}

/// A fresh random positive serial number. rcgen would otherwise derive the serial from the
/// public key, and a renewal that keeps the key would then reuse the serial: some clients
/// reject two different certificates with the same issuer and serial.
fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn name(cn: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

/// A validity window starting [`BACKDATE`] before now and lasting `days` days from now.
pub fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    if days == 0 {
        return Err(CertError::Input(
            "validity must be at least 1 day (got 0)".into(),
        ));
    }
    let now = OffsetDateTime::now_utc();
    Ok((now - BACKDATE, now + Duration::days(i64::from(days))))
}

/// Parameters for a CA certificate. `path_len` limits how many CAs may sit below it.
pub fn ca_params(
    cn: &str,
    organization: Option<&str>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn, organization);
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

/// A CA that can sign: its certificate, key and the chain a leaf it issues should carry.
pub struct Ca {
    /// This CA's certificate, PEM.
    pub cert_pem: String,
    /// This CA's certificate followed by the CAs above it except the root (PEM): what a
    /// server appends after its own certificate.
    pub chain_pem: String,
    key: KeyPair,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Loads a CA from its certificate and key files, checking that the certificate is a CA
    /// allowed to sign certificates and that the key belongs to it. `chain` (optional) is the
    /// file holding this CA followed by its intermediates; without it the chain is the CA alone.
    pub fn load(cert: &Path, key: &Path, chain: Option<&Path>) -> Result<Ca, CertError> {
        let cert_pem = files::read_string(cert)?;
        let ders = crate::tls::load_certs(cert)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&ders[0])
            .map_err(|e| CertError::file(cert, format!("not a valid X.509 certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err(CertError::file(
                cert,
                format!(
                    "'{}' is not a CA certificate (basicConstraints CA:TRUE missing): it cannot issue \
                     certificates; give the edge CA from `certs new-chain`",
                    parsed.subject()
                ),
            ));
        }
        if let Ok(Some(ku)) = parsed.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(CertError::file(
                    cert,
                    format!(
                        "'{}' has no keyCertSign key usage: it may not sign certificates",
                        parsed.subject()
                    ),
                ));
            }
        }
        let signing_key = load_signing_key(key)?;
        if parsed.public_key().raw
            != rcgen::PublicKeyData::subject_public_key_info(&signing_key).as_slice()
        {
            return Err(CertError::File {
                path: key.to_owned(),
                message: format!(
                    "this key does not belong to the CA certificate {} ('{}')",
                    cert.display(),
                    parsed.subject()
                ),
            });
        }
        let chain_pem = match chain {
            Some(path) => {
                crate::tls::load_certs(path)?;
                files::read_string(path)?
            }
            None => cert_pem.clone(),
        };
        let issuer_key = clone_key(&signing_key)?;
        let issuer = Issuer::from_ca_cert_der(&ders[0], issuer_key)
            .map_err(|e| CertError::file(cert, format!("cannot use as issuer: {e}")))?;
        Ok(Ca {
            cert_pem: pem_certificate(&ders[0]),
            chain_pem: ensure_newline(chain_pem),
            key: signing_key,
            issuer,
        })
    }

    /// A self-signed root CA.
    pub fn new_root(params: CertificateParams, key: KeyPair) -> Result<Ca, CertError> {
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertError::generate("self-sign the root CA", e))?;
        let issuer_key = clone_key(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            chain_pem: String::new(),
            key,
            issuer: Issuer::new(params, issuer_key),
        })
    }

    /// A CA signed by this one. Its chain is itself plus this CA's chain (the root excluded,
    /// because clients must have the root already and sending it only costs bytes).
    pub fn new_sub_ca(&self, params: CertificateParams, key: KeyPair) -> Result<Ca, CertError> {
        let cert_pem = self.sign(&params, &key)?;
        let issuer_key = clone_key(&key)?;
        Ok(Ca {
            chain_pem: format!("{cert_pem}{}", self.chain_pem),
            cert_pem,
            key,
            issuer: Issuer::new(params, issuer_key),
        })
    }

    /// Signs `params` for the public key of `key`; returns the certificate PEM.
    pub fn sign(&self, params: &CertificateParams, key: &KeyPair) -> Result<String, CertError> {
        params
            .signed_by(key, &self.issuer)
            .map(|c| c.pem())
            .map_err(|e| CertError::generate("sign a certificate", e))
    }

    /// This CA's private key in PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

fn clone_key(key: &KeyPair) -> Result<KeyPair, CertError> {
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialized_der());
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, key.algorithm())
        .map_err(|e| CertError::generate("copy a key pair", e))
}

/// PEM text of one DER certificate.
pub fn pem_certificate(der: &[u8]) -> String {
    let b64 = {
        use base64_lite::encode;
        encode(der)
    };
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Tiny standard base64 encoder, so PEM output does not need another dependency.
mod base64_lite {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn ensure_newline(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// Options for [`new_chain`].
#[derive(Clone, Debug)]
pub struct ChainOptions {
    pub key_type: KeyType,
    /// Prefix of every subject CN: `<name> Root CA`, `<name> Intermediate CA`, `<name> Edge CA`.
    /// Give each layer its own name so a diagnosis can say which layer's CA is missing.
    pub name: String,
    /// Optional organization (O=) in every subject.
    pub organization: Option<String>,
    pub root_days: u32,
    pub intermediate_days: u32,
    pub edge_ca_days: u32,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            key_type: KeyType::default(),
            name: "Connected Registry".into(),
            organization: None,
            root_days: DEFAULT_ROOT_DAYS,
            intermediate_days: DEFAULT_INTERMEDIATE_DAYS,
            edge_ca_days: DEFAULT_EDGE_CA_DAYS,
        }
    }
}

/// The files written by [`new_chain`].
#[derive(Clone, Debug)]
pub struct ChainFiles {
    pub root_ca_cert: PathBuf,
    pub root_ca_key: PathBuf,
    pub intermediate_ca_cert: PathBuf,
    pub intermediate_ca_key: PathBuf,
    pub edge_ca_cert: PathBuf,
    pub edge_ca_key: PathBuf,
    /// Edge CA then intermediate: pass as `-untrusted` to `openssl verify`, append to server chains.
    pub edge_ca_chain: PathBuf,
}

impl ChainFiles {
    /// The file names [`new_chain`] uses in `dir`.
    pub fn in_dir(dir: &Path) -> ChainFiles {
        ChainFiles {
            root_ca_cert: dir.join(ROOT_CA_CERT),
            root_ca_key: dir.join(ROOT_CA_KEY),
            intermediate_ca_cert: dir.join(INTERMEDIATE_CA_CERT),
            intermediate_ca_key: dir.join(INTERMEDIATE_CA_KEY),
            edge_ca_cert: dir.join(EDGE_CA_CERT),
            edge_ca_key: dir.join(EDGE_CA_KEY),
            edge_ca_chain: dir.join(EDGE_CA_CHAIN),
        }
    }

    /// Every file of the chain, root first.
    pub fn all(&self) -> [&Path; 7] {
        [
            &self.root_ca_cert,
            &self.root_ca_key,
            &self.intermediate_ca_cert,
            &self.intermediate_ca_key,
            &self.edge_ca_cert,
            &self.edge_ca_key,
            &self.edge_ca_chain,
        ]
    }

    /// Loads the edge CA for issuing.
    pub fn edge_ca(&self) -> Result<Ca, CertError> {
        Ca::load(
            &self.edge_ca_cert,
            &self.edge_ca_key,
            Some(&self.edge_ca_chain),
        )
    }
}

/// Creates root, intermediate and edge CA in `dir`. Refuses to overwrite an existing chain
/// unless `overwrite`, because replacing a root breaks every device that trusts the old one.
pub fn new_chain(
    dir: &Path,
    opts: &ChainOptions,
    overwrite: bool,
) -> Result<ChainFiles, CertError> {
    let files = ChainFiles::in_dir(dir);
    files::refuse_overwrite(
        &files.all(),
        overwrite,
        "a new root breaks every device that trusts the old one",
    )?;
    let o = opts.organization.as_deref();
    let (nb, na) = validity(opts.root_days)?;
    let root = Ca::new_root(
        ca_params(&format!("{} Root CA", opts.name), o, nb, na, None),
        generate_key(opts.key_type)?,
    )?;
    let (nb, na) = validity(opts.intermediate_days)?;
    let intermediate = root.new_sub_ca(
        ca_params(
            &format!("{} Intermediate CA", opts.name),
            o,
            nb,
            na,
            Some(1),
        ),
        generate_key(opts.key_type)?,
    )?;
    let (nb, na) = validity(opts.edge_ca_days)?;
    let edge = intermediate.new_sub_ca(
        ca_params(&format!("{} Edge CA", opts.name), o, nb, na, Some(0)),
        generate_key(opts.key_type)?,
    )?;
    files::ensure_dir(dir)?;
    files::write_atomic(&files.root_ca_key, root.key_pem().as_bytes(), KEY_MODE)?;
    files::write_atomic(&files.root_ca_cert, root.cert_pem.as_bytes(), CERT_MODE)?;
    files::write_atomic(
        &files.intermediate_ca_key,
        intermediate.key_pem().as_bytes(),
        KEY_MODE,
    )?;
    files::write_atomic(
        &files.intermediate_ca_cert,
        intermediate.cert_pem.as_bytes(),
        CERT_MODE,
    )?;
    files::write_atomic(&files.edge_ca_key, edge.key_pem().as_bytes(), KEY_MODE)?;
    files::write_atomic(&files.edge_ca_cert, edge.cert_pem.as_bytes(), CERT_MODE)?;
    files::write_atomic(&files.edge_ca_chain, edge.chain_pem.as_bytes(), CERT_MODE)?;
    Ok(files)
}

/// Checks a hostname or SAN and returns it as rcgen wants it (IP or DNS name, lower case).
pub fn parse_san(value: &str) -> Result<SanType, CertError> {
    let value = value.trim();
    if let Ok(ip) = IpAddr::from_str(value) {
        return Ok(SanType::IpAddress(ip));
    }
    let lower = value.to_ascii_lowercase();
    let check = lower.strip_prefix("*.").unwrap_or(&lower);
    if rustls_pki_types::DnsName::try_from(check).is_err() || check.is_empty() {
        return Err(CertError::Input(format!(
            "{value:?} is neither an IP address nor a valid DNS name (letters, digits, '-' and '.')"
        )));
    }
    let ia5 = lower
        .clone()
        .try_into()
        .map_err(|e| CertError::Input(format!("{value:?}: {e}")))?;
    Ok(SanType::DnsName(ia5))
}

/// Options for [`issue_server`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The name clients connect to; becomes the CN in lower case (as IoT Edge does) and a SAN.
    pub hostname: String,
    /// More DNS names or IP addresses the server answers on.
    pub sans: Vec<String>,
    pub days: u32,
    pub key_type: KeyType,
}

/// A freshly issued certificate: PEM of the leaf, its key and the full chain to serve.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Leaf followed by the issuing CA's chain (no root).
    pub full_chain_pem: String,
}

/// The files [`Issued::write`] produced.
#[derive(Clone, Debug)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub full_chain: PathBuf,
}

impl IssuedFiles {
    /// Where [`Issued::write`] puts the files named `name` in `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> IssuedFiles {
        IssuedFiles {
            cert: dir.join(format!("{name}.cert.pem")),
            key: dir.join(format!("{name}.key.pem")),
            full_chain: dir.join(format!("{name}-full-chain.cert.pem")),
        }
    }

    /// Fails, naming the files, if any of them exists and `force` is not given
    /// (see [`files::refuse_overwrite`]).
    pub fn refuse_overwrite(&self, force: bool) -> Result<(), CertError> {
        files::refuse_overwrite(
            &[&self.key, &self.cert, &self.full_chain],
            force,
            "replacing them changes the key and certificate whatever uses them serves",
        )
    }
}

impl Issued {
    /// Writes `<name>.cert.pem`, `<name>.key.pem` (0600) and `<name>-full-chain.cert.pem` in
    /// `dir`, replacing what is there (renewal does that on purpose; commands that must not
    /// call [`IssuedFiles::refuse_overwrite`] first).
    pub fn write(&self, dir: &Path, name: &str) -> Result<IssuedFiles, CertError> {
        files::ensure_dir(dir)?;
        let out = IssuedFiles::in_dir(dir, name);
        files::write_atomic(&out.key, self.key_pem.as_bytes(), KEY_MODE)?;
        files::write_atomic(&out.cert, self.cert_pem.as_bytes(), CERT_MODE)?;
        files::write_atomic(&out.full_chain, self.full_chain_pem.as_bytes(), CERT_MODE)?;
        Ok(out)
    }
}

/// Parameters of a server certificate for `hostname` and `sans`, valid from `not_before` to
/// `not_after`. Public so renewal and tests can reuse (or deliberately break) them.
pub fn server_params(
    hostname: &str,
    sans: &[String],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CertError> {
    let cn = hostname.trim().to_ascii_lowercase();
    if cn.is_empty() {
        return Err(CertError::Input("--hostname is empty".into()));
    }
    if cn.len() > MAX_CN_LEN {
        return Err(CertError::Input(format!(
            "hostname {cn:?} is {} characters; a certificate CN holds at most {MAX_CN_LEN} \
             (use a shorter hostname and put long names in --san)",
            cn.len()
        )));
    }
    let mut names = vec![parse_san(&cn)?];
    for san in sans {
        let parsed = parse_san(san)?;
        if !names.contains(&parsed) {
            names.push(parsed);
        }
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&cn, None);
    params.subject_alt_names = names;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Issues a server certificate from `ca`.
pub fn issue_server(ca: &Ca, opts: &ServerOptions) -> Result<Issued, CertError> {
    let (nb, na) = validity(opts.days)?;
    let params = server_params(&opts.hostname, &opts.sans, nb, na)?;
    let key = generate_key(opts.key_type)?;
    issue_with(ca, &params, key)
}

/// Signs `params` with `ca` for `key` and assembles the full chain.
pub fn issue_with(ca: &Ca, params: &CertificateParams, key: KeyPair) -> Result<Issued, CertError> {
    let cert_pem = ca.sign(params, &key)?;
    Ok(Issued {
        full_chain_pem: format!("{cert_pem}{}", ca.chain_pem),
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Options for [`issue_client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The device or module name; becomes the CN.
    pub name: String,
    pub days: u32,
    pub key_type: KeyType,
}

/// Issues a client certificate (clientAuth) for a child device.
pub fn issue_client(ca: &Ca, opts: &ClientOptions) -> Result<Issued, CertError> {
    let cn = opts.name.trim();
    if cn.is_empty() || cn.len() > MAX_CN_LEN {
        return Err(CertError::Input(format!(
            "--name must be 1 to {MAX_CN_LEN} characters (got {} characters)",
            cn.len()
        )));
    }
    let (nb, na) = validity(opts.days)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn, None);
    params.not_before = nb;
    params.not_after = na;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = generate_key(opts.key_type)?;
    issue_with(ca, &params, key)
}
