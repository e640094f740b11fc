//! The PostgreSQL backend's connections, each owned by a thread of its own.
//!
//! The metadata's methods block, and are called both from `spawn_blocking` and straight from
//! async handlers; the sync `postgres::Client` runs a runtime of its own and panics when used
//! on a tokio runtime's thread. So no caller touches a client: each connection lives on a
//! worker thread started here, and a transaction checks a worker out ([`Pool::checkout`]),
//! hands it jobs over a channel and waits for each answer (as a redb call blocks its caller),
//! and gives it back when it ends. A connection found broken is dropped and made again at the
//! next transaction's start.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use super::session::Session;
use super::settings::PostgresSettings;
use super::tls_stream::RustlsConnect;
use crate::storage::StorageError;

/// Work for a worker thread, run against its session.
type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// A worker thread and the way to hand it jobs.
pub(super) struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    fn start(
        index: usize,
        settings: Arc<PostgresSettings>,
        tls: RustlsConnect,
    ) -> Result<Worker, StorageError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("metadata-pg-{index}"))
            .spawn(move || {
                let mut session = Session::new(settings, tls);
                // Ends when the pool (every sender) is dropped; the connection closes with it.
                for job in queue {
                    job(&mut session);
                }
            })
            .map_err(|e| StorageError::Db(format!("start a PostgreSQL connection thread: {e}")))?;
        Ok(Worker { jobs })
    }

    /// Runs `job` on the worker's thread and waits for its result.
    pub(super) fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Session) -> T + Send + 'static,
    ) -> Result<T, StorageError> {
        let (answer, answered) = mpsc::sync_channel(1);
        self.send(move |session| {
            let _ = answer.send(job(session));
        })?;
        answered.recv().map_err(|_| gone())
    }

    /// Queues `job` without waiting for it (a rollback at the end of a transaction): the
    /// worker's next job runs after it.
    pub(super) fn send(
        &self,
        job: impl FnOnce(&mut Session) + Send + 'static,
    ) -> Result<(), StorageError> {
        self.jobs.send(Box::new(job)).map_err(|_| gone())
    }
}

fn gone() -> StorageError {
    StorageError::Db("a PostgreSQL connection thread stopped unexpectedly".into())
}

/// The workers not in use, and the wait for one.
pub(super) struct Pool {
    /// Least recently returned first: a worker just given back may still be rolling back the
    /// transaction that ended (queued, not waited for).
    idle: Mutex<VecDeque<Worker>>,
    returned: Condvar,
}

impl Pool {
    pub(super) fn start(
        settings: &Arc<PostgresSettings>,
        tls: &RustlsConnect,
    ) -> Result<Pool, StorageError> {
        let workers = (0..settings.connections.max(1))
            .map(|i| Worker::start(i, settings.clone(), tls.clone()))
            .collect::<Result<_, _>>()?;
        Ok(Pool {
            idle: Mutex::new(workers),
            returned: Condvar::new(),
        })
    }

    /// A worker for one transaction, waiting while all are in use.
    pub(super) fn checkout(&self) -> CheckedOut<'_> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(worker) = idle.pop_front() {
                return CheckedOut {
                    pool: self,
                    worker: Some(worker),
                };
            }
            idle = self.returned.wait(idle).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A worker in use; back in the pool when dropped.
pub(super) struct CheckedOut<'p> {
    pool: &'p Pool,
    worker: Option<Worker>,
}

impl std::ops::Deref for CheckedOut<'_> {
    type Target = Worker;
    fn deref(&self) -> &Worker {
        self.worker
            .as_ref()
            .expect("a checked-out worker until dropped")
    }
}

impl Drop for CheckedOut<'_> {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push_back(worker);
            self.pool.returned.notify_one();
        }
    }
}
