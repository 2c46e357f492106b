//! `kill -9` during a burst of writes: the store must reopen cleanly with every acknowledged
//! durable write in it; relaxed writes may be lost, but only the latest ones, never one made
//! before a durable write or a flush, and no resourceVersion is handed out twice.
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
use rouse_store::{Durability, EmbeddedStore, Kind, Store, StoreError};
use serde_json::{Value, json};

const WRITER_ENV: &str = "ROUSE_STORE_CRASH_WRITER";
const ROUND_ENV: &str = "ROUSE_STORE_CRASH_ROUND";
/// Set (to anything) for the writer of relaxed and durable writes mixed.
const MIXED_ENV: &str = "ROUSE_STORE_CRASH_MIXED";
const TEST_NAME: &str = "kill_9_mid_burst_loses_nothing_acknowledged";
const MIXED_TEST_NAME: &str = "kill_9_loses_only_the_latest_relaxed_writes";
const ROUNDS: usize = 4;
/// A writer left alone stops after this many iterations, so it can never run forever.
const WRITER_MAX: usize = 20_000;
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    if let Ok(dir) = std::env::var(WRITER_ENV) {
        let round: usize = std::env::var(ROUND_ENV)?.parse()?;
        if std::env::var_os(MIXED_ENV).is_some() {
            return mixed_writer(Path::new(&dir), round);
        }
        return writer(Path::new(&dir), round);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tests: [(&str, TestFn); 2] = [
        (TEST_NAME, kill_9_mid_burst_loses_nothing_acknowledged),
        (MIXED_TEST_NAME, kill_9_loses_only_the_latest_relaxed_writes),
    ];
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return Ok(());
    }
    let filter = args.iter().find(|a| !a.starts_with('-'));
    for (name, test) in tests {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        test()?;
        println!("test {name} ... ok ({:?})", started.elapsed());
    }
    Ok(())
}

type TestFn = fn() -> anyhow::Result<()>;

/// A writer child, the lines it prints, and the thread reading them.
type Writer = (
    std::process::Child,
    mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
);

/// Spawns this binary as a writer on `dir` and returns its stdout lines as they come.
fn spawn_writer(dir: &Path, round: usize, mixed: bool) -> anyhow::Result<Writer> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(WRITER_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if mixed {
        cmd.env(MIXED_ENV, "1");
    }
    let mut child = cmd.spawn()?;
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
    Ok((child, rx, reader))
}

fn rv_of(obj: &Value) -> anyhow::Result<u64> {
    Ok(obj["metadata"]["resourceVersion"]
        .as_str()
        .context("resourceVersion")?
        .parse()?)
}

/// How many rounds of the mixed writer end in a flush (then its relaxed writes must survive).
const MIXED_FLUSH_AT: usize = 25;

/// The mixed child: relaxed creates and relaxed status bumps, a durable create every fifth
/// step, and once (at step [`MIXED_FLUSH_AT`]) a wait for the background flusher. Each line
/// says what was acknowledged and the resourceVersion it got.
fn mixed_writer(dir: &Path, round: usize) -> anyhow::Result<()> {
    let store = EmbeddedStore::open(dir)?;
    let mut out = std::io::stdout().lock();
    let mut counter = match store.get(Kind::Service, "default", "counter") {
        Ok(c) => c,
        Err(StoreError::NotFound { .. }) => store.create(
            Kind::Service,
            json!({"metadata": {"name": "counter"}, "status": {"count": 0}}),
        )?,
        Err(e) => return Err(e.into()),
    };
    let mut count = counter["status"]["count"].as_u64().context("count")?;
    for i in 0..WRITER_MAX {
        if i % 5 == 4 {
            let name = format!("d{round}-{i}");
            let o = store.create(Kind::Route, json!({"metadata": {"name": name}}))?;
            writeln!(out, "durable {name} {}", rv_of(&o)?)?;
        } else {
            let name = format!("x{round}-{i}");
            let o = store.create_with(
                Kind::Revision,
                json!({"metadata": {"name": name}, "spec": {"i": i}}),
                Durability::Relaxed,
            )?;
            writeln!(out, "relaxed {name} {}", rv_of(&o)?)?;
            count += 1;
            counter["status"]["count"] = json!(count);
            counter = store.update_status_with(Kind::Service, counter, Durability::Relaxed)?;
            writeln!(out, "count {count} {}", rv_of(&counter)?)?;
        }
        if i == MIXED_FLUSH_AT {
            // The flusher puts relaxed writes on disk by itself, soon.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !store.is_flushed() {
                ensure!(Instant::now() < deadline, "relaxed writes never flushed");
                std::thread::sleep(Duration::from_millis(5));
            }
            writeln!(out, "flushed")?;
        }
        out.flush()?;
    }
    Ok(())
}

fn kill_9_loses_only_the_latest_relaxed_writes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut durable: BTreeSet<String> = BTreeSet::new();
    let mut lost_total = 0;
    for round in 0..ROUNDS {
        let (mut child, rx, reader) = spawn_writer(dir.path(), round, true)?;
        let mut lines = Vec::new();
        // Past the flush in half of the rounds, before it in the others.
        let target = if round % 2 == 0 {
            3 * MIXED_FLUSH_AT + 20 + fastrand::usize(..100)
        } else {
            5 + fastrand::usize(..40)
        };
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
        }
        child.kill()?; // SIGKILL
        let status = child.wait()?;
        ensure!(
            status.signal() == Some(libc::SIGKILL),
            "round {round}: writer was not killed mid-burst: {status}"
        );
        reader.join().expect("reader thread");
        lines.extend(rx.try_iter());

        // Relaxed creates in order; the index up to which they must all be on disk (everything
        // before the last durable write or flush); the count there; the highest version seen.
        let mut relaxed: Vec<String> = Vec::new();
        let mut must_keep = 0;
        let (mut count, mut count_kept) = (0u64, 0u64);
        let mut max_rv = 0u64;
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["durable", name, rv] => {
                    durable.insert(name.to_string());
                    must_keep = relaxed.len();
                    count_kept = count;
                    max_rv = max_rv.max(rv.parse()?);
                }
                ["relaxed", name, rv] => {
                    relaxed.push(name.to_string());
                    max_rv = max_rv.max(rv.parse()?);
                }
                ["count", n, rv] => {
                    count = n.parse()?;
                    max_rv = max_rv.max(rv.parse()?);
                }
                ["flushed"] => {
                    must_keep = relaxed.len();
                    count_kept = count;
                }
                _ => bail!("unexpected writer output {line:?}"),
            }
        }

        let store = EmbeddedStore::open(dir.path())
            .with_context(|| format!("round {round}: reopen after kill -9"))?;
        let (routes, _) = store.list(Kind::Route, None)?;
        let routes: BTreeSet<String> = routes
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        let missing: Vec<&String> = durable.difference(&routes).collect();
        ensure!(
            missing.is_empty(),
            "round {round}: durable writes lost: {missing:?}"
        );
        // What survives of the relaxed writes is a prefix, at least up to the last durable
        // write or flush.
        let present: Vec<bool> = relaxed
            .iter()
            .map(|n| store.get(Kind::Revision, "default", n).is_ok())
            .collect();
        let kept = present.iter().take_while(|p| **p).count();
        ensure!(
            present[kept..].iter().all(|p| !p),
            "round {round}: a relaxed write survived one made before it: {present:?}"
        );
        ensure!(
            kept >= must_keep,
            "round {round}: relaxed writes before a durable one lost ({kept} < {must_keep})"
        );
        let counter = store.get(Kind::Service, "default", "counter")?;
        let on_disk = counter["status"]["count"].as_u64().context("count")?;
        ensure!(
            on_disk >= count_kept,
            "round {round}: counter {on_disk} < {count_kept} made before a durable write"
        );
        // Versions continue above every one handed out, lost or not.
        let (_, rv) = store.list(Kind::Revision, None)?;
        ensure!(
            rv >= max_rv,
            "round {round}: resourceVersion {rv} is below {max_rv}, handed out before the crash"
        );
        let probe = store.create_with(
            Kind::Route,
            json!({"metadata": {"name": format!("probe-{round}")}}),
            Durability::Relaxed,
        )?;
        ensure!(rv_of(&probe)? == rv + 1);
        durable.insert(format!("probe-{round}"));
        lost_total += relaxed.len() - kept;
        println!(
            "round {round}: killed after {} lines; {kept}/{} relaxed creates kept (at least {must_keep}), rv {rv}",
            lines.len(),
            relaxed.len(),
        );
    }
    println!("relaxed creates lost over all rounds: {lost_total}");
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
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut last_count = 0u64;

    for round in 0..ROUNDS {
        let (mut child, rx, reader) = spawn_writer(dir.path(), round, false)?;

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
