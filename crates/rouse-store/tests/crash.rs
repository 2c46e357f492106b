//! `kill -9` during a burst of writes: the store must reopen cleanly with every acknowledged
//! write in it.
//!
//! This test binary is its own victim: run with `ROUSE_STORE_CRASH_WRITER=<data dir>` it is a
//! writer that opens the store and writes in a tight loop, printing each acknowledged write to
//! stdout; run normally it spawns that writer, SIGKILLs it mid-burst, and checks the store.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rouse_store::{EmbeddedStore, Kind, Store, StoreError};
use serde_json::json;

const WRITER_ENV: &str = "ROUSE_STORE_CRASH_WRITER";
const ROUND_ENV: &str = "ROUSE_STORE_CRASH_ROUND";
const TEST_NAME: &str = "kill_9_mid_burst_loses_nothing_acknowledged";
const ROUNDS: usize = 4;
/// A writer left alone stops after this many iterations, so it can never run forever.
const WRITER_MAX: usize = 20_000;
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    if let Ok(dir) = std::env::var(WRITER_ENV) {
        let round: usize = std::env::var(ROUND_ENV)?.parse()?;
        return writer(Path::new(&dir), round);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{TEST_NAME}: test");
        return Ok(());
    }
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-'))
        && !TEST_NAME.contains(filter.as_str())
    {
        return Ok(());
    }
    let started = Instant::now();
    kill_9_mid_burst_loses_nothing_acknowledged()?;
    println!("test {TEST_NAME} ... ok ({:?})", started.elapsed());
    Ok(())
}

/// The child: creates a Revision and bumps a counter's status, over and over, printing each
/// write once the store has acknowledged it.
fn writer(dir: &Path, round: usize) -> anyhow::Result<()> {
    let store = EmbeddedStore::open(dir)?;
    let mut out = std::io::stdout().lock();
    let counter = match store.get(Kind::Service, "default", "counter") {
        Ok(c) => c,
        Err(StoreError::NotFound { .. }) => store.create(
            Kind::Service,
            json!({"metadata": {"name": "counter"}, "status": {"count": 0}}),
        )?,
        Err(e) => return Err(e.into()),
    };
    let mut count = counter["status"]["count"].as_u64().context("count")?;
    let mut counter = counter;
    for i in 0..WRITER_MAX {
        let name = format!("r{round}-{i}");
        store.create(
            Kind::Revision,
            json!({"metadata": {"name": name}, "spec": {"round": round, "i": i, "pad": "x".repeat(i % 512)}}),
        )?;
        writeln!(out, "created {name}")?;
        count += 1;
        counter["status"]["count"] = json!(count);
        counter = store.update_status(Kind::Service, counter)?;
        writeln!(out, "counter {count}")?;
        out.flush()?;
    }
    Ok(())
}

fn kill_9_mid_burst_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut last_count = 0u64;

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .env(WRITER_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let mut lines = Vec::new();
        let target = 10 + fastrand::usize(..150);
        while lines.len() < target {
            match rx.recv_timeout(LINE_TIMEOUT) {
                Ok(l) => lines.push(l),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "round {round}: writer stalled after {} lines: {e}",
                        lines.len()
                    );
                }
            }
            if round == 0 && lines.len() == 1 {
                // The writer holds the data dir: a second opener is told so, across processes.
                let err = EmbeddedStore::open(dir.path()).unwrap_err();
                ensure!(
                    err.to_string().contains("is in use by another rouse"),
                    "second open: {err}"
                );
            }
        }
        child.kill()?; // SIGKILL
        let status = child.wait()?;
        ensure!(
            status.signal() == Some(libc::SIGKILL),
            "round {round}: writer was not killed mid-burst: {status}"
        );
        // Everything printed before death was acknowledged.
        reader.join().expect("reader thread");
        lines.extend(rx.try_iter());

        for line in &lines {
            if let Some(name) = line.strip_prefix("created ") {
                acked.insert(name.to_string());
            } else if let Some(n) = line.strip_prefix("counter ") {
                last_count = n.parse()?;
            } else {
                bail!("unexpected writer output {line:?}");
            }
        }

        let store = EmbeddedStore::open(dir.path())
            .with_context(|| format!("round {round}: reopen after kill -9"))?;
        let (revs, rv) = store.list(Kind::Revision, None)?;
        let present: BTreeSet<String> = revs
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        let missing: Vec<&String> = acked.difference(&present).collect();
        ensure!(
            missing.is_empty(),
            "round {round}: acknowledged but lost: {missing:?}"
        );
        let counter = store.get(Kind::Service, "default", "counter")?;
        let count = counter["status"]["count"].as_u64().context("count")?;
        ensure!(
            count >= last_count,
            "round {round}: counter {count} < acknowledged {last_count}"
        );
        ensure!(
            rv >= acked.len() as u64 + last_count,
            "round {round}: resourceVersion {rv} went backwards"
        );
        // Still writable, and its versions continue from where the writer stopped.
        let probe = store.create(
            Kind::Route,
            json!({"metadata": {"name": format!("probe-{round}")}}),
        )?;
        ensure!(probe["metadata"]["resourceVersion"] == json!((rv + 1).to_string()));
        println!(
            "round {round}: killed after {} acknowledged lines; {} revisions, rv {}",
            lines.len(),
            present.len(),
            rv
        );
    }
    Ok(())
}
