//! Test certificates made with the real `openssl` CLI: a root CA, an intermediate CA, server
//! certificates (SAN 127.0.0.1, localhost and a DNS name) and client certificates.
//! (Used until the certs crate's generator is on main; the recipe is the same chain shape.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (./test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` flags for a new ECDSA P-256 key, unencrypted.
const NEW_EC_KEY: &[&str] = &[
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// Makes `NAME.key` (ECDSA P-256) and `NAME.crt` in `dir` with common name `cn` and the
/// extensions `ext` (openssl extfile lines), signed by `ISSUER.crt`/`ISSUER.key` there.
fn sign(dir: &Path, name: &str, cn: &str, ext: &str, issuer: &str) {
    let file = |ext: &str| format!("{name}.{ext}");
    let subject = format!("/CN={cn}");
    let request = [
        "-keyout",
        &file("key"),
        "-out",
        &file("csr"),
        "-subj",
        &subject,
    ];
    openssl(dir, &[&["req"], NEW_EC_KEY, &request].concat());
    std::fs::write(dir.join(file("ext")), ext).expect("write extfile");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &file("csr"),
            "-CA",
            &format!("{issuer}.crt"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-CAcreateserial",
            "-out",
            &file("crt"),
            "-days",
            "2",
            "-extfile",
            &file("ext"),
        ],
    );
}

/// A root CA and an intermediate CA in `dir`, to issue leaf certificates from.
pub struct TestCa {
    pub dir: PathBuf,
    /// The root certificate: the only thing clients trust.
    pub root: PathBuf,
    /// The intermediate CA certificate (part of every chain file).
    pub intermediate: PathBuf,
}

/// Files of one issued leaf certificate.
pub struct Leaf {
    /// Leaf then intermediate, PEM: what a server presents.
    pub chain: PathBuf,
    /// The leaf alone.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// Creates `root.crt`/`root.key` and `int.crt`/`int.key` (ECDSA P-256) in `dir`.
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).expect("create CA dir");
        let root = [
            "-keyout",
            "root.key",
            "-out",
            "root.crt",
            "-days",
            "2",
            "-subj",
            "/CN=test root CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        openssl(dir, &[&["req", "-x509"], NEW_EC_KEY, &root].concat());
        sign(
            dir,
            "int",
            "test intermediate CA",
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
            "root",
        );
        TestCa {
            dir: dir.to_owned(),
            root: dir.join("root.crt"),
            intermediate: dir.join("int.crt"),
        }
    }

    fn issue(&self, name: &str, cn: &str, ext: &str) -> Leaf {
        let d = &self.dir;
        sign(d, name, cn, ext, "int");
        let leaf = std::fs::read_to_string(d.join(format!("{name}.crt"))).expect("read leaf");
        let int = std::fs::read_to_string(&self.intermediate).expect("read intermediate");
        let chain = d.join(format!("{name}.chain.pem"));
        std::fs::write(&chain, format!("{leaf}{int}")).expect("write chain");
        Leaf {
            chain,
            cert: d.join(format!("{name}.crt")),
            key: d.join(format!("{name}.key")),
        }
    }

    /// A server certificate for 127.0.0.1, ::1, localhost and `dns`.
    pub fn server(&self, name: &str, dns: &str) -> Leaf {
        self.issue(
            name,
            dns,
            &format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\n\
                 subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:{dns}\n"
            ),
        )
    }

    /// A client certificate with common name `cn`.
    pub fn client(&self, name: &str, cn: &str) -> Leaf {
        self.issue(
            name,
            cn,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
    }

    /// A blocking HTTPS client trusting only this CA's root: no redirects, 120 s per request.
    pub fn https_client(&self) -> reqwest::blocking::Client {
        let pem = std::fs::read(&self.root).expect("read the test CA");
        reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("the test CA"))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .expect("build the HTTPS client")
    }

    /// A directory holding only `ca.crt` (the root), as skopeo's `--*-cert-dir` wants it.
    pub fn skopeo_cert_dir(&self) -> PathBuf {
        let dir = self.dir.join("skopeo-certs");
        std::fs::create_dir_all(&dir).expect("create cert dir");
        std::fs::copy(&self.root, dir.join("ca.crt")).expect("copy root");
        dir
    }
}
