//! The Blob service calls on the container: Create Container and List Blobs (by prefix, page
//! by page), with the reading of a List Blobs page.

use std::time::SystemTime;

use reqwest::Method;

use super::blob::CopyStatus;
use super::client::{Client, Request, RestError};
use super::xml;

/// What the store reads of a listed blob.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Listed {
    pub(crate) name: String,
    pub(crate) content_length: u64,
    pub(crate) last_modified: SystemTime,
    pub(crate) copy_status: Option<CopyStatus>,
}

impl Listed {
    /// Whether its bytes are all there: not the destination of a copy still running.
    pub(crate) fn complete(&self) -> bool {
        super::blob::complete(&self.copy_status)
    }
}

/// One page of a listing, and where the next starts (`None`: the last page).
#[derive(Debug, PartialEq)]
pub(crate) struct Page {
    pub(crate) blobs: Vec<Listed>,
    pub(crate) next_marker: Option<String>,
}

/// Create Container: `false` when it exists already (409).
pub(crate) async fn create(client: &Client) -> Result<bool, RestError> {
    let request = Request::new(Method::PUT, client.container_url()).query("restype", "container");
    match client.send(&request, "Create Container").await {
        Ok(_) => Ok(true),
        Err(err) if err.status == Some(reqwest::StatusCode::CONFLICT) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Every blob whose name starts with `prefix`, all pages read.
pub(crate) async fn list(client: &Client, prefix: &str) -> Result<Vec<Listed>, RestError> {
    let mut blobs = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = list_page(client, prefix, marker.as_deref()).await?;
        blobs.extend(page.blobs);
        match page.next_marker {
            Some(next) => marker = Some(next),
            None => return Ok(blobs),
        }
    }
}

/// The page of List Blobs starting at `marker`.
async fn list_page(client: &Client, prefix: &str, marker: Option<&str>) -> Result<Page, RestError> {
    let what = "List Blobs";
    let mut request = Request::new(Method::GET, client.container_url())
        .query("restype", "container")
        .query("comp", "list")
        .query("prefix", prefix)
        .query("include", "copy");
    if let Some(marker) = marker {
        request = request.query("marker", marker);
    }
    let response = client.send(&request, what).await?;
    let body = super::client::text(response, what).await?;
    parse_page(&body).map_err(|e| RestError::unreadable(what, e))
}

/// Reads a List Blobs body.
fn parse_page(body: &str) -> Result<Page, String> {
    let root = xml::parse(body)?;
    if root.name != "EnumerationResults" {
        return Err(format!("a <{}> and not an <EnumerationResults>", root.name));
    }
    let blobs = match root.child("Blobs") {
        Some(blobs) => blobs
            .children("Blob")
            .map(parse_blob)
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let next_marker = root
        .text_of("NextMarker")
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    Ok(Page { blobs, next_marker })
}

fn parse_blob(blob: &xml::Element) -> Result<Listed, String> {
    let name = blob.text_of("Name").ok_or("a <Blob> without a <Name>")?;
    let missing = |field: &str| format!("blob {name:?} has no valid <{field}>");
    let properties = blob
        .child("Properties")
        .ok_or_else(|| missing("Properties"))?;
    let content_length = properties
        .text_of("Content-Length")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| missing("Content-Length"))?;
    let last_modified = properties
        .text_of("Last-Modified")
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
        .ok_or_else(|| missing("Last-Modified"))?;
    let copy_status = properties
        .text_of("CopyStatus")
        .filter(|s| !s.is_empty())
        .map(CopyStatus::parse);
    Ok(Listed {
        name: name.to_owned(),
        content_length,
        last_modified,
        copy_status,
    })
}

/// Fuzz target for the reading of the service's XML bodies (a List Blobs page, a block list,
/// the reader under them; bounded run below, `fuzz/` under `cargo fuzz`): never a panic, and a
/// page read has no empty marker.
#[cfg(any(test, fuzzing))]
pub fn fuzz_azure_xml(data: &[u8]) {
    let text = fuzzkit::text(data);
    if let Ok(page) = parse_page(&text) {
        assert_ne!(page.next_marker.as_deref(), Some(""), "{text:?}");
    }
    let _ = super::blob::parse_block_list(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first page of a listing Azurite answered (`maxresults=2`, three blobs, one with
    /// characters XML escapes), as captured; the second page; an empty one.
    const FIRST_PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><EnumerationResults ServiceEndpoint="http://127.0.0.1:45307/devstoreaccount1" ContainerName="cap"><Prefix>blobs/</Prefix><Marker/><MaxResults>2</MaxResults><Blobs><Blob><Name>blobs/a&amp;b&lt;c&gt;'"d</Name><Properties><Creation-Time>Wed, 02 Dec 2026 19:52:06 GMT</Creation-Time><Last-Modified>Wed, 02 Dec 2026 19:52:06 GMT</Last-Modified><Etag>0x20232BCEB129280</Etag><Content-Length>5</Content-Length><Content-Type>application/octet-stream</Content-Type><Content-MD5>XUFAKrxLKna5cZ2REBfFkg==</Content-MD5><BlobType>BlockBlob</BlobType><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted><AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred><AccessTierChangeTime>Wed, 02 Dec 2026 19:52:06 GMT</AccessTierChangeTime></Properties></Blob><Blob><Name>blobs/sha256/aa</Name><Properties><Creation-Time>Wed, 02 Dec 2026 19:52:06 GMT</Creation-Time><Last-Modified>Wed, 02 Dec 2026 19:52:06 GMT</Last-Modified><Etag>0x1E32063D8D53C90</Etag><Content-Length>5</Content-Length><Content-Type>application/octet-stream</Content-Type><Content-MD5>XUFAKrxLKna5cZ2REBfFkg==</Content-MD5><BlobType>BlockBlob</BlobType><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted><AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred><AccessTierChangeTime>Wed, 02 Dec 2026 19:52:06 GMT</AccessTierChangeTime></Properties></Blob></Blobs><NextMarker>blobs/sha256/aa</NextMarker></EnumerationResults>"#;
    const SECOND_PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><EnumerationResults ServiceEndpoint="http://127.0.0.1:45307/devstoreaccount1" ContainerName="cap"><Prefix>blobs/</Prefix><Marker>blobs/sha256/aa</Marker><MaxResults>2</MaxResults><Blobs><Blob><Name>blobs/sha256/bb</Name><Properties><Creation-Time>Wed, 02 Dec 2026 19:52:06 GMT</Creation-Time><Last-Modified>Wed, 02 Dec 2026 19:52:06 GMT</Last-Modified><Etag>0x2661D231BBB5AE0</Etag><Content-Length>5</Content-Length><Content-Type>application/octet-stream</Content-Type><Content-MD5>XUFAKrxLKna5cZ2REBfFkg==</Content-MD5><BlobType>BlockBlob</BlobType><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted><AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred><AccessTierChangeTime>Wed, 02 Dec 2026 19:52:06 GMT</AccessTierChangeTime></Properties></Blob></Blobs><NextMarker/></EnumerationResults>"#;
    const EMPTY_PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><EnumerationResults ServiceEndpoint="http://127.0.0.1:45307/devstoreaccount1" ContainerName="cap"><Prefix>nothing/</Prefix><Marker/><MaxResults>5000</MaxResults><Blobs/><NextMarker/></EnumerationResults>"#;

    #[test]
    fn reads_list_blobs_pages() {
        let first = parse_page(FIRST_PAGE).unwrap();
        let names: Vec<&str> = first.blobs.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["blobs/a&b<c>'\"d", "blobs/sha256/aa"]);
        assert_eq!(first.next_marker.as_deref(), Some("blobs/sha256/aa"));
        let blob = &first.blobs[1];
        assert_eq!(blob.content_length, 5);
        assert_eq!(
            blob.last_modified,
            httpdate::parse_http_date("Wed, 02 Dec 2026 19:52:06 GMT").unwrap()
        );
        assert!(blob.complete());
        let second = parse_page(SECOND_PAGE).unwrap();
        assert_eq!(second.blobs.len(), 1);
        assert_eq!(second.blobs[0].name, "blobs/sha256/bb");
        assert_eq!(second.next_marker, None);
        let empty = parse_page(EMPTY_PAGE).unwrap();
        assert_eq!(
            empty,
            Page {
                blobs: vec![],
                next_marker: None
            }
        );
        let copying =
            FIRST_PAGE.replace("<BlobType>", "<CopyStatus>pending</CopyStatus><BlobType>");
        assert!(!parse_page(&copying).unwrap().blobs[0].complete());
        for bad in [
            "<EnumerationResults><Blobs><Blob><Name>x</Name></Blob></Blobs></EnumerationResults>",
            "<EnumerationResults><Blobs><Blob><Name>x</Name><Properties><Content-Length>big</Content-Length></Properties></Blob></Blobs></EnumerationResults>",
            "<Error><Code>x</Code></Error>",
            "<EnumerationResults><Blobs>",
            "",
        ] {
            assert!(parse_page(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn fuzz_azure_xml_bounded() {
        let seeds: [&[u8]; 4] = [
            FIRST_PAGE.as_bytes(),
            EMPTY_PAGE.as_bytes(),
            b"<BlockList><CommittedBlocks><Block><Name>YQ==</Name><Size>1</Size></Block></CommittedBlocks></BlockList>",
            b"<A>&#x41;&amp;</A>",
        ];
        fuzzkit::run("registry::azure_xml", &seeds, fuzz_azure_xml);
    }
}
