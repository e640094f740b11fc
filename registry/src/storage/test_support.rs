//! Helpers shared by the storage unit tests (compiled for tests only): pushing a blob, and
//! running one test on every metadata backend ([`on_every_backend!`], [`TestBackend`]).

use std::path::Path;

use oci::digest::Digest;
use oci::name::RepoName;

use crate::storage::backends::{Backends, MetadataBackend, PostgresSettings};
use crate::storage::kv::in_postgres::test_server::TestServer;
use crate::storage::kv::{self, Kv};
use crate::storage::{Limits, Store};

/// Uploads `data` into `repo` through a session, as a client's push does; returns its digest.
pub(crate) fn push_blob(store: &Store, repo: &RepoName, data: &[u8]) -> Digest {
    let digest = Digest::sha256_of(data);
    let session = store.new_upload(repo).unwrap();
    let mut session = session.blocking_lock();
    session.append(data).unwrap();
    store.finish_upload(&mut session, &digest).unwrap();
    digest
}

/// The metadata backend one run of a test uses: redb in the store's directory, or a database
/// of its own on the process's PostgreSQL test server. Stores opened through the same value
/// share the metadata (as replicas do, on PostgreSQL).
pub(crate) struct TestBackend {
    pub backends: Backends,
}

impl TestBackend {
    pub(crate) fn redb() -> TestBackend {
        TestBackend {
            backends: Backends::default(),
        }
    }

    pub(crate) fn postgres() -> TestBackend {
        let url = TestServer::shared().create_database();
        let settings = PostgresSettings::parse(&url).expect("the test server's URL parses");
        TestBackend {
            backends: Backends {
                metadata: MetadataBackend::Postgres(Box::new(settings)),
                ..Backends::default()
            },
        }
    }

    /// A backend of the same kind with metadata of its own (a fresh database on PostgreSQL).
    pub(crate) fn another(&self) -> TestBackend {
        match self.backends.metadata {
            MetadataBackend::Redb => TestBackend::redb(),
            MetadataBackend::Postgres(_) => TestBackend::postgres(),
        }
    }

    /// Closes, from the server's side, every connection the registry holds to this backend's
    /// database (as `pg_terminate_backend` by an administrator, or a server restart, would);
    /// nothing on redb.
    pub(crate) fn close_connections(&self) {
        if let MetadataBackend::Postgres(settings) = &self.backends.metadata {
            let db = settings.config().get_dbname().expect("a test database");
            TestServer::shared().sql(
                "postgres",
                &format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = '{db}' AND application_name = 'connected-registry'"
                ),
            );
        }
    }

    /// A store in `dir` on this backend.
    pub(crate) fn open(&self, dir: &Path, limits: Limits) -> Store {
        Store::open_with(dir, limits, self.backends.clone()).expect("open the store")
    }

    /// The bare key-value backend (`dir` holds redb's file).
    pub(crate) fn kv(&self, dir: &Path) -> Kv {
        let space = crate::storage::space::Space::new(dir.to_owned(), crate::MinFree::Bytes(0));
        let backend: Box<dyn kv::Backend> = match &self.backends.metadata {
            MetadataBackend::Redb => {
                Box::new(kv::in_redb::RedbBackend::open(&dir.join("kv.redb"), space).unwrap())
            }
            MetadataBackend::Postgres(settings) => {
                Box::new(kv::in_postgres::PostgresBackend::open((**settings).clone()).unwrap())
            }
        };
        Kv::new(backend)
    }
}

/// Defines each test as a module whose `redb` and `postgres` tests run the body once per
/// metadata backend, with `$backend` bound to a [`TestBackend`]. An `async fn` runs on a
/// multi-threaded runtime of two workers (where the metadata is also called from async code):
///
/// ```ignore
/// on_every_backend! {
///     /// What it shows.
///     fn keeps_tags(backend) {
///         let store = backend.open(dir.path(), Limits::default());
///     }
/// }
/// ```
macro_rules! on_every_backend {
    ($( $(#[doc = $doc:literal])* fn $name:ident($backend:ident) $body:block )*) => {$(
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($backend: $crate::storage::test_support::TestBackend) $body

            #[test]
            fn redb() {
                run($crate::storage::test_support::TestBackend::redb())
            }

            #[test]
            fn postgres() {
                run($crate::storage::test_support::TestBackend::postgres())
            }
        }
    )*};
    ($( $(#[doc = $doc:literal])* async fn $name:ident($backend:ident) $body:block )*) => {$(
        $crate::storage::test_support::on_every_backend! {
            $(#[doc = $doc])*
            fn $name(backend) {
                let $backend = backend;
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move $body)
            }
        }
    )*};
}
pub(crate) use on_every_backend;
