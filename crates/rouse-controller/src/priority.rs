//! The controller's own threads, at a lower CPU priority than the data path.
//!
//! On a busy or small machine the reconcilers (store reads and writes, JSON) compete for the
//! CPU with the requests and the instances they wake: during a cold start a round of
//! reconciles triggered by the new instance runs exactly while its app starts and its first
//! request is forwarded. The control plane converges a few milliseconds later either way, so
//! it yields: its threads run at a higher nice value than the rest of the process.
// Why unsafe: setpriority(2) on one thread has no std wrapper.
#![allow(unsafe_code)]

use tokio::runtime::Runtime;

/// How much nicer the controller's threads are than the platform's: under contention they get
/// about a tenth of what a data-path thread or an instance gets, never nothing.
pub const CONTROL_NICE: i32 = 10;

/// Raises the calling thread's nice value by [`CONTROL_NICE`] (Linux: nice is per thread).
/// Failure only costs the priority, so it is logged and ignored.
fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid, getpriority and setpriority have no memory-safety preconditions.
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            if libc::setpriority(libc::PRIO_PROCESS, tid, now + CONTROL_NICE) != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(),
                    "cannot lower the controller thread's priority");
            }
        }
    }
}

/// A runtime for the controller's loops and workers, its threads at the lower priority.
pub(crate) fn control_runtime() -> std::io::Result<Runtime> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(2)
        .thread_name("rouse-controller")
        .on_thread_start(lower_this_thread)
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        // SAFETY: gettid and getpriority have no memory-safety preconditions.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn controller_threads_are_nicer_than_the_caller() {
        let base = nice_of_this_thread();
        let rt = control_runtime().unwrap();
        let theirs = rt.block_on(async { tokio::spawn(async { nice_of_this_thread() }).await });
        assert_eq!(theirs.unwrap(), (base + CONTROL_NICE).min(19));
        assert_eq!(nice_of_this_thread(), base, "the caller keeps its priority");
    }
}
