//! One PostgreSQL connection on its worker thread (see `pool`): connecting (and creating the
//! schema the first time), the statements of the key-value contract, transactions, and what a
//! failure means (worth running the transaction again, or not).
//!
//! The schema is one table of rows `(tbl, k, v)`, keyed `(tbl, k)`: `k` and `v` are the
//! contract's bytes, and PostgreSQL's order of `bytea` (bytewise, a prefix first) is the order
//! the keys are encoded for (`kv::codec`). The rows with `tbl = ''` list the tables a store has
//! created (the contract's `create_table`). `registry_schema` holds the schema's version.
//!
//! Write transactions take `pg_advisory_xact_lock(WRITE_LOCK)` first, so they run one at a
//! time across every replica sharing the database, exactly like redb's single writer: the
//! change log's next sequence number and every check-then-write are free of races. They run in
//! PostgreSQL's default `READ COMMITTED`, where each statement sees everything committed before
//! it: after the lock, that is every earlier writer's work (`REPEATABLE READ` would take its
//! snapshot before the lock was granted). Reads run in `REPEATABLE READ READ ONLY`: one
//! snapshot, as a redb read transaction.

use std::ops::Bound;
use std::sync::Arc;

use postgres::error::SqlState;
use postgres::{Client, Statement};

use super::settings::PostgresSettings;
use super::tls;
use super::tls_stream::RustlsConnect;
use crate::storage::kv::Row;
use crate::storage::StorageError;

/// The advisory lock every write transaction takes first ("cregmeta" in ASCII): one key for
/// the whole store, as redb has one writer.
pub(super) const WRITE_LOCK: i64 = 0x6372_6567_6d65_7461;

/// The schema this code reads and writes.
const SCHEMA_VERSION: i32 = 1;

const CREATE_SCHEMA: &str = "
    CREATE TABLE registry_kv (
        tbl text NOT NULL,
        k bytea NOT NULL,
        v bytea NOT NULL,
        PRIMARY KEY (tbl, k)
    );
    CREATE TABLE registry_schema (version integer NOT NULL);
";

/// The prepared statements of one connection.
struct Statements {
    get: Statement,
    get_many: Statement,
    /// `[lower, upper)`, in key order; then the same without an upper bound, then both reversed.
    range: Statement,
    range_open: Statement,
    range_rev: Statement,
    range_open_rev: Statement,
    insert: Statement,
    remove: Statement,
    create: Statement,
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
        let range = |order: &str, upper: bool, limit: u8| {
            let upper = if upper { "AND k < $3 " } else { "" };
            format!(
                "SELECT k, v FROM registry_kv WHERE tbl = $1 AND k >= $2 {upper}ORDER BY k {order} LIMIT ${limit}"
            )
        };
        Ok(Statements {
            get: client.prepare("SELECT v FROM registry_kv WHERE tbl = $1 AND k = $2")?,
            get_many: client
                .prepare("SELECT k, v FROM registry_kv WHERE tbl = $1 AND k = ANY($2)")?,
            range: client.prepare(&range("ASC", true, 4))?,
            range_open: client.prepare(&range("ASC", false, 3))?,
            range_rev: client.prepare(&range("DESC", true, 4))?,
            range_open_rev: client.prepare(&range("DESC", false, 3))?,
            insert: client.prepare(
                "WITH old AS (SELECT v FROM registry_kv WHERE tbl = $1 AND k = $2),
                      put AS (INSERT INTO registry_kv (tbl, k, v) VALUES ($1, $2, $3)
                              ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v)
                 SELECT v FROM old",
            )?,
            remove: client
                .prepare("DELETE FROM registry_kv WHERE tbl = $1 AND k = $2 RETURNING v")?,
            create: client.prepare(
                "INSERT INTO registry_kv (tbl, k, v) VALUES ('', $1, '') ON CONFLICT DO NOTHING",
            )?,
        })
    }
}

struct Connection {
    client: Client,
    statements: Statements,
}

/// Which kind of transaction to begin.
#[derive(Debug, Clone, Copy)]
pub(super) enum Mode {
    Read,
    Write,
}

/// A worker thread's connection, made when first needed and again after it broke.
pub(super) struct Session {
    settings: Arc<PostgresSettings>,
    /// TLS as the URL's `sslmode` says (the client leaves it out for `disable`).
    tls: RustlsConnect,
    connection: Option<Connection>,
}

impl Session {
    pub(super) fn new(settings: Arc<PostgresSettings>, tls: RustlsConnect) -> Session {
        Session {
            settings,
            tls,
            connection: None,
        }
    }

    /// Begins a transaction, connecting first when there is no working connection. A
    /// connection that sat idle in the pool may have been closed by the server meanwhile (a
    /// restart, `pg_terminate_backend`, an idle timeout): when `BEGIN` finds it so, a new one is
    /// made and `BEGIN` sent again, so a stale connection never costs the transaction one of
    /// its retries.
    pub(super) fn begin(&mut self, mode: Mode) -> Result<(), StorageError> {
        let begin = match mode {
            Mode::Read => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".to_owned(),
            Mode::Write => format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"),
        };
        let reused = self.ensure_connected()?;
        match self.with(|c| c.client.batch_execute(&begin), "begin a transaction") {
            Err(StorageError::Unavailable(why)) if reused => {
                tracing::info!("a pooled metadata connection was closed ({why}): connecting again");
                self.connection = None;
                self.ensure_connected()?;
                self.with(|c| c.client.batch_execute(&begin), "begin a transaction")
            }
            other => other,
        }
    }

    /// Connects when there is no open connection; whether the one there was reused.
    fn ensure_connected(&mut self) -> Result<bool, StorageError> {
        if self
            .connection
            .as_ref()
            .is_some_and(|c| c.client.is_closed())
        {
            self.connection = None;
        }
        if self.connection.is_some() {
            return Ok(true);
        }
        let connection = self.connect()?;
        self.connection = Some(connection);
        Ok(false)
    }

    fn connect(&self) -> Result<Connection, StorageError> {
        let fail = |e: postgres::Error, doing: &str| failure(&self.settings, &e, doing, None);
        let mut client = self
            .settings
            .config()
            .connect(self.tls.clone())
            .map_err(|e| tls::explain_plain_server(fail(e, "connect")))?;
        ensure_schema(&mut client).map_err(|e| match e {
            Schema::Db(e) => fail(e, "create or check the schema"),
            Schema::Newer(version) => StorageError::Db(format!(
                "{}: the metadata schema is version {version}, written by a newer \
                 connected-registry; this one knows version {SCHEMA_VERSION}: upgrade it",
                self.settings.describe()
            )),
        })?;
        let statements =
            Statements::prepare(&mut client).map_err(|e| fail(e, "prepare statements"))?;
        tracing::debug!(server = %self.settings.describe(), "connected to the metadata database");
        Ok(Connection { client, statements })
    }

    /// Runs `op` on the connection; a failure is classified, and a broken connection dropped
    /// (the next transaction connects again).
    fn with<T>(
        &mut self,
        op: impl FnOnce(&mut Connection) -> Result<T, postgres::Error>,
        doing: &str,
    ) -> Result<T, StorageError> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(StorageError::Unavailable(format!(
                "{}: {doing}: the connection was lost earlier in this transaction",
                self.settings.describe()
            )));
        };
        match op(connection) {
            Ok(out) => Ok(out),
            Err(e) => {
                let closed = connection.client.is_closed();
                if closed {
                    self.connection = None;
                }
                Err(failure(&self.settings, &e, doing, Some(closed)))
            }
        }
    }

    pub(super) fn get(
        &mut self,
        table: &'static str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.with(
            |c| {
                let row = c.client.query_opt(&c.statements.get, &[&table, &key])?;
                Ok(row.map(|r| r.get(0)))
            },
            "read",
        )
    }

    pub(super) fn get_many(
        &mut self,
        table: &'static str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let found: std::collections::HashMap<Vec<u8>, Vec<u8>> = self.with(
            |c| {
                let rows = c.client.query(&c.statements.get_many, &[&table, &keys])?;
                Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
            },
            "read",
        )?;
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    pub(super) fn range(
        &mut self,
        table: &'static str,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Row>, StorageError> {
        // `k >= lower` and `k < upper`: the smallest key after `x` is `x || 0x00`.
        let lower = match lower {
            Bound::Included(k) => k,
            Bound::Excluded(mut k) => {
                k.push(0);
                k
            }
            Bound::Unbounded => Vec::new(),
        };
        let upper = match upper {
            Bound::Included(mut k) => {
                k.push(0);
                Some(k)
            }
            Bound::Excluded(k) => Some(k),
            Bound::Unbounded => None,
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(
            |c| {
                let s = &c.statements;
                let rows = match (&upper, reverse) {
                    (Some(upper), false) => {
                        c.client.query(&s.range, &[&table, &lower, upper, &limit])?
                    }
                    (Some(upper), true) => c
                        .client
                        .query(&s.range_rev, &[&table, &lower, upper, &limit])?,
                    (None, false) => c.client.query(&s.range_open, &[&table, &lower, &limit])?,
                    (None, true) => c
                        .client
                        .query(&s.range_open_rev, &[&table, &lower, &limit])?,
                };
                Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
            },
            "read",
        )
    }

    pub(super) fn insert(
        &mut self,
        table: &'static str,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.with(
            |c| {
                let row = c
                    .client
                    .query_opt(&c.statements.insert, &[&table, &key, &value])?;
                Ok(row.map(|r| r.get(0)))
            },
            "write",
        )
    }

    pub(super) fn remove(
        &mut self,
        table: &'static str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.with(
            |c| {
                let row = c.client.query_opt(&c.statements.remove, &[&table, &key])?;
                Ok(row.map(|r| r.get(0)))
            },
            "write",
        )
    }

    pub(super) fn create_table(&mut self, table: &'static str) -> Result<bool, StorageError> {
        self.with(
            |c| {
                let created = c
                    .client
                    .execute(&c.statements.create, &[&table.as_bytes()])?;
                Ok(created == 1)
            },
            "create a table",
        )
    }

    /// Commits. A connection lost here leaves it unknown whether the commit happened, so the
    /// error says so (the transaction is not run again: `Kv::write`).
    pub(super) fn commit(&mut self) -> Result<(), StorageError> {
        match self.with(|c| c.client.batch_execute("COMMIT"), "commit") {
            Err(StorageError::Unavailable(why)) => Err(StorageError::Unavailable(format!(
                "{why} (whether the change was stored is unknown: look before retrying)"
            ))),
            other => other,
        }
    }

    /// Ends the transaction, leaving nothing of it (and ends a read transaction).
    pub(super) fn rollback(&mut self) {
        let _ = self.with(|c| c.client.batch_execute("ROLLBACK"), "roll back");
    }
}

/// Why the schema could not be used.
enum Schema {
    Db(postgres::Error),
    /// A newer version than this code knows.
    Newer(i32),
}

/// Creates the schema if the database has none (under the write lock, so two replicas
/// starting at once do not both create it), and checks its version.
fn ensure_schema(client: &mut Client) -> Result<(), Schema> {
    let mut tx = client.transaction().map_err(Schema::Db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .map_err(Schema::Db)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('registry_schema') IS NOT NULL", &[])
        .map_err(Schema::Db)?
        .get(0);
    if !exists {
        tx.batch_execute(CREATE_SCHEMA).map_err(Schema::Db)?;
        tx.execute(
            "INSERT INTO registry_schema (version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .map_err(Schema::Db)?;
    }
    let version: i32 = tx
        .query_one("SELECT max(version) FROM registry_schema", &[])
        .map_err(Schema::Db)?
        .get::<_, Option<i32>>(0)
        .unwrap_or(SCHEMA_VERSION);
    if version > SCHEMA_VERSION {
        return Err(Schema::Newer(version));
    }
    tx.commit().map_err(Schema::Db)
}

/// A PostgreSQL failure as a `StorageError` naming the server (never the password: neither the
/// URL nor the client's messages hold it). `Unavailable`, worth running the transaction again,
/// when the connection is lost or unreachable or PostgreSQL asks for a retry (serialization
/// failure, deadlock, shutting down, starting up, too many connections); anything else is
/// `Db`. `closed`: whether the connection is known to be closed now.
fn failure(
    settings: &PostgresSettings,
    error: &postgres::Error,
    doing: &str,
    closed: Option<bool>,
) -> StorageError {
    let retry = [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
    ];
    let transient = match error.code() {
        Some(code) => retry.contains(code) || code.code().starts_with("08"),
        // No server error: the connection itself failed (refused, reset, timed out).
        None => {
            error.is_closed()
                || closed == Some(true)
                || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
        }
    };
    // The client's message says only what failed ("error connecting to server"); its causes
    // say why ("Connection refused").
    let message = format!(
        "{}: {doing}: {}",
        settings.describe(),
        util::error_chain::error_chain(error)
    );
    if transient {
        StorageError::Unavailable(message)
    } else {
        StorageError::Db(message)
    }
}
