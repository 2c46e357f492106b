//! What the test kubelet does for one container: which program an image stands for, the
//! environment the pod spec asks for, starting the process inside the pod's network namespace,
//! stopping it as the kubelet does, and running its probes and hooks.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What an image stands for here: a binary on this machine (its directory plays the image's
/// filesystem for a `command`) and the image's own environment.
#[derive(Clone, Debug)]
pub struct ImageBinary {
    pub binary: PathBuf,
    pub env: Vec<(String, String)>,
}

/// The images the test kubelet can "pull": exact names, and prefixes ending in `/`.
#[derive(Clone, Debug, Default)]
pub struct Images(pub Vec<(String, ImageBinary)>);

impl Images {
    pub fn resolve(&self, image: &str) -> Option<&ImageBinary> {
        self.0
            .iter()
            .find(|(name, _)| {
                if name.ends_with('/') {
                    image.starts_with(name.as_str())
                } else {
                    image == name
                }
            })
            .map(|(_, b)| b)
    }
}

/// Why a container cannot be started yet: the waiting reason and message the kubelet shows.
#[derive(Debug)]
pub struct NotStarted {
    pub reason: &'static str,
    pub message: String,
}

/// Everything needed to start one container's process.
#[derive(Clone, Debug)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub netns_path: String,
    pub log: PathBuf,
}

/// A ConfigMap's or Secret's data by kind (`configmaps`, `secrets`) and name.
pub type Lookup<'a> = dyn Fn(&str, &str) -> Option<BTreeMap<String, String>> + 'a;

/// The standard PATH a container starts with when its image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the container runs and with which environment, as the kubelet derives it from the
/// image and the pod spec. ConfigMaps' and Secrets' data (`env` keys, `envFrom`) come from
/// `lookup` (kind `configmaps` or `secrets`, name).
pub fn launch(
    pod: &Pod,
    c: &Container,
    images: &Images,
    netns_path: &str,
    log: &Path,
    lookup: &Lookup<'_>,
) -> Result<Launch, NotStarted> {
    let image = c.image.clone().unwrap_or_default();
    let bin = if image.is_empty() {
        None
    } else {
        Some(images.resolve(&image).ok_or_else(|| NotStarted {
            reason: "ErrImagePull",
            message: format!("image {image:?} is not one the test kubelet can run"),
        })?)
    };
    let args = c.args.clone().unwrap_or_default();
    let (program, args) = match c.command.as_deref() {
        Some([first, rest @ ..]) => {
            let p = PathBuf::from(first);
            // The mapped binary's directory plays the image's root: a bare name is looked up
            // there, and so is an absolute path the directory has (the Rouse image's
            // `/rouse-queue-proxy` is the built `rouse-queue-proxy` beside `rouse`).
            let p = match (&bin, p.is_absolute()) {
                (Some(b), false) => b.binary.with_file_name(first),
                (Some(b), true) => {
                    let in_image = b.binary.with_file_name(first.trim_start_matches('/'));
                    if in_image.is_file() { in_image } else { p }
                }
                _ => p,
            };
            (p, rest.iter().cloned().chain(args).collect())
        }
        _ => match &bin {
            Some(b) => (b.binary.clone(), args),
            None => {
                return Err(NotStarted {
                    reason: "InvalidImageName",
                    message: "no image and no command".into(),
                });
            }
        },
    };
    let meta = &pod.metadata;
    let status = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOSTNAME".into(), meta.name.clone().unwrap_or_default()),
        ("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()),
        ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
    ];
    if let Some(b) = &bin {
        env.extend(b.env.iter().cloned());
    }
    let ns = meta.namespace.clone().unwrap_or_default();
    let field = |path: &str| -> Option<String> {
        let label = |m: &Option<BTreeMap<String, String>>, prefix: &str| {
            let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
            m.as_ref()?.get(key).cloned()
        };
        Some(match path {
            "metadata.name" => meta.name.clone()?,
            "metadata.namespace" => ns.clone(),
            "metadata.uid" => meta.uid.clone()?,
            "status.podIP" => status.pod_ip.clone()?,
            "status.hostIP" => status.host_ip.clone()?,
            "spec.nodeName" => spec.node_name.clone()?,
            "spec.serviceAccountName" => spec.service_account_name.clone()?,
            p if p.starts_with("metadata.labels['") => label(&meta.labels, "metadata.labels['")?,
            p if p.starts_with("metadata.annotations['") => {
                label(&meta.annotations, "metadata.annotations['")?
            }
            _ => return None,
        })
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => ("configmaps", r.name.clone(), r.optional),
            (None, Some(r)) => ("secrets", r.name.clone(), r.optional),
            (None, None) => continue,
        };
        match lookup(kind, &name) {
            Some(data) => {
                for (k, v) in data {
                    let k = format!("{prefix}{k}");
                    env.retain(|(e, _)| *e != k);
                    env.push((k, v));
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(NotStarted {
                    reason: "CreateContainerConfigError",
                    message: format!("envFrom: {kind} {name:?} not found"),
                });
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (_, Some(from)) => {
                let resolved = if let Some(f) = &from.field_ref {
                    field(&f.field_path)
                } else if let Some(r) = &from.config_map_key_ref {
                    lookup("configmaps", &r.name).and_then(|d| d.get(&r.key).cloned())
                } else if let Some(r) = &from.secret_key_ref {
                    lookup("secrets", &r.name).and_then(|d| d.get(&r.key).cloned())
                } else {
                    None
                };
                match resolved {
                    Some(v) => v,
                    None => {
                        return Err(NotStarted {
                            reason: "CreateContainerConfigError",
                            message: format!("env {}: its source cannot be resolved", e.name),
                        });
                    }
                }
            }
            (Some(v), None) => v.clone(),
            (None, None) => String::new(),
        };
        env.retain(|(k, _)| *k != e.name);
        env.push((e.name.clone(), value));
    }
    let sc = c.security_context.clone().unwrap_or_default();
    let psc = spec.security_context.clone().unwrap_or_default();
    let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    Ok(Launch {
        program,
        args,
        env,
        cwd: PathBuf::from(c.working_dir.clone().unwrap_or_else(|| "/".into())),
        uid: id(sc.run_as_user.or(psc.run_as_user)),
        gid: id(sc.run_as_group.or(psc.run_as_group)),
        netns_path: netns_path.to_string(),
        log: log.to_path_buf(),
    })
}

/// Starts the process in the pod's network namespace, its output appended to the log. The
/// child is killed if the thread that started it ends (the kubelet's runtime thread lives as
/// long as the test process), so no pod outlives the tests.
#[allow(unsafe_code)]
pub fn spawn(l: &Launch) -> std::io::Result<tokio::process::Child> {
    let netns = std::fs::File::open(&l.netns_path)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.log)?;
    let mut cmd = std::process::Command::new(&l.program);
    cmd.args(&l.args)
        .env_clear()
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&l.cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&netns);
    let (uid, gid) = (l.uid, l.gid);
    // SAFETY: only async-signal-safe calls (setns, prctl, setsid, setgid, setuid) between fork
    // and exec; `fd` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::setsid();
            if let Some(g) = gid
                && libc::setgid(g) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(u) = uid
                && libc::setuid(u) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn();
    drop(netns);
    child
}

/// Sends `signal` to the process (its own session, so to the whole group).
#[allow(unsafe_code)]
pub fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on a process group this kubelet started; no memory is involved.
        unsafe { libc::kill(-pid, signal) };
    }
}

/// The last lines of a log, as the kubelet's FallbackToLogsOnError message (at most 80 lines
/// and 2048 bytes).
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let start = text.len().saturating_sub(2048);
    let tail = String::from_utf8_lossy(&text[start..]).into_owned();
    let lines: Vec<&str> = tail.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// Where a probe connects: the pod IP (or the probe's host) and the port, a number or one of
/// the container's port names.
fn probe_addr(
    host: Option<&str>,
    port: &IntOrString,
    pod_ip: IpAddr,
    ports: &[ContainerPort],
) -> Option<SocketAddr> {
    let ip = match host {
        Some(h) if !h.is_empty() => h.parse().ok()?,
        _ => pod_ip,
    };
    let port = match port {
        IntOrString::Int(p) => u16::try_from(*p).ok()?,
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())?,
    };
    Some(SocketAddr::new(ip, port))
}

/// One HTTP GET as the kubelet's prober sends it; the status code.
async fn http_get(addr: SocketAddr, path: &str, headers: &[(String, String)]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.36\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs a command inside the pod's network namespace with the container's environment;
/// true when it exits 0.
async fn exec_in(l: &Launch, command: &[String]) -> bool {
    let Some((first, rest)) = command.split_first() else {
        return false;
    };
    let probe = Launch {
        program: PathBuf::from(first),
        args: rest.to_vec(),
        log: PathBuf::from("/dev/null"),
        ..l.clone()
    };
    match spawn(&probe) {
        Ok(mut child) => child.wait().await.is_ok_and(|s| s.success()),
        Err(_) => false,
    }
}

/// Runs one probe (httpGet, tcpSocket or exec) within its timeout; true on success.
pub async fn probe(p: &Probe, pod_ip: IpAddr, ports: &[ContainerPort], l: &Launch) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let attempt = async {
        if let Some(h) = &p.http_get {
            let Some(addr) = probe_addr(h.host.as_deref(), &h.port, pod_ip, ports) else {
                return false;
            };
            let headers: Vec<(String, String)> = h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            http_get(addr, &path, &headers)
                .await
                .is_some_and(|s| (200..400).contains(&s))
        } else if let Some(t) = &p.tcp_socket {
            match probe_addr(t.host.as_deref(), &t.port, pod_ip, ports) {
                Some(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
                None => false,
            }
        } else if let Some(e) = &p.exec {
            exec_in(l, e.command.as_deref().unwrap_or_default()).await
        } else {
            // gRPC probes are not run by the test kubelet: they fail, visibly.
            false
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

/// A preStop hook (httpGet or exec), bounded by `deadline`.
pub async fn pre_stop(c: &Container, pod_ip: IpAddr, l: &Launch, deadline: Instant) {
    let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
        return;
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let ports = c.ports.clone().unwrap_or_default();
    let run = async {
        if let Some(h) = &hook.http_get {
            if let Some(addr) = probe_addr(h.host.as_deref(), &h.port, pod_ip, &ports) {
                let path = h.path.clone().unwrap_or_else(|| "/".into());
                let _ = http_get(addr, &path, &[]).await;
            }
        } else if let Some(e) = &hook.exec {
            exec_in(l, e.command.as_deref().unwrap_or_default()).await;
        }
    };
    let _ = tokio::time::timeout(left, run).await;
}
