//! Helpers shared by the runtime's tests: the built `rouse-testapp`, bounded waits on
//! instances and processes.
#![allow(dead_code)] // each test file uses its own part

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use rouse_runtime::{InstanceInfo, ProcessRuntime, Runtime};

/// The longest any wait in these tests takes.
pub const BOUND: Duration = Duration::from_secs(20);
/// The namespace every test revision lives in.
pub const NS: &str = "default";

/// The `rouse-testapp` binary, built once per test run.
pub fn testapp() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["build", "-p", "testapps", "--bin", "rouse-testapp"])
            .arg("--message-format=json")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo build");
        assert!(out.status.success(), "cargo build -p testapps failed");
        out.stdout
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|m| m["target"]["name"] == "rouse-testapp")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the rouse-testapp executable")
    })
}

/// Polls the revision's instances until `cond` holds (bounded), and returns them.
pub async fn wait_for(
    rt: &ProcessRuntime,
    rev: &str,
    what: &str,
    cond: impl Fn(&[InstanceInfo]) -> bool,
) -> Vec<InstanceInfo> {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let insts = rt.instances(NS, rev);
        if cond(&insts) {
            return insts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; instances: {insts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process is gone (a zombie no reaper collected counts as gone).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (bounded) until the process is gone.
pub async fn wait_gone(pid: u32) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !process_gone(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still alive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
