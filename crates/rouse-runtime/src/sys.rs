//! The few OS calls std does not offer: starting a child that dies with the platform (in its
//! own process group and, when given, cgroup), signalling a process or a whole process group,
//! and the open-file limit.
// Why unsafe: the child is started with clone(2) sharing our memory until it execs (what
// posix_spawn does), because it must set its parent-death signal first, which std's
// `pre_exec` would only allow after a full fork; and kill(2) on a process group and
// waitpid(2) have no safe std wrapper.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;

use crate::command::Launch;

type Job = Box<dyn FnOnce() + Send>;

/// Children are started from one thread that lives as long as the process: the kernel sends
/// the parent-death signal when the creating *thread* exits, so starting them from a pool
/// thread that may retire would kill healthy children.
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

/// A started child process. It is not killed or reaped when dropped: the supervisor waits for
/// it.
#[derive(Debug)]
pub(crate) struct Child {
    pid: libc::pid_t,
    /// Why it could not join the cgroup it was given (errno), if it could not.
    pub(crate) cgroup_error: Option<i32>,
}

impl Child {
    /// Its process id (also its process group's).
    pub(crate) fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Blocks until it exits, and reaps it.
    pub(crate) fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes only the status int we pass.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if rc == self.pid {
                return Ok(ExitStatus::from_raw(status));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Everything the child needs, made before it exists: between clone and exec it may only
/// make system calls (no allocation, no locks).
struct Prepared {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    stdin: OwnedFd,
    log: File,
    /// The instance's `cgroup.procs`, opened for writing: the child moves itself in.
    cgroup_procs: Option<File>,
    /// The open-file limit `rouse serve` started with, restored for the program.
    nofile: Option<libc::rlimit>,
    parent: libc::pid_t,
    mask: libc::sigset_t,
    /// The errno of the step that failed in the child (0: it reached exec).
    failed: AtomicI32,
    /// The errno of joining the cgroup (0: joined, or none given).
    cgroup_failed: AtomicI32,
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

/// Starts `launch` in its own process group (and in the cgroup whose `cgroup.procs` is given),
/// stdin empty, stdout and stderr to `log`, exactly the launch's environment, and set to be
/// SIGKILLed when this process dies (even by SIGKILL). The child shares this process's memory
/// until it execs, as with posix_spawn, so starting it costs the same whatever this process's
/// size (a fork would copy its page tables first).
pub(crate) async fn spawn(
    launch: &Launch,
    log: File,
    cgroup_procs: Option<File>,
) -> io::Result<Child> {
    let program = cstring(launch.program.as_os_str())?;
    let args: Vec<CString> = std::iter::once(OsStr::new(&launch.argv0))
        .chain(launch.args.iter().map(OsStr::new))
        .map(cstring)
        .collect::<io::Result<_>>()?;
    // Exactly the launch's environment: nothing else of the platform's.
    let vars = launch
        .env
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let env: Vec<CString> = vars
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            cstring(OsStr::from_bytes(&kv))
        })
        .collect::<io::Result<_>>()?;
    let cwd = launch
        .cwd
        .as_ref()
        .map(|d| cstring(d.as_os_str()))
        .transpose()?;
    let stdin = OwnedFd::from(File::open("/dev/null")?);
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .send(Box::new(move || {
            let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
            argv.push(std::ptr::null());
            let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
            envp.push(std::ptr::null());
            let mut prepared = Prepared {
                program,
                argv,
                envp,
                cwd,
                stdin,
                log,
                cgroup_procs,
                nofile: ORIGINAL_NOFILE.get().copied(),
                parent: std::process::id() as libc::pid_t,
                // SAFETY: an all-zero sigset_t is a valid (empty) set; it is filled below.
                mask: unsafe { std::mem::zeroed() },
                failed: AtomicI32::new(0),
                cgroup_failed: AtomicI32::new(0),
            };
            let _ = tx.send(start(&mut prepared));
            // `args` and `env` back the pointers until here.
            drop((args, env));
        }))
        .map_err(|_| io::Error::other("the process-spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("the process-spawner thread dropped the request"))?
}

/// The child's stack while it shares our memory (it only makes a few system calls).
const CHILD_STACK: usize = 64 * 1024;

/// clone(CLONE_VM | CLONE_VFORK): this thread waits until the child has exec'd or failed.
fn start(p: &mut Prepared) -> io::Result<Child> {
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the child runs `child_main` on its own stack while this thread is suspended
    // (CLONE_VFORK), reading `p` and writing only `p.failed`; all signals are blocked
    // around the clone so no handler of ours runs in the child before it resets them.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut p.mask);
        // The stack grows down; its top, 16-byte aligned.
        let top = stack.as_mut_ptr().add(CHILD_STACK) as usize & !15;
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            p as *mut Prepared as *mut libc::c_void,
        );
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &p.mask, std::ptr::null_mut());
        if pid < 0 {
            return Err(err);
        }
        pid
    };
    drop(stack);
    let failed = p.failed.load(Ordering::SeqCst);
    let cgroup_failed = p.cgroup_failed.load(Ordering::SeqCst);
    let mut child = Child {
        pid,
        cgroup_error: (cgroup_failed != 0).then_some(cgroup_failed),
    };
    if failed != 0 {
        let _ = child.wait();
        return Err(io::Error::from_raw_os_error(failed));
    }
    Ok(child)
}

/// The child, between clone and exec: only async-signal-safe system calls.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Prepared`, alive and unchanged while the parent is
    // suspended; every call below is a plain system call on values prepared beforehand.
    unsafe {
        let p = &*(arg as *const Prepared);
        let fail = |p: &Prepared| -> ! {
            p.failed.store(*libc::__errno_location(), Ordering::SeqCst);
            libc::_exit(127)
        };
        // Our signal handlers make no sense in the program: back to the defaults (exec keeps
        // ignored signals ignored, so SIGPIPE, which Rust ignores, is reset too).
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
                && old.sa_sigaction != libc::SIG_DFL
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(p);
        }
        // Into the instance's cgroup ("0" moves the writer), so whatever it starts stays
        // there and can be killed whole. Failing that, the process group still holds it.
        if let Some(procs) = &p.cgroup_procs
            && libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
        {
            p.cgroup_failed
                .store(*libc::__errno_location(), Ordering::SeqCst);
        }
        if let Some(limit) = &p.nofile {
            // Best effort: the program keeps the raised limit if this fails.
            libc::setrlimit(libc::RLIMIT_NOFILE, limit);
        }
        let log = p.log.as_raw_fd();
        if libc::dup2(p.stdin.as_raw_fd(), 0) < 0
            || libc::dup2(log, 1) < 0
            || libc::dup2(log, 2) < 0
        {
            fail(p);
        }
        if let Some(dir) = &p.cwd
            && libc::chdir(dir.as_ptr()) != 0
        {
            fail(p);
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(p);
        }
        // The platform may have died before prctl; then nobody will signal us.
        if libc::getppid() != p.parent {
            libc::_exit(137);
        }
        // Nothing else of ours (or of whoever started us without close-on-exec) reaches
        // the program: descriptors from 3 up are closed (Linux 5.9+; ignored before).
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        libc::pthread_sigmask(libc::SIG_SETMASK, &p.mask, std::ptr::null_mut());
        libc::execve(p.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
        fail(p)
    }
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

/// Sends `signal` to one process. One that is already gone is fine.
pub(crate) fn signal_process(pid: u32, signal: i32) -> io::Result<()> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    if pid <= 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
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

/// The open-file limit this process started with, before [`raise_nofile_limit`]: workloads
/// get it back (programs using `select(2)` break on descriptors past 1024).
static ORIGINAL_NOFILE: OnceLock<libc::rlimit> = OnceLock::new();

/// The open-file limit (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises this process's soft open-file limit to its hard limit; returns (soft before, soft
/// now). Workloads started afterwards get the soft limit from before.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    let _ = ORIGINAL_NOFILE.set(lim);
    if lim.rlim_cur == lim.rlim_max {
        return Ok((before, before));
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads only the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((before, raised.rlim_cur))
}
