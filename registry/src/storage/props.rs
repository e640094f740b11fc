//! The store's side of the `/acr/v1` API: properties of repositories, tags and manifests, their
//! `changeableAttributes`, and deleting a whole repository. The rules (what a lock refuses,
//! where times come from) live in `meta::props`; this only adds the handle's conveniences.

use oci::manifest::{self, Content};
use oci::{AttributesPatch, ChangeableAttributes, Digest, Origin, RepoName};

use super::{ManifestProps, RepoProps, StorageError, Store, TagProps, Target};

/// The most bytes of an image config read to tell its architecture and OS: a config is a few
/// KB; a larger one is not read for a listing.
pub const MAX_CONFIG_READ: u64 = 256 << 10;

impl Store {
    /// An item's own attributes; `None` when it does not exist.
    pub fn attributes(
        &self,
        repo: &RepoName,
        target: &Target,
    ) -> Result<Option<ChangeableAttributes>, StorageError> {
        self.inner.meta.attributes(repo.as_str(), target)
    }

    /// Changes the switches `patch` names on an item, logged for children; the new set, or
    /// `None` when the item does not exist. Who may do this was decided before.
    pub fn set_attributes(
        &self,
        repo: &RepoName,
        target: &Target,
        patch: &AttributesPatch,
        origin: Origin,
    ) -> Result<Option<ChangeableAttributes>, StorageError> {
        let set = self
            .inner
            .meta
            .set_attributes(repo.as_str(), target, patch, origin)?;
        if set.is_some() {
            self.changed_by(origin);
        }
        Ok(set)
    }

    /// Refuses a client's `action` on `repo` when the repository has one of `needs` off.
    pub fn require_repo(
        &self,
        repo: &RepoName,
        needs: &[super::Attribute],
        action: &str,
    ) -> Result<(), StorageError> {
        let attributes = self
            .attributes(repo, &Target::Repository)?
            .unwrap_or_default();
        let off = needs.iter().find(|a| match a {
            super::Attribute::Delete => !attributes.delete_enabled,
            super::Attribute::Write => !attributes.write_enabled,
            super::Attribute::Read => !attributes.read_enabled,
            super::Attribute::List => !attributes.list_enabled,
        });
        match off {
            Some(a) => Err(super::refusal(
                repo.as_str(),
                &Target::Repository,
                *a,
                action,
            )),
            None => Ok(()),
        }
    }

    pub fn repository(&self, repo: &RepoName) -> Result<Option<RepoProps>, StorageError> {
        self.inner.meta.repository(repo.as_str())
    }

    /// Every tag of `repo` in name order (`listed` says which listings may name).
    pub fn tag_props(&self, repo: &RepoName) -> Result<Option<Vec<TagProps>>, StorageError> {
        self.inner.meta.tag_props(repo.as_str())
    }

    /// Every manifest of `repo` in digest order.
    pub fn manifest_props(
        &self,
        repo: &RepoName,
    ) -> Result<Option<Vec<ManifestProps>>, StorageError> {
        self.inner.meta.manifest_props(repo.as_str())
    }

    /// Deletes `repo` and everything in it; `false` when it is unknown. Blob files go at the
    /// next GC.
    pub fn delete_repository(&self, repo: &RepoName, origin: Origin) -> Result<bool, StorageError> {
        let deleted = self.inner.meta.delete_repository(repo.as_str(), origin)?;
        if deleted {
            self.changed_by(origin);
        }
        Ok(deleted)
    }

    /// The architecture and OS an image manifest's config names, when it is an image with a
    /// config of at most `MAX_CONFIG_READ` bytes that says so; `None` otherwise (an index, an
    /// artifact).
    pub fn image_platform(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<(String, String)>, StorageError> {
        let reference = oci::Reference::Digest(digest.clone());
        let Some(stored) = self.get_manifest(repo, &reference)? else {
            return Ok(None);
        };
        let Ok(parsed) = manifest::parse(Some(&stored.media_type), &stored.body) else {
            return Ok(None);
        };
        let Content::Image { config, .. } = parsed.content else {
            return Ok(None);
        };
        if config.size > MAX_CONFIG_READ {
            return Ok(None);
        }
        let Some(bytes) = self.read_small_blob(&config.digest, MAX_CONFIG_READ)? else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct Platform {
            architecture: Option<String>,
            os: Option<String>,
        }
        Ok(match serde_json::from_slice::<Platform>(&bytes) {
            Ok(Platform {
                architecture: Some(arch),
                os: Some(os),
            }) => Some((arch, os)),
            _ => None,
        })
    }
}
