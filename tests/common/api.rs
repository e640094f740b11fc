//! A small blocking client for the OCI Distribution API, for protocol tests: raw requests plus
//! helpers that push blobs and manifests the way a client would, and build manifests.

use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A content descriptor (`mediaType`, `digest`, `size`).
#[derive(Clone, Debug)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Desc {
    pub fn of(media_type: &str, bytes: &[u8]) -> Desc {
        Desc {
            media_type: media_type.into(),
            digest: sha256(bytes),
            size: bytes.len() as u64,
        }
    }

    pub fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An image manifest (OCI or Docker schema 2, by `media_type`) over `config` and `layers`.
pub fn image_manifest(media_type: &str, config: &Desc, layers: &[Desc]) -> Vec<u8> {
    let layers: Vec<Value> = layers.iter().map(Desc::json).collect();
    serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.json(),
        "layers": layers,
    }))
    .unwrap()
}

/// An index / manifest list (by `media_type`) over `manifests`, one platform each.
pub fn index_manifest(media_type: &str, manifests: &[(Desc, &str)]) -> Vec<u8> {
    let list: Vec<Value> = manifests
        .iter()
        .map(|(d, arch)| {
            let mut v = d.json();
            v["platform"] = json!({"architecture": arch, "os": "linux"});
            v
        })
        .collect();
    serde_json::to_vec_pretty(
        &json!({"schemaVersion": 2, "mediaType": media_type, "manifests": list}),
    )
    .unwrap()
}

/// A minimal image config naming `arch`, with a random label so every call differs.
pub fn config_bytes(arch: &str) -> Vec<u8> {
    let nonce = hex::encode(super::oci::random_bytes(8));
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": {"nonce": nonce}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap()
}

/// The `code`s of an OCI error body (`{"errors":[{"code":..}]}`), empty if the body is not one.
pub fn error_codes(body: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return vec![];
    };
    v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["code"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A response read whole: status, headers and body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    fn from(r: Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().map(|b| b.to_vec()).unwrap_or_default();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Panics unless the status is `status`.
    #[track_caller]
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(
            self.status,
            status,
            "unexpected status; headers {:?}; body: {}",
            self.headers,
            self.text()
        );
        self
    }

    /// Panics unless this is the spec's error JSON with `status` and `code` among its codes.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Resp {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}; body: {}",
            self.text()
        );
        let codes = error_codes(&self.text());
        assert!(
            codes.iter().any(|c| c == code),
            "expected error code {code}, got {codes:?}; body: {}",
            self.text()
        );
        self
    }
}

/// Client bound to one registry base URL (`http://127.0.0.1:PORT`).
pub struct Api {
    pub http: Client,
    pub base: String,
}

impl Api {
    pub fn new(base: &str) -> Api {
        let http = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()
            .expect("build HTTP client");
        Api::with_client(base, http)
    }

    /// A client for `base` that sends its requests with `http` (e.g. one trusting a test CA,
    /// for a registry behind the TLS proxy).
    pub fn with_client(base: &str, http: Client) -> Api {
        Api {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// Absolute URL for `path_or_url` (a `/v2/...` path, or a `Location` header, absolute or not).
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{}", self.base, path_or_url)
        }
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Sends `rb` and reads the whole answer.
    pub fn send(&self, rb: RequestBuilder) -> Resp {
        Resp::from(rb.send().expect("HTTP request to the registry"))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send(self.req(Method::GET, path))
    }

    pub fn head(&self, path: &str) -> Resp {
        self.send(self.req(Method::HEAD, path))
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.send(self.req(Method::DELETE, path))
    }

    /// GETs a manifest accepting every manifest type (some registries answer 404 to a GET
    /// whose Accept header omits the stored type).
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Resp {
        self.send(
            self.req(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
                .header(
                    "accept",
                    format!("{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST}, */*"),
                ),
        )
    }

    /// Starts an upload session; returns the `Location` of the session.
    #[track_caller]
    pub fn start_upload(&self, repo: &str) -> String {
        let r = self
            .send(self.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")))
            .expect(202);
        r.header("location")
            .expect("202 upload answer has a Location header")
    }

    /// Appends `?digest=`/`&digest=` to an upload location.
    pub fn with_digest(location: &str, digest: &str) -> String {
        let sep = if location.contains('?') { '&' } else { '?' };
        format!("{location}{sep}digest={digest}")
    }

    /// PATCHes `bytes` as a chunk (`application/octet-stream`) to the upload session at
    /// `location`, with `Content-Range: <content_range>` when given; the response, unchecked.
    pub fn patch_chunk(&self, location: &str, bytes: &[u8], content_range: Option<&str>) -> Resp {
        let mut rb = self
            .req(Method::PATCH, location)
            .header("content-type", "application/octet-stream");
        if let Some(range) = content_range {
            rb = rb.header("content-range", range);
        }
        self.send(rb.body(bytes.to_vec()))
    }

    /// Pushes `bytes` as a blob of `repo` (POST then PUT, the form every client uses); returns its digest.
    #[track_caller]
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let loc = self.start_upload(repo);
        let r = self.send(
            self.req(Method::PUT, &Self::with_digest(&loc, &digest))
                .header("content-type", "application/octet-stream")
                .body(bytes.to_vec()),
        );
        let r = r.expect(201);
        assert_eq!(
            r.header("docker-content-digest").as_deref(),
            Some(digest.as_str()),
            "blob PUT digest header"
        );
        digest
    }

    /// Asserts `repo` serves `bytes` whole under their digest (GET; a mismatch names the sizes,
    /// not the bytes).
    #[track_caller]
    pub fn assert_serves_blob(&self, repo: &str, bytes: &[u8]) {
        let digest = sha256(bytes);
        let got = self.get(&format!("/v2/{repo}/blobs/{digest}")).expect(200);
        assert!(
            got.body == bytes,
            "{repo} served {} bytes under {digest}, not the {} pushed",
            got.body.len(),
            bytes.len()
        );
    }

    /// PUTs a manifest under `reference` (tag or digest) with `media_type` as Content-Type.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Resp {
        self.send(
            self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
                .header("content-type", media_type)
                .body(body.to_vec()),
        )
    }

    /// Pushes a config blob and `layers` random layers of `layer_size` bytes, then an OCI image
    /// manifest tagged `tag`; returns (manifest bytes, manifest descriptor, blob descriptors).
    #[track_caller]
    pub fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layers: usize,
        layer_size: usize,
    ) -> (Vec<u8>, Desc, Vec<Desc>) {
        let config = config_bytes("amd64");
        self.push_blob(repo, &config);
        let cdesc = Desc::of(OCI_CONFIG, &config);
        let mut ldescs = Vec::new();
        for _ in 0..layers {
            let layer = super::oci::random_bytes(layer_size);
            self.push_blob(repo, &layer);
            ldescs.push(Desc::of(OCI_LAYER, &layer));
        }
        let manifest = image_manifest(OCI_MANIFEST, &cdesc, &ldescs);
        self.put_manifest(repo, tag, OCI_MANIFEST, &manifest)
            .expect(201);
        let mdesc = Desc::of(OCI_MANIFEST, &manifest);
        let mut all = vec![cdesc];
        all.extend(ldescs);
        (manifest, mdesc, all)
    }

    /// The repository's tags (empty when the repository is unknown).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let r = self.get(&format!("/v2/{repo}/tags/list"));
        if r.status != 200 {
            return vec![];
        }
        let v = r.json();
        v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A request body that trickles out slowly after its first `fast` bytes, so the registry can be
/// killed while it is still receiving; `sent` counts the bytes handed to the client so far.
pub struct Trickle {
    data: std::sync::Arc<Vec<u8>>,
    pos: usize,
    fast: usize,
    pub sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Trickle {
    pub fn new(data: std::sync::Arc<Vec<u8>>, fast: usize) -> Trickle {
        Trickle {
            data,
            pos: 0,
            fast,
            sent: Default::default(),
        }
    }
}

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.data.len() {
            return Ok(0);
        }
        if self.pos >= self.fast {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let n = buf.len().min(64 * 1024).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        self.sent
            .store(self.pos, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}
