//! Certificates that follow their files: a server certificate and a client trust bundle
//! that are re-read when they change on disk, without restarting or dropping connections.
//!
//! IoT Edge rotates a module's server certificate while the module runs, and an operator
//! replaces trust bundles in place; the nginx-based API proxy missed the latter. Both types
//! here notice changes with [`util::file_watch`] (polling inode, length and mtime, which also
//! sees a bind mount, a symlink swap or a rename into place).
//!
//! A change that does not load (half-written file, key that does not fit the certificate)
//! keeps the previous certificate in service: a bad rotation must never take the listener down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use util::file_watch::FileWatch;

use crate::tls::{self, TlsError};

/// Loads a chain and key and checks that the leaf is not a CA and that the key belongs to it.
/// The same checks run at start and on every reload, so a rotation to a CA certificate keeps
/// the previous certificate in service instead of breaking every client's handshake.
fn load_certified_key(chain: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = tls::load_certs(chain)?;
    tls::reject_ca_leaf(chain, &certs[0])?;
    let private_key = tls::load_key(key)?;
    let signing_key = tls::provider()
        .key_provider
        .load_private_key(private_key)
        .map_err(|err| TlsError::Invalid {
            path: key.to_owned(),
            message: format!("unusable private key: {err}"),
        })?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // The provider cannot tell for this key type: let the handshake find out.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(err) => Err(TlsError::Mismatch {
            chain: chain.to_owned(),
            key: key.to_owned(),
            message: format!("the key does not fit the certificate: {err}"),
        }),
    }
}

/// Hands every new TLS handshake the certificate that is current at that moment.
/// A value loaded from files and swapped when they change: what the server certificate and
/// the trust bundle have in common.
#[derive(Debug)]
struct Followed<T> {
    current: RwLock<Arc<T>>,
    /// The files, as they were at the last attempted load, so a broken file is not retried
    /// every poll.
    files: Mutex<FileWatch>,
    last_error: Mutex<Option<String>>,
}

impl<T> Followed<T> {
    /// `files` must be taken before `value` was loaded from them.
    fn new(value: T, files: FileWatch) -> Self {
        Followed {
            current: RwLock::new(Arc::new(value)),
            files: Mutex::new(files),
            last_error: Mutex::new(None),
        }
    }

    fn get(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads again when the files changed since the last attempt. `Ok(true)`: the new value is
    /// in service; `Ok(false)`: nothing changed; `Err`: it does not load and the old value stays.
    fn reload(&self, load: impl FnOnce() -> Result<T, TlsError>) -> Result<bool, TlsError> {
        // The attempt is remembered even if it fails: a broken file is reported once, and the
        // writer finishing it (or fixing it) changes it again.
        if !self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .changed()
        {
            return Ok(false);
        }
        let mut last_error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match load() {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
                *last_error = None;
                Ok(true)
            }
            Err(err) => {
                *last_error = Some(err.to_string());
                Err(err)
            }
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The resolver rustls asks at each handshake: the certificate in service now.
#[derive(Debug)]
struct CurrentCert(Followed<CertifiedKey>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

/// A server certificate (chain + key) that is re-read when its files change.
///
/// There is one [`rustls::ServerConfig`] for the whole process; its certificate resolver
/// looks up the current certificate per handshake, so a reload affects only new
/// connections and never disturbs connections already open.
pub struct ReloadingServer {
    chain: PathBuf,
    key: PathBuf,
    resolver: Arc<CurrentCert>,
    config: Arc<rustls::ServerConfig>,
}

impl ReloadingServer {
    /// Loads `chain` (leaf first) and `key`; TLS 1.2 and 1.3 only, ALPN as given
    /// (e.g. `[b"h2".to_vec(), b"http/1.1".to_vec()]`). Fails if either file is unusable.
    pub fn new(chain: PathBuf, key: PathBuf, alpn: Vec<Vec<u8>>) -> Result<Self, TlsError> {
        Self::with_client_auth(chain, key, alpn, None)
    }

    /// Like [`ReloadingServer::new`], and also asks clients for a certificate verified
    /// against the roots in `client_ca` (when given). Clients without a certificate are
    /// still accepted: the certificate is optional, and the application decides what an
    /// unauthenticated client may do. The client CA bundle is read once, at start.
    pub fn with_client_auth(
        chain: PathBuf,
        key: PathBuf,
        alpn: Vec<Vec<u8>>,
        client_ca: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let files = FileWatch::new([chain.clone(), key.clone()]);
        let certified = load_certified_key(&chain, &key)?;
        let resolver = Arc::new(CurrentCert(Followed::new(certified, files)));
        let builder = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|err| TlsError::Invalid {
                path: chain.clone(),
                message: err.to_string(),
            })?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = tls::load_root_store(ca)?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    tls::provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|err| TlsError::Invalid {
                    path: ca.to_owned(),
                    message: format!("cannot verify client certificates with it: {err}"),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = alpn;
        Ok(Self {
            chain,
            key,
            resolver,
            config: Arc::new(config),
        })
    }

    /// The process-wide server config; its certificate follows the files.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// The certificate chain new handshakes get now (leaf first).
    pub fn current_chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.resolver.0.get().cert.clone()
    }

    /// Re-reads the chain and key if either file changed since the last attempt.
    /// `Ok(true)`: the new certificate is in service; `Ok(false)`: nothing changed;
    /// `Err`: the files changed but do not load, and the previous certificate stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.resolver
            .0
            .reload(|| load_certified_key(&self.chain, &self.key))
    }

    /// The error of the last failed reload, if the last attempt failed.
    pub fn last_error(&self) -> Option<String> {
        self.resolver.0.last_error()
    }

    /// Polls the files every `every` on a background thread and reloads on change.
    /// Failed reloads are printed to stderr (see [`ReloadingServer::last_error`]); use
    /// [`ReloadingServer::reload_if_changed`] in your own loop to log them differently.
    /// The thread ends once every other `Arc` to `self` is dropped.
    pub fn spawn_watch(self: Arc<Self>, every: Duration) -> std::thread::JoinHandle<()> {
        let weak = Arc::downgrade(&self);
        drop(self);
        watch_thread("server certificate", weak, every, |s: &Self| {
            s.reload_if_changed()
        })
    }
}

/// A client trust bundle that is re-read when its file changes. Each new upstream
/// connection asks [`ReloadingTrust::config`] for the current client config; connections
/// already open keep the config they were made with.
pub struct ReloadingTrust {
    trust: PathBuf,
    alpn: Vec<Vec<u8>>,
    followed: Followed<rustls::ClientConfig>,
}

impl ReloadingTrust {
    /// Loads the PEM bundle `trust`; the client config offers `alpn` (may be empty).
    pub fn new(trust: PathBuf, alpn: Vec<Vec<u8>>) -> Result<Self, TlsError> {
        let files = FileWatch::new([trust.clone()]);
        let config = Self::load(&trust, &alpn)?;
        Ok(Self {
            trust,
            alpn,
            followed: Followed::new(config, files),
        })
    }

    fn load(trust: &Path, alpn: &[Vec<u8>]) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = tls::client_config(trust)?;
        config.alpn_protocols = alpn.to_vec();
        Ok(config)
    }

    /// The client config to use for the next new connection.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.followed.get()
    }

    /// The bundle's path, for messages.
    pub fn path(&self) -> &Path {
        &self.trust
    }

    /// Re-reads the bundle if the file changed; on error the previous trust stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.followed.reload(|| Self::load(&self.trust, &self.alpn))
    }

    /// The error of the last failed reload, if the last attempt failed.
    pub fn last_error(&self) -> Option<String> {
        self.followed.last_error()
    }

    /// Polls the file every `every` on a background thread; see
    /// [`ReloadingServer::spawn_watch`].
    pub fn spawn_watch(self: Arc<Self>, every: Duration) -> std::thread::JoinHandle<()> {
        let weak = Arc::downgrade(&self);
        drop(self);
        watch_thread("trust bundle", weak, every, |s: &Self| {
            s.reload_if_changed()
        })
    }
}

/// The polling loop shared by both watchers: a plain thread, so it works with or without
/// an async runtime, holding only a weak reference so it never keeps its owner alive.
fn watch_thread<T: Send + Sync + 'static>(
    what: &'static str,
    weak: Weak<T>,
    every: Duration,
    reload: fn(&T) -> Result<bool, TlsError>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || loop {
        std::thread::sleep(every);
        let Some(this) = weak.upgrade() else { return };
        if let Err(err) = reload(&this) {
            eprintln!("warning: {what} not reloaded, the previous one stays in service: {err}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fresh scratch directory (no tempfile dependency in this crate), removed on drop.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "certs-reload-{name}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed EC certificate and key as `NAME.crt` / `NAME.key` in `dir`; not a CA
    /// (`openssl req -x509` makes CAs by default), so it may serve.
    fn self_signed(dir: &Path, name: &str) {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ],
        );
    }

    #[test]
    fn server_reloads_on_rename_and_keeps_old_on_error() {
        let dir = Scratch::new("server");
        let d = dir.path();
        self_signed(d, "one");
        self_signed(d, "two");
        let chain = d.join("server.crt");
        let key = d.join("server.key");
        std::fs::copy(d.join("one.crt"), &chain).unwrap();
        std::fs::copy(d.join("one.key"), &key).unwrap();
        let server = ReloadingServer::new(chain.clone(), key.clone(), vec![]).unwrap();
        let first = server.current_chain();
        assert!(!server.reload_if_changed().unwrap(), "nothing changed yet");

        // A key that does not fit: the old certificate stays.
        std::fs::copy(d.join("two.key"), d.join("tmp.key")).unwrap();
        std::fs::rename(d.join("tmp.key"), &key).unwrap();
        assert!(server.reload_if_changed().is_err());
        assert_eq!(server.current_chain(), first);
        assert!(server.last_error().is_some());

        // The matching certificate renamed into place: reloaded.
        std::fs::copy(d.join("two.crt"), d.join("tmp.crt")).unwrap();
        std::fs::rename(d.join("tmp.crt"), &chain).unwrap();
        assert!(server.reload_if_changed().unwrap());
        assert_ne!(server.current_chain(), first);
        assert_eq!(
            server.current_chain(),
            tls::load_certs(&d.join("two.crt")).unwrap()
        );
        assert!(server.last_error().is_none());
    }

    #[test]
    fn trust_reloads_and_keeps_old_on_garbage() {
        let dir = Scratch::new("trust");
        let d = dir.path();
        self_signed(d, "one");
        self_signed(d, "two");
        let bundle = d.join("trust.pem");
        std::fs::copy(d.join("one.crt"), &bundle).unwrap();
        let trust = ReloadingTrust::new(bundle.clone(), vec![]).unwrap();
        let first = trust.config();
        std::fs::write(d.join("tmp.pem"), "not a certificate").unwrap();
        std::fs::rename(d.join("tmp.pem"), &bundle).unwrap();
        assert!(trust.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(&first, &trust.config()));
        std::fs::copy(d.join("two.crt"), d.join("tmp.pem")).unwrap();
        std::fs::rename(d.join("tmp.pem"), &bundle).unwrap();
        assert!(trust.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&first, &trust.config()));
    }
}
