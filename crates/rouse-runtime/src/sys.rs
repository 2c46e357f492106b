//! The few OS calls std does not offer: making a child die with the platform, and signalling a
//! whole process group.
// Why unsafe: `pre_exec` runs code in the forked child before exec (prctl, getppid, _exit, all
// async-signal-safe syscalls), and kill(2) on a process group has no safe std wrapper.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

use crate::command::Launch;

type Job = Box<dyn FnOnce() + Send>;

/// Children are forked from one thread that lives as long as the process: the kernel sends
/// the parent-death signal when the forking *thread* exits, so forking from a pool thread that
/// may retire would kill healthy children.
fn spawner() -> &'static mpsc::Sender<Job> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("rouse-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the process-spawner thread");
        tx
    })
}

/// Starts `launch` in its own process group, stdin empty, stdout and stderr to `log`, and set
/// to be SIGKILLed when this process dies (even by SIGKILL).
pub(crate) async fn spawn(launch: &Launch, log: File) -> io::Result<Child> {
    let mut cmd = Command::new(&launch.program);
    cmd.arg0(&launch.argv0)
        .args(&launch.args)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    if let Some(dir) = &launch.cwd {
        cmd.current_dir(dir);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe syscalls and touches no locks or heap.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The platform may have died between fork and prctl; then nobody will signal us.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .send(Box::new(move || {
            let _ = tx.send(cmd.spawn());
        }))
        .map_err(|_| io::Error::other("the process-spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("the process-spawner thread dropped the request"))?
}

/// Sends `signal` to every process in group `pgid`. A group that is already gone is fine.
pub(crate) fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    if pgid <= 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}
