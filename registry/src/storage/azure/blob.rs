//! The Blob service calls on one blob the store makes: Get Blob Properties, Put Blob, Put
//! Block, Put Block List, Get Block List, Get Blob (ranged), Set Blob Metadata, Copy Blob and
//! Delete Blob, each with the conditions the store puts on it.

use std::collections::HashMap;
use std::ops::Range;
use std::time::SystemTime;

use base64::Engine;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::Method;

use super::client::{Client, Request, RestError};
use super::xml;

/// One blob of the container: cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct BlobClient {
    client: Client,
    name: String,
}

/// The state of the copy that wrote a blob (`x-ms-copy-status`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CopyStatus {
    Pending,
    Success,
    /// `aborted`, `failed` or a state this client does not know.
    Ended(String),
}

impl CopyStatus {
    pub(crate) fn parse(value: &str) -> CopyStatus {
        match value {
            "pending" => CopyStatus::Pending,
            "success" => CopyStatus::Success,
            other => CopyStatus::Ended(other.to_owned()),
        }
    }
}

/// What the store reads of a blob's properties.
#[derive(Clone, Debug)]
pub(crate) struct Properties {
    pub(crate) content_length: u64,
    pub(crate) last_modified: SystemTime,
    pub(crate) etag: String,
    /// `None` when no copy wrote it.
    pub(crate) copy_status: Option<CopyStatus>,
    /// Its metadata, names in lowercase.
    pub(crate) metadata: HashMap<String, String>,
}

/// Whether a blob's bytes are all there: no copy wrote it, or the copy that did is done.
pub(crate) fn complete(copy_status: &Option<CopyStatus>) -> bool {
    matches!(copy_status, None | Some(CopyStatus::Success))
}

impl Properties {
    /// Whether its bytes are all there: not the destination of a copy still running.
    pub(crate) fn complete(&self) -> bool {
        complete(&self.copy_status)
    }
}

/// A header's value as text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `ETag` of a write's response.
fn etag(headers: &HeaderMap, what: &str) -> Result<String, RestError> {
    header(headers, "etag")
        .map(str::to_owned)
        .ok_or_else(|| RestError::unreadable(what, "no ETag"))
}

/// The base64 block id the service knows block `raw` by.
pub(crate) fn block_id(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

impl BlobClient {
    pub(crate) fn new(client: Client, name: &str) -> BlobClient {
        BlobClient {
            client,
            name: name.to_owned(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn request(&self, method: Method) -> Request {
        Request::new(method, self.client.blob_url(&self.name))
    }

    /// Get Blob Properties: `None` when the blob is absent.
    pub(crate) async fn properties(&self) -> Result<Option<Properties>, RestError> {
        let what = "Get Blob Properties";
        let response = match self.client.send(&self.request(Method::HEAD), what).await {
            Ok(response) => response,
            Err(err) if err.not_found() => return Ok(None),
            Err(err) => return Err(err),
        };
        let headers = response.headers();
        let content_length = header(headers, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| RestError::unreadable(what, "no Content-Length"))?;
        let last_modified = header(headers, "last-modified")
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .ok_or_else(|| RestError::unreadable(what, "no Last-Modified date"))?;
        let metadata = headers
            .iter()
            .filter_map(|(name, value)| {
                let key = name.as_str().strip_prefix("x-ms-meta-")?;
                Some((key.to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        Ok(Some(Properties {
            content_length,
            last_modified,
            etag: etag(headers, what)?,
            copy_status: header(headers, "x-ms-copy-status").map(CopyStatus::parse),
            metadata,
        }))
    }

    /// Put Blob: `body` as the whole block blob, with `metadata`; with `only_new`, only when
    /// no blob of that name exists (`If-None-Match: *`, a 409 or 412 otherwise). Its `ETag`.
    pub(crate) async fn put(
        &self,
        body: Bytes,
        metadata: &[(&str, String)],
        only_new: bool,
    ) -> Result<String, RestError> {
        let what = "Put Blob";
        let request = self
            .request(Method::PUT)
            .header("x-ms-blob-type", "BlockBlob")?
            .header("content-type", "application/octet-stream")?
            .header_if("if-none-match", only_new.then_some("*"))?
            .metadata(metadata)?
            .body(body);
        let response = self.client.send(&request, what).await?;
        etag(response.headers(), what)
    }

    /// Put Block: `body` as uncommitted block `id` (base64, see [`block_id`]).
    pub(crate) async fn put_block(&self, id: &str, body: Bytes) -> Result<(), RestError> {
        let request = self
            .request(Method::PUT)
            .query("comp", "block")
            .query("blockid", id)
            .body(body);
        self.client.send(&request, "Put Block").await.map(drop)
    }

    /// Put Block List: the blob becomes blocks `ids` (each its latest version), with
    /// `metadata`, when it is still at version `if_match`. Its new `ETag`.
    pub(crate) async fn put_block_list(
        &self,
        ids: &[String],
        metadata: &[(&str, String)],
        if_match: &str,
    ) -> Result<String, RestError> {
        let what = "Put Block List";
        let mut body = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for id in ids {
            // Base64: nothing to escape.
            body.push_str("<Latest>");
            body.push_str(id);
            body.push_str("</Latest>");
        }
        body.push_str("</BlockList>");
        let request = self
            .request(Method::PUT)
            .query("comp", "blocklist")
            .header("content-type", "application/xml")?
            .header("if-match", if_match)?
            .metadata(metadata)?
            .body(Bytes::from(body));
        let response = self.client.send(&request, what).await?;
        etag(response.headers(), what)
    }

    /// Get Block List (committed): each block's id (base64) and size, and the blob's `ETag`.
    pub(crate) async fn committed_blocks(&self) -> Result<(Vec<(String, u64)>, String), RestError> {
        let what = "Get Block List";
        let request = self
            .request(Method::GET)
            .query("comp", "blocklist")
            .query("blocklisttype", "committed");
        let response = self.client.send(&request, what).await?;
        let etag = etag(response.headers(), what)?;
        let body = super::client::text(response, what).await?;
        Ok((
            parse_block_list(&body).map_err(|e| RestError::unreadable(what, e))?,
            etag,
        ))
    }

    /// Get Blob: the bytes of `range` (not empty) as they arrive; with `if_match`, only of
    /// that version.
    pub(crate) async fn get(
        &self,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<reqwest::Response, RestError> {
        let request = self
            .request(Method::GET)
            .header("range", &format!("bytes={}-{}", range.start, range.end - 1))?
            .header_if("if-match", if_match)?;
        self.client.send(&request, "Get Blob").await
    }

    /// Set Blob Metadata (replacing all of it); this moves `Last-Modified`.
    pub(crate) async fn set_metadata(&self, metadata: &[(&str, String)]) -> Result<(), RestError> {
        let request = self
            .request(Method::PUT)
            .query("comp", "metadata")
            .metadata(metadata)?;
        self.client
            .send(&request, "Set Blob Metadata")
            .await
            .map(drop)
    }

    /// Copy Blob: this blob becomes a copy of blob `source` of the container, when `source`
    /// is at version `source_if_match`; with `metadata` (else the source's). The copy's state.
    pub(crate) async fn copy_from(
        &self,
        source: &str,
        source_if_match: Option<&str>,
        metadata: &[(&str, String)],
    ) -> Result<CopyStatus, RestError> {
        let what = "Copy Blob";
        let request = self
            .request(Method::PUT)
            .header(
                "x-ms-copy-source",
                self.client.authorized_url(source).as_str(),
            )?
            .header_if("x-ms-source-if-match", source_if_match)?
            .metadata(metadata)?;
        let response = self.client.send(&request, what).await?;
        header(response.headers(), "x-ms-copy-status")
            .map(CopyStatus::parse)
            .ok_or_else(|| RestError::unreadable(what, "no x-ms-copy-status"))
    }

    /// Delete Blob; with `if_match`, only that version.
    pub(crate) async fn delete(&self, if_match: Option<&str>) -> Result<(), RestError> {
        let request = self
            .request(Method::DELETE)
            .header_if("if-match", if_match)?;
        self.client.send(&request, "Delete Blob").await.map(drop)
    }
}

/// The committed blocks of a Get Block List body.
pub(crate) fn parse_block_list(body: &str) -> Result<Vec<(String, u64)>, String> {
    let root = xml::parse(body)?;
    if root.name != "BlockList" {
        return Err(format!("a <{}> and not a <BlockList>", root.name));
    }
    let Some(committed) = root.child("CommittedBlocks") else {
        return Ok(Vec::new());
    };
    committed
        .children("Block")
        .map(|block| {
            let name = block.text_of("Name").ok_or("a block without a <Name>")?;
            let size = block
                .text_of("Size")
                .and_then(|s| s.trim().parse().ok())
                .ok_or("a block without a <Size>")?;
            Ok((name.to_owned(), size))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_block_list() {
        let body = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><CommittedBlocks><Block><Name>YWJj</Name><Size>8388608</Size></Block><Block><Name>ZGVm</Name><Size>3</Size></Block></CommittedBlocks><UncommittedBlocks /></BlockList>";
        assert_eq!(
            parse_block_list(body).unwrap(),
            vec![("YWJj".to_owned(), 8388608), ("ZGVm".to_owned(), 3)]
        );
        assert_eq!(
            parse_block_list("<BlockList><CommittedBlocks/></BlockList>").unwrap(),
            vec![]
        );
        assert!(parse_block_list("<BlockList><CommittedBlocks><Block><Name>x</Name></Block></CommittedBlocks></BlockList>").is_err());
        assert!(parse_block_list("<Error/>").is_err());
    }
}
