//! End-to-end harness: runs the real `rouse serve` binary on ephemeral loopback ports with a
//! temporary data dir, drives it with the real CLI, and talks HTTP to its gateway.

#![allow(dead_code)]

pub mod kubectl;
pub mod sidecar;
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a test waits for a condition before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The `rouse` binary under test.
pub fn rouse_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rouse"))
}

/// The test workload binary (built by `cargo build --workspace --bins`).
pub fn testapp_bin() -> PathBuf {
    let p = rouse_bin().with_file_name("rouse-testapp");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        p.display()
    );
    p
}

/// A running `rouse serve`.
pub struct Platform {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub gateway: SocketAddr,
    pub api: String,
    pub stdout_lines: mpsc::Receiver<String>,
    /// What it printed before its addresses.
    pub early_lines: Vec<String>,
    pub extra_args: Vec<String>,
}

impl Platform {
    /// Starts `rouse serve` with a fresh data dir.
    pub fn start() -> Platform {
        Self::start_with(&[])
    }

    /// Starts `rouse serve` with extra arguments (e.g. `--config FILE`).
    pub fn start_with(extra: &[&str]) -> Platform {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut p = Self::spawn(&data_dir, extra);
        p._tmp = Some(tmp);
        p
    }

    /// Starts `rouse serve` on an existing data dir.
    pub fn spawn(data_dir: &Path, extra: &[&str]) -> Platform {
        Self::spawn_wrapped(&[], data_dir, extra)
    }

    /// Starts `rouse serve` under a wrapper command (`prlimit --nofile=N`, say).
    pub fn spawn_wrapped(wrapper: &[&str], data_dir: &Path, extra: &[&str]) -> Platform {
        let mut cmd = match wrapper.split_first() {
            None => Command::new(rouse_bin()),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(rouse_bin());
                cmd
            }
        };
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn rouse serve");
        // Its log goes through the test's own output, which the harness shows only for a
        // failing test (or with --nocapture), not into every run's output.
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[rouse serve] {line}");
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[rouse serve] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut gateway = None;
        let mut api = None;
        let mut early_lines = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while gateway.is_none() || api.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("rouse serve printed its addresses");
            if let Some(rest) = line.split("Gateway: http://").nth(1) {
                gateway = Some(rest.trim().parse().expect("gateway addr"));
            }
            if let Some(rest) = line.split("API: http://").nth(1) {
                api = Some(format!("http://{}", rest.trim()));
            }
            if let Some(rest) = line.split("API: https://").nth(1) {
                api = Some(format!("https://{}", rest.trim()));
            }
            early_lines.push(line);
        }
        Platform {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            gateway: gateway.unwrap(),
            api: api.unwrap(),
            stdout_lines: rx,
            early_lines,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The API token `rouse serve` generated into its data dir.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("api-token"))
            .expect("rouse serve wrote its API token")
            .trim()
            .to_string()
    }

    /// The API's address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .parse()
            .unwrap()
    }

    /// Runs the CLI against this platform (finding the token through the data dir).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(rouse_bin())
            .arg("--api")
            .arg(&self.api)
            .env("ROUSE_DATA_DIR", &self.data_dir)
            .env_remove("ROUSE_TOKEN")
            .args(args)
            .output()
            .expect("run rouse CLI")
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "rouse {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies a manifest and waits for it to be Ready.
    pub fn apply_wait(&self, yaml: &str) -> String {
        let out = self.apply(yaml, &["--wait", "--timeout", "90s"]);
        assert!(
            out.status.success(),
            "apply failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies a manifest (through stdin) with extra flags.
    pub fn apply(&self, yaml: &str, flags: &[&str]) -> Output {
        let mut child = Command::new(rouse_bin())
            .arg("--api")
            .arg(&self.api)
            .env("ROUSE_DATA_DIR", &self.data_dir)
            .env_remove("ROUSE_TOKEN")
            .args(["apply", "-f", "-"])
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn apply");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Gets an object as JSON via the CLI.
    pub fn get_json(&self, kind: &str, name: &str) -> Option<serde_json::Value> {
        let out = self.cli(&["get", kind, name, "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Sends a GET through the gateway with this Host.
    pub fn http_get(&self, host: &str, path: &str) -> std::io::Result<HttpResponse> {
        http_get(self.gateway, host, path)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        wait_child(&mut child, PATIENCE).expect("rouse serve exits after SIGTERM")
    }

    /// SIGKILLs the platform.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        let _ = child.wait();
    }

    /// Starts a new `rouse serve` on the same data dir.
    pub fn restart(&mut self) {
        let extra: Vec<String> = self.extra_args.clone();
        let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        let mut next = Platform::spawn(&self.data_dir, &extra);
        self.child = next.child.take();
        self.gateway = next.gateway;
        self.api = std::mem::take(&mut next.api);
        std::mem::swap(&mut self.stdout_lines, &mut next.stdout_lines);
        self.early_lines = std::mem::take(&mut next.early_lines);
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            if wait_child(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The text of every file in `dir`, in name order (nothing if it cannot be read).
pub fn concat_files(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect()
}

/// Polls `f` until it returns `Some`, failing after `limit`.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A minimal HTTP/1.1 GET (Connection: close), enough to observe the gateway.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: rouse-e2e\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// One request to the platform's API with its token and a loopback `Host` (Connection:
/// close); `headers` are added as given.
pub fn api_request(
    p: &Platform,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpResponse> {
    api_request_to(p.api_addr(), &p.token(), method, path, headers, body)
}

/// [`api_request`] to an API address with a token.
pub fn api_request_to(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpResponse> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw_exchange(addr, req.as_bytes())
}

/// Writes `bytes` to `addr` and reads the whole answer (the server closes the connection).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(bytes)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// PIDs of live processes whose environment contains `marker` (e.g. `ROUSE_E2E=abc`).
pub fn pids_with_env(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Zombies list an empty environ, so a match means the process is alive.
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

/// A unique marker for this test's processes.
pub fn unique_marker(test: &str) -> String {
    format!(
        "ROUSE_E2E={test}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ (std::ptr::addr_of!(test) as usize as u128)
    )
}

/// A Service manifest running the test app.
pub fn service_yaml(name: &str, marker: &str, extra_env: &[(&str, &str)]) -> String {
    let (mk, mv) = marker.split_once('=').unwrap();
    let mut env = format!("            - name: {mk}\n              value: \"{mv}\"\n");
    for (k, v) in extra_env {
        env.push_str(&format!(
            "            - name: {k}\n              value: \"{v}\"\n"
        ));
    }
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
      containers:
        - image: rouse/testapp
          command: ["{app}"]
          env:
{env}"#,
        app = testapp_bin().display()
    )
}

/// config-autoscaler with Knative's shortest windows, so tests scale to zero in seconds.
pub fn fast_config(dir: &std::path::Path, extra: &[(&str, &str)]) -> String {
    let mut data = String::from(
        "  stable-window: \"6s\"\n  scale-to-zero-grace-period: \"1s\"\n  allow-zero-initial-scale: \"true\"\n",
    );
    for (k, v) in extra {
        data.push_str(&format!("  {k}: \"{v}\"\n"));
    }
    let path = dir.join("config-autoscaler.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n  namespace: knative-serving\ndata:\n{data}"
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// A service manifest with annotations, env and optional args/spec extras.
pub fn service(
    name: &str,
    marker: &str,
    annotations: &[(&str, &str)],
    env: &[(&str, &str)],
    args: &[&str],
    spec_extra: &str,
) -> String {
    let (mk, mv) = marker.split_once('=').unwrap();
    let mut ann = String::new();
    for (k, v) in annotations {
        ann.push_str(&format!("        {k}: \"{v}\"\n"));
    }
    let mut envs = format!("            - {{name: {mk}, value: \"{mv}\"}}\n");
    for (k, v) in env {
        envs.push_str(&format!("            - {{name: {k}, value: \"{v}\"}}\n"));
    }
    let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    metadata:
      annotations:
        placeholder.rouse.dev/none: "x"
{ann}    spec:
{spec_extra}      containers:
        - command: ["{app}"]
          args: [{args}]
          env:
{envs}"#,
        app = testapp_bin().display(),
        args = args.join(", "),
    )
}

pub fn pa_scale(p: &Platform, rev: &str) -> (i64, i64) {
    let pa = p.get_json("kpa", rev).unwrap_or_default();
    (
        pa["status"]["desiredScale"].as_i64().unwrap_or(-1),
        pa["status"]["actualScale"].as_i64().unwrap_or(-1),
    )
}

pub fn sks_mode(p: &Platform, rev: &str) -> String {
    p.get_json("sks", rev).unwrap_or_default()["spec"]["mode"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub fn metric_value(p: &Platform, name: &str, label: &str) -> f64 {
    let r = api_request(p, "GET", "/metrics", &[], "").unwrap();
    r.body
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends `n` concurrent GETs; returns the statuses (0 = transport error).
pub fn concurrent_gets(p: &Platform, host: &str, path: &str, n: usize) -> Vec<u16> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (gw, host, path, out) =
                (p.gateway, host.to_string(), path.to_string(), out.clone());
            std::thread::spawn(move || {
                let s = http_get(gw, &host, &path).map(|r| r.status).unwrap_or(0);
                out.lock().unwrap().push(s);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    Arc::try_unwrap(out).unwrap().into_inner().unwrap()
}
