//! Every instance's processes, tracked outside memory, so that what a `rouse serve` killed with
//! SIGKILL left running (a program's own children, which the parent-death signal does not
//! reach) is found and stopped by the next `rouse serve` on the same data dir.
//!
//! Two records, the second where the machine allows it:
//! - a file per running instance under `<data-dir>/run/instances/`: the process id, which is
//!   also its process group's, and the process's start time (so a reused id is never taken
//!   for it);
//! - a cgroup (v2) per instance under one Rouse-owned parent cgroup per data dir
//!   (`<cgroup2 mount>/<rouse's own cgroup>/rouse-<hash of the data dir>/<namespace>.<instance>`):
//!   the program moves itself in before it starts, so everything it ever starts stays inside,
//!   even what leaves its process group, and is killed whole (`cgroup.kill`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys;

/// How long removing an instance's cgroup waits for its killed processes to exit.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(5);

/// Where an instance's processes are recorded.
pub(crate) struct Tracker {
    records: PathBuf,
    cgroups: Option<PathBuf>,
}

impl Tracker {
    /// Tracks instances of the platform whose data dir is `data_dir` (canonical). Makes the
    /// records directory and, when cgroup v2 is mounted and writable, the parent cgroup.
    pub(crate) fn new(data_dir: &Path) -> Tracker {
        let records = data_dir.join("run").join("instances");
        if let Err(e) = std::fs::create_dir_all(&records) {
            tracing::warn!(dir = %records.display(), error = %e,
                "cannot make the instance records directory");
        }
        let cgroups = cgroup_parent(data_dir);
        match &cgroups {
            Some(dir) => tracing::info!(cgroup = %dir.display(), "instances get their own cgroups"),
            None => tracing::info!(
                "no writable cgroup v2 hierarchy: instances are tracked by process group only"
            ),
        }
        Tracker { records, cgroups }
    }

    /// Makes the cgroup of instance `key` (`<namespace>.<instance id>`); `None` when cgroups
    /// are not available or it cannot be made (the instance then runs without).
    pub(crate) fn make_cgroup(&self, key: &str) -> Option<PathBuf> {
        let parent = self.cgroups.as_ref()?;
        // The parent goes whenever no instance runs (see `remove_parent`).
        if let Err(e) = std::fs::create_dir(parent)
            && e.kind() != io::ErrorKind::AlreadyExists
        {
            tracing::warn!(cgroup = %parent.display(), error = %e, "cannot make a cgroup");
            return None;
        }
        let dir = parent.join(key);
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Some(dir),
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot make a cgroup");
                None
            }
        }
    }

    /// Removes the parent cgroup if no instance's is left in it, so a platform that stopped
    /// leaves none behind.
    pub(crate) fn remove_parent(&self) {
        if let Some(parent) = &self.cgroups {
            let _ = std::fs::remove_dir(parent);
        }
    }

    /// Records that instance `key`'s process `pid` (its group's leader) runs, in `cgroup`.
    pub(crate) fn record(&self, key: &str, pid: u32, cgroup: Option<&Path>) {
        let Some(start) = start_time(pid) else {
            // Gone already: nothing of it to find later.
            return;
        };
        let cgroup = cgroup.map_or("-".to_string(), |c| c.display().to_string());
        let text = format!("pid={pid} start={start} cgroup={cgroup}\n");
        let path = self.records.join(key);
        let written = File::create(&path).and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(record = %path.display(), error = %e, "cannot record an instance");
        }
    }

    /// Forgets instance `key`'s process (it was reaped and its group killed).
    pub(crate) fn forget(&self, key: &str) {
        let _ = std::fs::remove_file(self.records.join(key));
    }

    /// Stops whatever an earlier platform on this data dir left running: each recorded
    /// process group whose leader is still the recorded process (or, the leader gone, the
    /// processes left in its group), and every cgroup under the parent. Returns a line per
    /// thing stopped. Blocks (up to a few seconds per cgroup) while killed processes exit.
    pub(crate) fn clean(&self) -> Vec<String> {
        // What was done, per instance (records and cgroups share its name).
        let mut done: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        if let Ok(dir) = std::fs::read_dir(&self.records) {
            for entry in dir.flatten() {
                let path = entry.path();
                if let Ok(text) = std::fs::read_to_string(&path)
                    && let Some(rec) = Record::parse(&text)
                {
                    let killed = rec.kill_group();
                    if !killed.is_empty() {
                        done.entry(entry.file_name().to_string_lossy().into_owned())
                            .or_default()
                            .push(format!(
                                "killed process group {} (processes {killed:?})",
                                rec.pid
                            ));
                    }
                }
                let _ = std::fs::remove_file(&path);
            }
        }
        if let Some(parent) = &self.cgroups
            && let Ok(dir) = std::fs::read_dir(parent)
        {
            for entry in dir.flatten() {
                let path = entry.path();
                if !path.is_dir() {
                    continue;
                }
                let pids = cgroup_pids(&path);
                let what = match remove_cgroup(&path) {
                    Ok(()) if pids.is_empty() => continue,
                    Ok(()) => format!("killed cgroup {} (processes {pids:?})", path.display()),
                    Err(e) => format!("cgroup {} could not be removed: {e}", path.display()),
                };
                done.entry(entry.file_name().to_string_lossy().into_owned())
                    .or_default()
                    .push(what);
            }
        }
        // Made again with the next instance's.
        self.remove_parent();
        done.into_iter()
            .map(|(instance, what)| format!("instance {instance}: {}", what.join("; ")))
            .collect()
    }
}

/// One record: a process group's leader and when it started.
struct Record {
    pid: u32,
    start: u64,
}

impl Record {
    fn parse(text: &str) -> Option<Record> {
        let mut pid = None;
        let mut start = None;
        for field in text.split_whitespace() {
            match field.split_once('=') {
                Some(("pid", v)) => pid = v.parse().ok(),
                Some(("start", v)) => start = v.parse().ok(),
                _ => {}
            }
        }
        Some(Record {
            pid: pid.filter(|p| *p > 1)?,
            start: start?,
        })
    }

    /// SIGKILLs what is left of the group; returns the processes it found.
    ///
    /// A process id cannot be handed out again while a process group of that number has
    /// members, so: if the leader's id now names another process (another start time), the
    /// old group is empty and nothing is killed. If the leader is gone, the members left
    /// were started after it, which is checked too.
    fn kill_group(&self) -> Vec<u32> {
        if let Some(now) = start_time(self.pid)
            && now != self.start
        {
            return Vec::new();
        }
        let members: Vec<u32> = processes()
            .into_iter()
            .filter(|p| p.pgrp == self.pid && p.start >= self.start)
            .map(|p| p.pid)
            .collect();
        if !members.is_empty() {
            let _ = sys::signal_group(self.pid, libc::SIGKILL);
        }
        members
    }
}

/// A process as `/proc/<pid>/stat` shows it.
struct ProcStat {
    pid: u32,
    pgrp: u32,
    start: u64,
}

/// `/proc/<pid>/stat`'s process group and start time (clock ticks after boot); `None` for a
/// process that is gone or a zombie.
fn stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some(ProcStat {
        pid,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// When process `pid` started (clock ticks after boot), while it lives.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start)
}

/// Every live process.
fn processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

/// The processes in a cgroup.
fn cgroup_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Opens a cgroup's `cgroup.procs` for a child to move itself in.
pub(crate) fn open_procs(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
}

/// SIGKILLs every process in a cgroup: `cgroup.kill` (Linux 5.14+), else each listed
/// process, a few rounds (a process may fork while it is being killed).
pub(crate) fn kill_cgroup(dir: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"))
    {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return Ok(()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    for _ in 0..10 {
        let pids = cgroup_pids(dir);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = sys::signal_process(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Kills everything in a cgroup, waits (bounded) for it to empty and removes it. Blocks.
pub(crate) fn remove_cgroup(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    kill_cgroup(dir)?;
    let deadline = Instant::now() + CGROUP_EMPTY_WAIT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // Busy: its processes are still exiting.
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                let _ = kill_cgroup(dir);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The parent cgroup for a data dir's instances, made if missing: under the cgroup this
/// process is in, in the cgroup v2 hierarchy. `None` without a writable cgroup v2.
fn cgroup_parent(data_dir: &Path) -> Option<PathBuf> {
    let (mount, root) = cgroup2_mount()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    // The path is from the hierarchy's root; the mount may show a subtree of it.
    let own = own.strip_prefix(root.as_str()).unwrap_or(own);
    let base = mount.join(own.trim_start_matches('/'));
    let dir = base.join(format!("rouse-{:016x}", fnv1a(data_dir)));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            tracing::debug!(cgroup = %dir.display(), error = %e, "cannot make the parent cgroup");
            return None;
        }
    }
    // Writable for moving processes in, or of no use.
    let usable = OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .is_ok();
    // Made again with the first instance's; an earlier run's children keep it here.
    let _ = std::fs::remove_dir(&dir);
    usable.then_some(dir)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid machine), and which of its cgroups the mount shows as its root.
fn cgroup2_mount() -> Option<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (fields, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        // Field 4 is the root inside the hierarchy, field 5 the mount point (octal escapes
        // for spaces and the like).
        let mut f = fields.split_whitespace().skip(3);
        let (root, point) = (f.next()?, f.next()?);
        (!point.contains('\\'))
            .then(|| (PathBuf::from(point), root.trim_end_matches('/').to_string()))
    })
}

/// FNV-1a of a path's bytes: a short stable name per data dir.
fn fnv1a(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_stat_reads_this_process() {
        let r = Record::parse("pid=42 start=777 cgroup=-\n").unwrap();
        assert_eq!((r.pid, r.start), (42, 777));
        assert!(Record::parse("pid=1 start=5").is_none());
        assert!(Record::parse("garbage").is_none());
        let me = stat(std::process::id()).unwrap();
        assert!(me.start > 0);
        assert_eq!(start_time(std::process::id()), Some(me.start));
        assert_ne!(fnv1a(Path::new("/a")), fnv1a(Path::new("/b")));
    }
}
