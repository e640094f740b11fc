//! Who is asking, as the access layer decided before a handler runs. Handlers use it for one
//! thing: leaving out of listings (catalog, tags, manifests, referrers) what the caller may not
//! see, so a repository the caller may not read looks exactly like one that does not exist;
//! and whether it may ask for what listings hide (`include=unlisted`, a child's sync token).
//! Whether the request itself is allowed was decided before the handler ran.

use std::sync::Arc;

/// What a caller may see in listings. A request extension; absent means no access control
/// (`serve --auth none`, and the store's own tests), which [`Caller::anyone`] stands for.
#[derive(Clone)]
pub struct Caller {
    may_list: Option<ListFilter>,
    /// May ask listings for items with `listEnabled: false` (`include=unlisted`): a child's
    /// sync token (the gateway action `message/read`), so the child keeps mirroring what its
    /// parent hides from clients.
    sees_unlisted: bool,
}

/// Whether listings may name a repository.
type ListFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl Caller {
    /// A caller that sees everything.
    pub fn anyone() -> Caller {
        Caller {
            may_list: None,
            sees_unlisted: true,
        }
    }

    /// A caller that sees the repositories for which `may_list(repo)` is true.
    pub fn seeing(may_list: impl Fn(&str) -> bool + Send + Sync + 'static) -> Caller {
        Caller {
            may_list: Some(Arc::new(may_list)),
            sees_unlisted: false,
        }
    }

    /// This caller, allowed (or not) to ask listings for items hidden from them.
    pub fn with_unlisted(self, sees_unlisted: bool) -> Caller {
        Caller {
            sees_unlisted,
            ..self
        }
    }

    /// Whether `include=unlisted` is honoured for this caller.
    pub fn sees_unlisted(&self) -> bool {
        self.sees_unlisted
    }

    /// Whether listings may name `repo` (and its tags and manifests) to this caller.
    pub fn may_list(&self, repo: &str) -> bool {
        self.may_list.as_ref().is_none_or(|may| may(repo))
    }

    /// Whether listings may name every repository to this caller (no filter to apply).
    pub fn may_list_all(&self) -> bool {
        self.may_list.is_none()
    }

    /// The caller a request carries, or [`Caller::anyone`] when no access layer ran.
    pub fn of(extensions: &axum::http::Extensions) -> Caller {
        extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anyone)
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sees = if self.may_list.is_some() {
            "some"
        } else {
            "everything"
        };
        f.debug_struct("Caller")
            .field("sees", &sees)
            .field("sees_unlisted", &self.sees_unlisted)
            .finish()
    }
}
