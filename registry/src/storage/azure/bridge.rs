//! The store's calls block (the API runs them in `spawn_blocking`, commands call them
//! directly); the Azure client is async. The bridge runs the client on a small runtime of its
//! own and waits for each result, so a blocking call never needs, or deadlocks, the caller's
//! runtime (a test's single-threaded one included).

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

/// Threads of the client's runtime: requests are I/O; two keep one slow response from holding
/// up the rest.
const CLIENT_THREADS: usize = 2;

/// A handle on the client's runtime; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Bridge {
    handle: Handle,
    _runtime: Arc<OwnedRuntime>,
}

/// Shuts its runtime down without waiting when the last handle goes, which may be inside
/// another runtime (dropping a runtime there the ordinary way panics).
#[derive(Debug)]
struct OwnedRuntime(Option<Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Bridge {
    pub(crate) fn new() -> std::io::Result<Bridge> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(CLIENT_THREADS)
            .thread_name("azure-blob")
            .enable_all()
            .build()?;
        Ok(Bridge {
            handle: runtime.handle().clone(),
            _runtime: Arc::new(OwnedRuntime(Some(runtime))),
        })
    }

    /// Runs `future` on the client's runtime and waits for it (blocking). `None` when it
    /// panicked or the runtime is shutting down.
    pub(crate) fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.handle.spawn(future);
        wait(task).ok()
    }

    /// Starts `future` on the client's runtime without waiting (a stream's producer).
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(future);
    }
}

/// Waits for `future`, which makes progress elsewhere (on the client's runtime), from blocking
/// code. On a worker of a multi-threaded runtime the worker hands its other tasks over first
/// (`block_in_place`); elsewhere it simply blocks.
pub(crate) fn wait<F: Future>(future: F) -> F::Output {
    let on_worker = Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
    if on_worker {
        tokio::task::block_in_place(|| futures_executor::block_on(future))
    } else {
        futures_executor::block_on(future)
    }
}
