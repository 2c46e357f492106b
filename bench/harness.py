#!/usr/bin/env python3
"""Rouse benchmark driver (issue 6), started by bench/run. Python 3 standard library only.

Runs every scenario on loopback with the server side pinned to CPU 0 and the load side
(this driver, wrk, h2load, the CLI) on CPU 1, in rounds that interleave the scenarios, and
writes bench/results/latest.json, bench/results/latest.md and the results section of
BENCHMARKS.md. Medians over rounds are what the tables show. docs/benchmarks.md says what
each scenario measures.
"""

import argparse
import asyncio
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # importing bench/chains.py must leave no __pycache__ behind
import chains  # noqa: E402 (after the line above)

SERVER_CPU = 0
CLIENT_CPU = 1
CONNECTIONS = 32  # wrk connections (the issue's setup)
H2_CONNECTIONS = 4  # h2load connections ...
H2_STREAMS = 8  # ... times streams each: 32 requests in flight, as for HTTP/1.1
DOC_BEGIN = "<!-- bench:results:begin (written by bench/run; edit outside these markers) -->"
DOC_END = "<!-- bench:results:end -->"


# ---------------------------------------------------------------------------------------
# Small helpers


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(values, p):
    """Linear interpolation between closest ranks (p in 0..100)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def rss_kb(pid):
    """Resident set size of one process, in KiB (VmRSS)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(pid):
    """Direct children of a process (the instances of `rouse serve`)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_pids(roots):
    """The given processes and all their descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_ticks(pids):
    """User + system CPU time of processes, in clock ticks (threads included)."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def compilers_running(names=("rustc", "cargo")):
    """How many rustc/cargo processes run now (other work that would skew the figures)."""
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() in names:
                        n += 1
            except OSError:
                pass
    return n


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_busy_ticks():
    """Busy time of all CPUs since boot, in clock ticks, as processes are charged for it
    (/proc/stat user + nice + system), plus steal, since time the hypervisor gives to other
    guests is lost to us too. irq and softirq are left out: loopback traffic is mostly the
    harness's own, and no process is charged for it."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return v[0] + v[1] + v[2] + (v[7] if len(v) > 7 else 0)


class Monitor(threading.Thread):
    """Samples, every second, what the machine does besides this harness: the CPU time spent
    outside the harness's own process tree and the kernel's threads (all CPUs' busy time
    from /proc/stat minus theirs, with reaped children counted through cutime), processes
    ready to run outside the tree, and rustc processes. Other work on the same CPUs skews the figures; the report
    says where it happened."""

    def __init__(self):
        super().__init__(daemon=True)
        # (monotonic time, 1-min load, foreign runnable, compilers, busy ticks, our ticks)
        self.samples = []
        self.stop_ev = threading.Event()
        self.me = os.getpid()
        self.ncpu = os.cpu_count() or 1

    def sample(self):
        busy = cpu_busy_ticks()
        ppid, state, comm, ticks = {}, {}, {}, {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            head, _, rest = st.rpartition(")")
            fields = rest.split()
            if len(fields) < 15:
                continue
            pid = int(d)
            comm[pid] = head.split("(", 1)[-1]
            state[pid] = fields[0]
            ppid[pid] = int(fields[1])
            # utime stime cutime cstime: a reaped child's time moves into its parent's.
            ticks[pid] = sum(int(x) for x in fields[11:15])

        def ours(pid):
            for _ in range(64):
                if pid == self.me:
                    return True
                if pid not in ppid or pid <= 2:
                    return False
                pid = ppid[pid]
            return False

        mine = {pid for pid in ppid if ours(pid)}
        foreign = sum(1 for pid, s in state.items()
                      if s == "R" and ppid.get(pid) != 2 and pid != 2 and pid not in mine)
        # rustc is what burns CPU in a build; an idle cargo (waiting on a test) does not.
        compilers = sum(1 for pid, c in comm.items() if c == "rustc" and pid not in mine)
        # Kernel threads (pid 2 and its children) mostly work for us: the store's writes,
        # process creation and exit. They count as ours.
        kthreads = sum(t for p, t in ticks.items() if p == 2 or ppid.get(p) == 2)
        our_ticks = sum(ticks[p] for p in mine) + kthreads
        self.samples.append((time.monotonic(), load1(), foreign, compilers, busy, our_ticks))

    def run(self):
        while not self.stop_ev.wait(1.0):
            try:
                self.sample()
            except Exception:  # a vanished process mid-scan; the next sample will do
                pass

    def window(self, t0, t1):
        """What ran besides the harness between two monotonic times."""
        w = [x for x in self.samples if t0 <= x[0] <= t1]
        if not w:
            return {"samples": 0, "foreign_cpu": None, "foreign_runnable_mean": None,
                    "compiler_samples": 0}
        foreign_cpu = None
        if len(w) >= 2:
            span = (w[-1][0] - w[0][0]) * CLK_TCK * self.ncpu
            other = (w[-1][4] - w[0][4]) - (w[-1][5] - w[0][5])
            foreign_cpu = max(0.0, other / span) if span > 0 else None
        return {"samples": len(w),
                "foreign_cpu": foreign_cpu,
                "foreign_runnable_mean": sum(x[2] for x in w) / len(w),
                "compiler_samples": sum(1 for x in w if x[3])}

    def summary(self):
        self.stop_ev.set()
        if not self.samples:
            return {"samples": 0}
        w = self.window(self.samples[0][0], self.samples[-1][0])
        w.update(load1_max=max(x[1] for x in self.samples),
                 load1_median=median([x[1] for x in self.samples]))
        return w


def disturbed(win):
    """A measurement window in which other work competed for the CPUs: more than 10 % of the
    machine's CPU time (a fifth of a core on 2 CPUs) spent outside the harness, or a rustc.
    (Process creation alone shows a few per cent the accounting cannot attribute.)"""
    return bool(win) and (win.get("compiler_samples", 0) > 0
                          or (win.get("foreign_cpu") or 0) > 0.10)


def wait_until(cond, timeout, interval=0.05, what="condition"):
    """Polls `cond` until it returns a truthy value or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def http_request(addr, host, path="/", timeout=60.0):
    """One GET on a fresh connection; returns (status, seconds to first byte, total seconds)."""
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    t0 = time.perf_counter()
    with socket.create_connection(addr, timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(req)
        first = s.recv(1)
        t1 = time.perf_counter()
        if not first:
            raise ConnectionError("connection closed before any byte")
        chunks = [first]
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    t2 = time.perf_counter()
    head = b"".join(chunks).split(b"\r\n", 1)[0].decode("latin-1")
    m = re.match(r"HTTP/1\.[01] (\d{3})", head)
    return (int(m.group(1)) if m else 0), t1 - t0, t2 - t0


async def async_request(addr, host, path="/", timeout=120.0):
    """One GET on a fresh connection; returns the status (0 when the transport failed)."""
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), timeout)
        writer.write(req)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return int(m.group(1)) if m else 0
    except (OSError, asyncio.TimeoutError, ConnectionError):
        return 0
    finally:
        if writer is not None:
            writer.close()


# ---------------------------------------------------------------------------------------
# Processes


class Procs:
    """Every process the harness starts, so each can be stopped by its own id."""

    def __init__(self, workdir, pin):
        self.workdir = workdir
        self.pin = pin
        self.running = []

    def server_prefix(self):
        return ["taskset", "-c", str(SERVER_CPU)] if self.pin else []

    def client_prefix(self):
        return ["taskset", "-c", str(CLIENT_CPU)] if self.pin else []

    def start(self, name, argv, env=None, pipe_stdout=False):
        logf = open(os.path.join(self.workdir, f"{name}.log"), "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(
            self.server_prefix() + argv,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else logf,
            stderr=logf,
            start_new_session=True,
        )
        p.bench_name = name
        p.bench_log = logf
        self.running.append(p)
        return p

    def stop(self, p, timeout=60.0):
        if p not in self.running:
            return
        self.running.remove(p)
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{p.bench_name} (pid {p.pid}) ignored SIGTERM for {timeout:.0f} s: SIGKILL")
                p.kill()
                p.wait()
        p.bench_log.close()

    def stop_all(self):
        for p in list(reversed(self.running)):
            self.stop(p, timeout=30)


def run_client(procs, argv, timeout):
    """Runs a load-side command on the client CPU; returns (rc, stdout, stderr)."""
    r = subprocess.run(
        procs.client_prefix() + argv,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return r.returncode, r.stdout, r.stderr


# ---------------------------------------------------------------------------------------
# Rouse


def service_yaml(name, app, annotations=None, cc=None, args=None):
    ann = annotations or {}
    lines = [
        "apiVersion: serving.knative.dev/v1",
        "kind: Service",
        "metadata:",
        f"  name: {name}",
        "spec:",
        "  template:",
        "    metadata:",
    ]
    if ann:
        lines.append("      annotations:")
        lines += [f'        {k}: "{v}"' for k, v in ann.items()]
    else:
        lines.append("      annotations: {}")
    lines.append("    spec:")
    if cc is not None:
        lines.append(f"      containerConcurrency: {cc}")
    lines.append("      containers:")
    lines.append(f'        - command: ["{app}"]')
    if args:
        lines.append("          args: [" + ", ".join(f'"{a}"' for a in args) + "]")
    return "\n".join(lines) + "\n"


def autoscaler_config(data):
    lines = [
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: config-autoscaler",
        "  namespace: knative-serving",
        "data:",
    ]
    lines += [f'  {k}: "{v}"' for k, v in data.items()]
    return "\n".join(lines) + "\n"


ANN = "autoscaling.knative.dev/"
# How long the sidecar goes without requests before its quiet RSS is read (it sheds its code
# pages after 10 s idle).
SIDECAR_QUIET_S = 12.0
# The hosts the separate gateway serves (issue 13's procs rows): Serve mode, Proxy mode, and
# a revision with no pods (requests wait in the activator).
PROCS_HOSTS = {"serve": "serve.bench.example.com", "proxy": "proxy.bench.example.com",
               "zero": "zero.bench.example.com"}


class Rouse:
    """One `rouse serve` with its own data dir, pinned to the server CPU."""

    def __init__(self, h, name, config=None):
        self.h = h
        self.name = name
        self.dir = os.path.join(h.workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.data_dir = os.path.join(self.dir, "data")
        argv = [h.rouse, "serve", "--data-dir", self.data_dir,
                "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"]
        if config:
            cfg = os.path.join(self.dir, "config.yaml")
            with open(cfg, "w") as f:
                f.write(autoscaler_config(config))
            argv += ["--config", cfg]
        self.proc = h.procs.start(f"rouse-{name}", argv, pipe_stdout=True)
        self.pid = self.proc.pid
        self.gateway = None
        self.api = None
        lines = []
        stdout = self.proc.stdout

        def reader():
            for raw in stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                lines.append(line)
                try:
                    self.proc.bench_log.write(raw)
                    self.proc.bench_log.flush()
                except ValueError:  # the log was closed: the process is gone
                    return

        threading.Thread(target=reader, daemon=True).start()

        def addresses():
            if self.proc.poll() is not None:
                raise RuntimeError(f"rouse serve exited with {self.proc.returncode}: "
                                   f"see {self.proc.bench_log.name}")
            for line in list(lines):
                if "Gateway: http://" in line:
                    host, port = line.split("Gateway: http://")[1].strip().rsplit(":", 1)
                    self.gateway = (host, int(port))
                if "API: http://" in line:
                    self.api = "http://" + line.split("API: http://")[1].strip()
            return self.gateway and self.api

        wait_until(addresses, 30, what="rouse serve to print its addresses")
        # The pid whose memory counts: rouse itself, not the taskset wrapper (taskset execs).
        self.pid = self.proc.pid

    def stop(self):
        self.h.procs.stop(self.proc, timeout=120)

    def apply(self, yaml_text, label, wait=True, timeout_s=300):
        path = os.path.join(self.dir, f"{label}.yaml")
        with open(path, "w") as f:
            f.write(yaml_text)
        # The CLI finds the API token in the platform's data dir.
        argv = [self.h.rouse, "--api", self.api, "--data-dir", self.data_dir, "apply", "-f", path]
        if wait:
            argv += ["--wait", "--timeout", f"{timeout_s}s"]
        t0 = time.perf_counter()
        rc, out, err = run_client(self.h.procs, argv, timeout=timeout_s + 30)
        elapsed = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"rouse apply {label} failed (exit {rc}): {err.strip()[-600:]}")
        return elapsed

    def auth(self):
        """The API's bearer token header (the token `rouse serve` wrote into its data dir)."""
        with open(os.path.join(self.data_dir, "api-token")) as f:
            return {"Authorization": "Bearer " + f.read().strip()}

    def api_get(self, path):
        req = urllib.request.Request(self.api + path, headers=self.auth())
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def delete_service(self, name):
        req = urllib.request.Request(
            f"{self.api}/apis/serving.knative.dev/v1/namespaces/default/services/{name}",
            method="DELETE", headers=self.auth())
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise

    def sks_mode(self, rev):
        try:
            o = self.api_get("/apis/networking.internal.knative.dev/v1alpha1/namespaces/"
                             f"default/serverlessservices/{rev}")
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return (o.get("spec") or {}).get("mode")

    def instances_started(self, rev):
        """Instances ever started for a revision: one log file each."""
        d = os.path.join(self.data_dir, "logs", "default", rev)
        try:
            return len([f for f in os.listdir(d) if f.endswith(".log")])
        except FileNotFoundError:
            return 0

    def rss_kb(self):
        return rss_kb(self.pid)

    def instance_pids(self):
        return children_of(self.pid)

    def settled_rss(self, min_s=1.0, max_s=15.0):
        """RSS once it stops moving (two samples 0.5 s apart within 1 %), after at least min_s."""
        time.sleep(min_s)
        prev = self.rss_kb()
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
            cur = self.rss_kb()
            if prev and cur and abs(cur - prev) <= 0.01 * prev:
                return cur
            prev = cur
        return prev


def rev_of(svc):
    return f"{svc}-00001"


# ---------------------------------------------------------------------------------------
# Load tools


def wrk_run(h, url, host, seconds, label, connections=CONNECTIONS):
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-s", os.path.join(h.root, "bench", "wrk-report.lua")]
    if host:
        argv += ["-H", f"Host: {host}"]
    argv.append(url)
    h.commands.setdefault(label, shlex.join(argv).replace(h.root + "/", ""))
    rc, out, err = run_client(h.procs, argv, timeout=seconds + 60)
    m = re.search(r"^WRK_JSON (\{.*\})$", out, re.M)
    if rc != 0 or not m:
        raise RuntimeError(f"wrk failed (exit {rc}): {(err or out).strip()[-400:]}")
    j = json.loads(m.group(1))
    errors = sum(j["errors"].values())
    secs = j["duration_us"] / 1e6
    return {
        "rps": j["requests"] / secs if secs else 0.0,
        "p50_ms": j["latency_us"]["p50"] / 1000.0,
        "p99_ms": j["latency_us"]["p99"] / 1000.0,
        "requests": j["requests"],
        "errors": errors,
        "error_kinds": j["errors"],
    }


def h2load_run(h, port, host, seconds, label):
    logpath = os.path.join(h.workdir, f"h2load-{label}.tsv")
    if os.path.exists(logpath):
        os.remove(logpath)
    url = f"http://{host or '127.0.0.1'}:{port}/"
    argv = ["h2load", "-t1", f"-c{H2_CONNECTIONS}", f"-m{H2_STREAMS}",
            f"-D{int(seconds * 1000)}ms", f"--connect-to=127.0.0.1:{port}",
            f"--log-file={logpath}", url]
    h.commands.setdefault(label, shlex.join(a for a in argv if not a.startswith("--log-file")))
    rc, out, err = run_client(h.procs, argv, timeout=seconds + 60)
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if rc != 0 or not m or not req:
        raise RuntimeError(f"h2load failed (exit {rc}): {(err or out).strip()[-400:]}")
    lat = []
    with open(logpath) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                lat.append(int(parts[2]) / 1000.0)
    done = int(req.group(3))
    bad_status = int(codes.group(3)) + int(codes.group(4)) if codes else 0
    return {
        "rps": float(m.group(3)),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "requests": done,
        "errors": int(req.group(5)) + int(req.group(6)) + int(req.group(7)) + bad_status,
    }


# ---------------------------------------------------------------------------------------
# The harness


class Harness:
    def __init__(self, a):
        self.a = a
        self.root = a.root
        self.smoke = a.smoke
        self.rounds = a.rounds if a.rounds else (1 if a.smoke else 3)
        self.duration = a.duration if a.duration else (1.0 if a.smoke else 10.0)
        self.warmup = a.warmup if a.warmup is not None else (0.0 if a.smoke else 3.0)
        self.only = set(a.only.split(",")) if a.only else None
        self.nproc = os.cpu_count() or 1
        try:
            self.nproc = int(subprocess.run(["nproc", "--all"], capture_output=True,
                                            text=True).stdout.strip())
        except (OSError, ValueError):
            pass
        self.pin = self.nproc >= 2
        self.workdir = tempfile.mkdtemp(prefix="rouse-bench-")
        # Run copies, so a rebuild of target/ during the run cannot mix two builds.
        bindir = os.path.join(self.workdir, "bin")
        os.makedirs(bindir)
        for b in ("rouse", "rouse-testapp"):
            shutil.copy2(os.path.join(a.bin_dir, b), bindir)
        self.rouse = os.path.join(bindir, "rouse")
        self.testapp = os.path.join(bindir, "rouse-testapp")
        # The sidecar's own lean binary when built (else `rouse queue-proxy`, the same code).
        sidecar = os.path.join(a.bin_dir, "rouse-queue-proxy")
        if os.path.exists(sidecar):
            shutil.copy2(sidecar, bindir)
            self.sidecar_cmd = [os.path.join(bindir, "rouse-queue-proxy")]
        else:
            self.sidecar_cmd = [self.rouse, "queue-proxy"]
        self.procs = Procs(self.workdir, self.pin)
        self.chains = {}  # the peer chains of the procs rows, once started
        self.commands = {}
        self.failures = []
        # Sizes: full run per the issue, smoke run about a second each.
        s = self.smoke
        self.cold_tries = 2 if s else 20
        self.burst_n = 100 if s else 1000
        self.waiting_n = 500 if s else 10000
        self.idle_services = 10 if s else 100
        self.idle_woken = 2 if s else 10
        self.control_services = 10 if s else 100

    def next_id(self):
        """A fresh number for names, so a repeated attempt never meets an older one."""
        self.seq = getattr(self, "seq", 0) + 1
        return self.seq

    def want(self, name):
        return self.only is None or name in self.only

    # --- machine ---------------------------------------------------------------------
    def machine(self):
        cpu = "unknown"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem_kb = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])

        def version(argv, pattern):
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            except OSError:
                return None
            m = re.search(pattern, r.stdout + r.stderr)
            return m.group(1) if m else None

        def git(*args):
            try:
                return subprocess.run(["git", "-C", self.root, *args], capture_output=True,
                                      text=True, timeout=10).stdout.strip()
            except OSError:
                return ""

        return {
            "nproc": self.nproc,
            "cpu": cpu,
            "kernel": os.uname().release,
            "mem_total_mb": mem_kb // 1024,
            "nginx": version(["nginx", "-v"], r"nginx/(\S+)"),
            "haproxy": version(["haproxy", "-v"], r"version (\S+)"),
            "wrk": version(["wrk", "-v"], r"wrk (\S+)"),
            "h2load": version(["h2load", "--version"], r"nghttp2/(\S+)"),
            "python": sys.version.split()[0],
            "git_commit": git("rev-parse", "--short", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }

    def wait_quiet(self):
        """Waits up to 20 minutes for a quiet machine; returns a description."""
        deadline = time.monotonic() + 20 * 60
        while True:
            l1, busy = load1(), compilers_running()
            if l1 < 0.7 and not busy:
                return f"quiet at start (1-min load {l1:.2f}, no rustc/cargo)"
            if time.monotonic() > deadline:
                return (f"NOT quiet after waiting 20 min (1-min load {l1:.2f}, "
                        f"{busy} rustc/cargo processes): ran anyway")
            log(f"waiting for a quiet machine: load {l1:.2f}, {busy} rustc/cargo")
            time.sleep(15)

    # --- peers -----------------------------------------------------------------------
    def start_peers(self):
        p = {"backend": free_port(), "backend_h2": free_port()}
        self.ports = p
        self.backend = self.procs.start("backend", [self.testapp], env={"PORT": str(p["backend"])})
        self.backend_h2 = self.procs.start("backend-h2", [self.testapp, "--h2c"],
                                           env={"PORT": str(p["backend_h2"])})
        self.nginx, p["nginx"], p["nginx_h2"] = self.start_nginx("nginx", p["backend"])
        self.haproxy, p["haproxy"], p["haproxy_h2"] = self.start_haproxy("haproxy", p["backend"])
        for name in ("backend", "backend_h2"):
            wait_until(lambda n=name: listening(p[n]), 20, what=f"{name} to listen on {p[name]}")
        self.wait_proxies({n: (p[n], p[n + "_h2"]) for n in ("nginx", "haproxy")})

    def conf_from(self, template, path, values):
        """Writes bench/conf/<template> to path with its @NAME@ placeholders filled in."""
        with open(os.path.join(self.root, "bench", "conf", template)) as f:
            conf = f.read()
        for k, v in values.items():
            conf = conf.replace("@" + k + "@", str(v))
        with open(path, "w") as f:
            f.write(conf)

    def start_nginx(self, name, backend):
        """One nginx (a master and one worker) in front of a port; returns the process and
        its HTTP/1.1 and h2c ports."""
        port, h2port = free_port(), free_port()
        d = os.path.join(self.workdir, name)
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        conf = os.path.join(d, "nginx.conf")
        self.conf_from("nginx.conf", conf,
                       {"DIR": d, "BACKEND": backend, "PORT": port, "H2PORT": h2port})
        return self.procs.start(name, ["nginx", "-p", d, "-c", conf]), port, h2port

    def start_haproxy(self, name, backend):
        """One HAProxy (one thread) in front of a port, as start_nginx."""
        port, h2port = free_port(), free_port()
        cfg = os.path.join(self.workdir, f"{name}.cfg")
        self.conf_from("haproxy.cfg", cfg, {"BACKEND": backend, "PORT": port, "H2PORT": h2port})
        return self.procs.start(name, ["haproxy", "-db", "-f", cfg]), port, h2port

    def wait_proxies(self, ports):
        """Waits for each proxy's two ports ({name: (port, h2 port)}), then checks that a
        request through its HTTP/1.1 port reaches the backend."""
        for name, (port, h2port) in ports.items():
            for pt in (port, h2port):
                wait_until(lambda pt=pt: listening(pt), 20, what=f"{name} to listen on {pt}")
            st, _, _ = http_request(("127.0.0.1", port), "peer")
            if st != 200:
                raise RuntimeError(f"{name} answered {st} instead of 200")

    def start_main_rouse(self):
        """The rouse serve for hop overhead, cold start and burst."""
        self.main = Rouse(self, "main", {
            "allow-zero-initial-scale": "true",
            "activator-queue-depth": str(max(20000, 2 * self.waiting_n)),
        })
        one = {ANN + "min-scale": "1", ANN + "max-scale": "1"}
        svcs = [
            ("hop-serve", {**one, ANN + "target-burst-capacity": "0"}, None),
            ("hop-act", {**one, ANN + "target-burst-capacity": "-1"}, None),
            ("hop-serve-cc10", {**one, ANN + "target-burst-capacity": "0"}, 10),
            ("hop-act-cc10", {**one, ANN + "target-burst-capacity": "-1"}, 10),
        ]
        self.main.apply("---\n".join(service_yaml(n, self.testapp, a, cc) for n, a, cc in svcs),
                        "hop-services")
        self.sks_expect = {"hop-serve": "Serve", "hop-act": "Proxy",
                           "hop-serve-cc10": "Serve", "hop-act-cc10": "Proxy"}
        # TBC 0 flips the SKS to Serve once the instance is ready; give it a bounded while.
        try:
            wait_until(lambda: all(self.main.sks_mode(rev_of(s)) == m
                                   for s, m in self.sks_expect.items()),
                       10 if self.smoke else 30,
                       interval=0.2, what="the SKS modes (Serve for TBC 0, Proxy for TBC -1)")
        except TimeoutError as e:
            log(f"warning: {e}")
        self.sks_seen = {s: self.main.sks_mode(rev_of(s)) for s in self.sks_expect}
        log(f"SKS modes: {self.sks_seen}")

    # --- hop overhead --------------------------------------------------------------------
    def hop_rows(self):
        p = self.ports
        gw = self.main.gateway[1] if getattr(self, "main", None) else None
        rows = []
        if self.want("hop"):
            rows += [
                ("direct", "http/1.1", p["backend"], None, None),
                ("nginx", "http/1.1", p["nginx"], None, None),
                ("haproxy", "http/1.1", p["haproxy"], None, None),
                ("rouse-serve", "http/1.1", gw, "hop-serve", None),
                ("rouse-activator", "http/1.1", gw, "hop-act", None),
                ("rouse-serve-cc10", "http/1.1", gw, "hop-serve-cc10", 10),
                ("rouse-activator-cc10", "http/1.1", gw, "hop-act-cc10", 10),
            ]
        if self.want("h2"):
            rows += [
                ("direct-h2", "h2c", p["backend_h2"], None, None),
                ("nginx-h2", "h2c", p["nginx_h2"], None, None),
                ("haproxy-h2", "h2c", p["haproxy_h2"], None, None),
                ("rouse-serve-h2", "h2c", gw, "hop-serve", None),
                ("rouse-activator-h2", "h2c", gw, "hop-act", None),
            ]
        hp = getattr(self, "hops", None)
        procs = []
        if self.want("procs") and hp:
            serve, proxy = PROCS_HOSTS["serve"], PROCS_HOSTS["proxy"]
            procs = [
                ("procs-sidecar", "http/1.1", hp["sidecar"], None, None),
                ("procs-gateway-sidecar", "http/1.1", hp["gateway"], serve, None),
                ("procs-gateway-activator-sidecar", "http/1.1", hp["gateway"], proxy, None),
                ("procs-sidecar-h2", "h2c", hp["sidecar_h2c"], None, None),
                ("procs-gateway-sidecar-h2", "h2c", hp["gateway"], serve, None),
                ("procs-gateway-activator-sidecar-h2", "h2c", hp["gateway"], proxy, None),
            ]
        if self.want("procs"):
            rows += chains.rows(self) + procs + chains.latency_rows(self, procs)
        return rows

    def server_roots(self, name):
        """The processes that serve a hop row (with their descendants)."""
        name = chains.base_name(name)
        chain = chains.roots(self, name)
        if chain:
            return chain
        if name.startswith("procs-"):
            hp = self.hops
            roots = [hp["sidecar_proc"].pid, self.backend.pid]
            if "gateway" in name:
                roots.append(hp["gateway_proc"].pid)
            if "activator" in name:
                roots.append(hp["activator_proc"].pid)
            return roots
        if name.startswith("rouse-"):
            return [self.main.pid]
        backend = self.backend_h2.pid if name == "direct-h2" else self.backend.pid
        if name.startswith("nginx"):
            return [self.nginx.pid, backend]
        if name.startswith("haproxy"):
            return [self.haproxy.pid, backend]
        return [backend]

    def run_hop_row(self, row):
        name, proto, port, svc, _cc = row
        if port is None:
            raise RuntimeError("rouse serve did not start")
        # A row names a service of the main rouse serve, or a whole host (the procs rows).
        host = (svc if "." in svc else f"{svc}.default.localhost") if svc else None
        warmup, seconds, conns = self.warmup, self.duration, CONNECTIONS
        if proto == chains.LATENCY_PROTO:  # one request in flight: no queueing in the latency
            warmup = min(warmup, chains.LATENCY_WARMUP_S)
            seconds, conns = min(seconds, chains.LATENCY_S), 1

        def load(secs, label):
            if proto == "h2c":
                return h2load_run(self, port, host, secs, label)
            return wrk_run(self, f"http://127.0.0.1:{port}/", host, secs, label, conns)

        if warmup > 0:
            load(warmup, name + "-warmup")
        pids = tree_pids(self.server_roots(name))
        before = cpu_ticks(pids)
        out = load(seconds, name)
        used_s = (cpu_ticks(pids) - before) / CLK_TCK
        if chains.base_name(name).startswith("procs-"):
            # The sidecar's idle figure waits for a quiet spell after its last load.
            self.sidecar_last_load = time.monotonic()
        # CPU the server side spent per request: unlike req/s, other work on the machine
        # barely moves it, and 1e6 / it is the rate one dedicated core would reach.
        out["server_cpu_us_per_req"] = used_s * 1e6 / out["requests"] if out["requests"] else None
        out["server_cpu_s"] = used_s
        return out

    # --- the hops as separate processes (issue 13) -----------------------------------------
    def start_printing(self, name, argv, env, key):
        """Starts a rouse role that prints its addresses on its first stdout line."""
        p = self.procs.start(name, argv, env=env, pipe_stdout=True)
        line = p.stdout.readline().decode(errors="replace")
        addrs = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if key not in addrs:
            raise RuntimeError(f"{name} printed {line!r} (log: {self.workdir}/{name}.log)")
        return p, addrs

    def start_hop_procs(self):
        """`rouse queue-proxy` in front of the backend, `rouse activator` and `rouse gateway`
        fed by a static endpoints file: the data plane of Kubernetes mode on loopback."""
        env = {
            "SERVING_NAMESPACE": "default", "SERVING_SERVICE": "bench",
            "SERVING_CONFIGURATION": "bench", "SERVING_REVISION": "bench-00001",
            "SERVING_POD": "bench-00001-deployment-1", "SERVING_POD_IP": "127.0.0.1",
            "QUEUE_SERVING_PORT": "0", "QUEUE_SERVING_TLS_PORT": "8112",
            "USER_PORT": str(self.ports["backend"]), "CONTAINER_CONCURRENCY": "0",
            "REVISION_TIMEOUT_SECONDS": "300", "REVISION_RESPONSE_START_TIMEOUT_SECONDS": "0",
            "REVISION_IDLE_TIMEOUT_SECONDS": "0", "SERVING_LOGGING_CONFIG": "",
            "SERVING_LOGGING_LEVEL": "",
            "SERVING_READINESS_PROBE": '{"tcpSocket":{"port":0},"successThreshold":1}',
            "ENABLE_HTTP2_AUTO_DETECTION": "false", "ROUSE_QUEUE_BIND": "127.0.0.1",
            "ROUSE_QUEUE_H2C_PORT": "0", "ROUSE_QUEUE_ADMIN_PORT": "0",
            "ROUSE_QUEUE_METRICS_PORT": "0", "ROUSE_QUEUE_USER_METRICS_PORT": "0",
        }
        sidecar, sa = self.start_printing("procs-sidecar", self.sidecar_cmd, env, "serving")
        sidecar_addr = sa["serving"]
        path = os.path.join(self.workdir, "endpoints.json")

        def write(activators):
            revs = [{"namespace": "default", "name": rev, "mode": mode, "pods": pods,
                     "timeoutSeconds": 300}
                    for rev, mode, pods in (("bench-serve", "serve", [sidecar_addr]),
                                            ("bench-proxy", "proxy", [sidecar_addr]),
                                            ("bench-zero", "proxy", []))]
            routes = [{"host": PROCS_HOSTS[k], "targets": [
                {"namespace": "default", "revision": f"bench-{k}", "percent": 100}]}
                for k in ("serve", "proxy", "zero")]
            doc = {"activators": activators, "revisions": revs, "routes": routes}
            with open(path + ".tmp", "w") as f:
                json.dump(doc, f)
            os.replace(path + ".tmp", path)

        write([])
        hop = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
               "--endpoints", path]
        activator, aa = self.start_printing("procs-activator", [self.rouse, "activator", *hop],
                                            None, "listening")
        write([aa["listening"]])
        gateway, ga = self.start_printing("procs-gateway", [self.rouse, "gateway", *hop], None,
                                          "listening")
        self.hops = {
            "sidecar": int(sidecar_addr.rsplit(":", 1)[1]),
            "sidecar_h2c": int(sa["h2c"].rsplit(":", 1)[1]),
            "gateway": int(ga["listening"].rsplit(":", 1)[1]),
            "gateway_addr": ("127.0.0.1", int(ga["listening"].rsplit(":", 1)[1])),
            "sidecar_proc": sidecar, "activator_proc": activator, "gateway_proc": gateway,
        }
        for k in ("serve", "proxy"):
            wait_until(lambda k=k: http_request(self.hops["gateway_addr"],
                                                PROCS_HOSTS[k])[0] == 200,
                       30, interval=0.1, what=f"the {k} path through the separate processes")
        self.hops["idle_kb"] = {n: rss_kb(self.hops[n + "_proc"].pid)
                                for n in ("sidecar", "activator", "gateway")}

    def procs_memory_round(self, r):
        """Requests waiting in the separate activator (a revision with no pods): its RSS
        per waiting request, and the gateway's; the sidecar's idle and peak RSS."""
        hp = self.hops
        n = min(self.waiting_n, 9000)  # under the activator's default queue depth, 10000
        act, gw = hp["activator_proc"].pid, hp["gateway_proc"].pid

        def settled(pid):
            last, t0 = rss_kb(pid), time.monotonic()
            while time.monotonic() - t0 < 15:
                time.sleep(0.5)
                now = rss_kb(pid)
                if abs(now - last) < 64 and time.monotonic() - t0 >= 1.0:
                    return now
                last = now
            return last

        base = {act: settled(act), gw: settled(gw)}
        result = {}

        async def flood():
            conns, holders, early = [], [], 0

            async def hold(rd):
                nonlocal early
                if await rd.read(1):
                    early += 1

            req = f"GET / HTTP/1.1\r\nHost: {PROCS_HOSTS['zero']}\r\n\r\n".encode()
            for i in range(0, n, 500):
                opened = await asyncio.gather(
                    *(asyncio.open_connection(*hp["gateway_addr"]) for _ in range(min(500, n - i))),
                    return_exceptions=True)
                for o in opened:
                    if isinstance(o, BaseException):
                        raise RuntimeError(f"connect failed: {o!r}")
                    rd, wr = o
                    wr.write(req)
                    conns.append(wr)
                    holders.append(asyncio.ensure_future(hold(rd)))
                await asyncio.gather(*(w.drain() for w in conns[-len(opened):]))
            loop = asyncio.get_running_loop()
            result["act"] = await loop.run_in_executor(None, lambda: settled(act))
            result["gw"] = await loop.run_in_executor(None, lambda: settled(gw))
            result["early"] = early
            for t in holders:
                t.cancel()
            for wr in conns:
                wr.close()
            await asyncio.gather(*holders, return_exceptions=True)

        asyncio.run(asyncio.wait_for(flood(), 300))
        if result["early"]:
            raise RuntimeError(f"{result['early']} of {n} requests were answered instead of "
                               "waiting")
        # The sidecar drops its code pages after 10 s without a request: its idle figure is
        # read once it has gone SIDECAR_QUIET_S without one (the flood above never reached it).
        quiet_left = (getattr(self, "sidecar_last_load", 0.0) + SIDECAR_QUIET_S
                      - time.monotonic())
        if quiet_left > 0:
            time.sleep(quiet_left)
        quiet_kb = rss_kb(hp["sidecar_proc"].pid)
        peak = 0
        with open(f"/proc/{hp['sidecar_proc'].pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
        return {"waiting": n,
                "activator_per_request_bytes": (result["act"] - base[act]) * 1024 / n,
                "gateway_per_request_bytes": (result["gw"] - base[gw]) * 1024 / n,
                "sidecar_idle_kb": hp["idle_kb"]["sidecar"], "sidecar_peak_kb": peak,
                "sidecar_quiet_kb": quiet_kb,
                "activator_idle_kb": hp["idle_kb"]["activator"],
                "gateway_idle_kb": hp["idle_kb"]["gateway"]}

    # --- cold start ----------------------------------------------------------------------
    def app_listen_times(self, n):
        """The app's own time from spawn to accepting connections, n tries."""
        out = []
        for _ in range(n):
            port = free_port()
            env = dict(os.environ, PORT=str(port))
            pre = (lambda: os.sched_setaffinity(0, {SERVER_CPU})) if self.pin else None
            t0 = time.perf_counter()
            p = subprocess.Popen([self.testapp], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 preexec_fn=pre)
            try:
                deadline = t0 + 10
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        out.append(time.perf_counter() - t0)
                        break
                    except OSError:
                        if time.perf_counter() > deadline:
                            raise RuntimeError("rouse-testapp did not listen within 10 s")
                        time.sleep(0.0002)
            finally:
                p.kill()
                p.wait()
        return out

    def cold_round(self, r, tries):
        k = self.next_id()
        names = [f"cold-{k}-{i}" for i in range(tries)]
        zero = {ANN + "initial-scale": "0"}
        self.main.apply("---\n".join(service_yaml(n, self.testapp, zero) for n in names),
                        f"cold-{k}")
        out = []
        for n in names:
            started = self.main.instances_started(rev_of(n))
            if started:
                raise RuntimeError(f"{n} was not at zero before its try ({started} started)")
            st, fb, _ = http_request(self.main.gateway, f"{n}.default.localhost")
            if st != 200:
                raise RuntimeError(f"cold request to {n} answered {st}")
            st2, warm_fb, _ = http_request(self.main.gateway, f"{n}.default.localhost")
            out.append({"first_byte_ms": fb * 1000, "warm_first_byte_ms": warm_fb * 1000,
                        "warm_status": st2})
            self.main.delete_service(n)
            time.sleep(0.2)
        return {"tries": out}

    # --- burst from zero -------------------------------------------------------------------
    def burst_round(self, r):
        name = f"burst-{self.next_id()}"
        self.main.apply(service_yaml(name, self.testapp, {ANN + "initial-scale": "0"}, cc=10),
                        name)
        if self.main.instances_started(rev_of(name)):
            raise RuntimeError(f"{name} was not at zero before the burst")
        host = f"{name}.default.localhost"
        n = self.burst_n

        async def burst():
            t0 = time.perf_counter()
            statuses = await asyncio.gather(*(async_request(self.main.gateway, host)
                                              for _ in range(n)))
            return statuses, time.perf_counter() - t0

        statuses, elapsed = asyncio.run(burst())
        started = self.main.instances_started(rev_of(name))
        # The autoscaler reacts to the burst after it is served too: count again later.
        later_s = 1.0 if self.smoke else 5.0
        time.sleep(later_s)
        started_later = self.main.instances_started(rev_of(name))
        errors = sum(1 for s in statuses if s != 200)
        by_status = {}
        for s in statuses:
            by_status[str(s)] = by_status.get(str(s), 0) + 1
        self.main.delete_service(name)
        return {"requests": n, "errors": errors, "statuses": by_status,
                "time_s": elapsed, "instances_started": started,
                "instances_started_later": started_later, "later_s": later_s}

    # --- memory per waiting request ------------------------------------------------------
    def memory_round(self, r):
        rz = Rouse(self, f"memory-{self.next_id()}", {
            "allow-zero-initial-scale": "true",
            "activator-queue-depth": str(max(20000, 2 * self.waiting_n)),
        })
        try:
            name = "slow"
            # max-scale 1: the waiting requests would otherwise ask for 100 instances (each
            # with its queue-proxy in this process), and their memory is not what is measured.
            rz.apply(service_yaml(name, self.testapp, {ANN + "initial-scale": "0",
                                                       ANN + "max-scale": "1"},
                                  args=["--startup-delay", "600000"]), name)
            host = f"{name}.default.localhost"
            base = rz.settled_rss(min_s=1.0)
            n = self.waiting_n
            result = {}

            async def flood():
                conns, holders = [], []
                early = 0

                async def hold(rd):
                    nonlocal early
                    if await rd.read(1):  # any byte means it was answered, not kept waiting
                        early += 1

                req = (f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").encode()
                t0 = time.perf_counter()
                batch = 500
                for i in range(0, n, batch):
                    opened = await asyncio.gather(
                        *(asyncio.open_connection(*rz.gateway) for _ in range(min(batch, n - i))),
                        return_exceptions=True)
                    for o in opened:
                        if isinstance(o, BaseException):
                            raise RuntimeError(f"connect failed: {o!r}")
                        rd, wr = o
                        wr.write(req)
                        conns.append(wr)
                        holders.append(asyncio.ensure_future(hold(rd)))
                    await asyncio.gather(*(w.drain() for w in conns[-len(opened):]))
                sent_s = time.perf_counter() - t0
                # Let the server take every request in, then read its memory while they wait.
                loop = asyncio.get_running_loop()
                rss = await loop.run_in_executor(None, lambda: rz.settled_rss(min_s=2.0))
                fds = fd_count(rz.pid)
                result.update(rss=rss, fds=fds, early=early, sent_s=sent_s)
                for t in holders:
                    t.cancel()
                for wr in conns:
                    wr.close()
                await asyncio.gather(*holders, return_exceptions=True)

            asyncio.run(asyncio.wait_for(flood(), 300))  # bounded, like every scenario
            if result["early"]:
                raise RuntimeError(f"{result['early']} of {n} requests were answered instead "
                                   "of waiting")
            added = result["rss"] - base
            return {"waiting": n, "rss_before_kb": base, "rss_waiting_kb": result["rss"],
                    "per_request_bytes": added * 1024 / n, "server_fds": result["fds"],
                    "instances_started": rz.instances_started(rev_of(name))}
        finally:
            rz.stop()

    # --- idle footprint ------------------------------------------------------------------
    def idle_round(self, r):
        rz = Rouse(self, f"idle-{self.next_id()}", {"allow-zero-initial-scale": "true"})
        try:
            empty = rz.settled_rss(min_s=1.0)
            names = [f"idle-{i:03d}" for i in range(self.idle_services)]
            zero = {ANN + "initial-scale": "0"}
            rz.apply("---\n".join(service_yaml(n, self.testapp, zero) for n in names),
                     "idle-services")
            at_zero = rz.settled_rss(min_s=2.0)
            running = sum(rz.instances_started(rev_of(n)) for n in names)
            if running:
                raise RuntimeError(f"{running} instances started for services at zero")
            woken = names[: self.idle_woken]
            for n in woken:
                st, _, _ = http_request(rz.gateway, f"{n}.default.localhost")
                if st != 200:
                    raise RuntimeError(f"waking {n} answered {st}")
            wait_until(lambda: len(rz.instance_pids()) >= len(woken), 30,
                       what="the woken instances to run")
            with_instances = rz.settled_rss(min_s=2.0)
            app_rss = [rss_kb(p) for p in rz.instance_pids()]
            app_rss = [x for x in app_rss if x]
            return {
                "services": len(names),
                "rss_empty_kb": empty,
                "rss_idle_kb": at_zero,
                "per_service_kb": (at_zero - empty) / len(names),
                "instances": len(woken),
                "rss_with_instances_kb": with_instances,
                "per_instance_kb": (with_instances - at_zero) / len(woken),
                "app_rss_per_instance_kb": (sum(app_rss) / len(app_rss)) if app_rss else None,
            }
        finally:
            rz.stop()

    # --- control plane -------------------------------------------------------------------
    def control_round(self, r):
        rz = Rouse(self, f"control-{self.next_id()}")
        try:
            names = [f"cp-{i:03d}" for i in range(self.control_services)]
            elapsed = rz.apply("---\n".join(service_yaml(n, self.testapp) for n in names),
                               "control-services")
            return {"services": len(names), "ready_s": elapsed,
                    "instances": len(rz.instance_pids())}
        finally:
            rz.stop()

    # --- orchestration -------------------------------------------------------------------
    def attempt(self, store, key, fn):
        if self.a.wait_quiet:
            # Let a foreign build finish before measuring (bounded: 2 minutes per attempt).
            deadline = time.monotonic() + 120
            while compilers_running(("rustc",)) and time.monotonic() < deadline:
                time.sleep(2)
        tries = 1 + (self.a.retry_disturbed if self.a.wait_quiet else 0)
        for n in range(tries):
            t0 = time.monotonic()
            try:
                out = fn()
            except Exception as e:  # one failed scenario must not hide the others
                msg = f"{type(e).__name__}: {e}"
                log(f"{key} failed: {msg}")
                store.setdefault(key + ":errors", []).append(msg)
                return
            if isinstance(out, dict):
                out["window"] = self.monitor.window(t0, time.monotonic())
                out["attempt"] = n + 1
                if disturbed(out["window"]) and n + 1 < tries:
                    log(f"{key}: other work competed for the CPUs ({out['window']}); again")
                    deadline = time.monotonic() + 120
                    while compilers_running(("rustc",)) and time.monotonic() < deadline:
                        time.sleep(2)
                    continue
            store.setdefault(key, []).append(out)
            return

    def run(self):
        t_start = time.time()
        res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "mode": "smoke" if self.smoke else "full",
               "machine": self.machine(),
               "network": self.a.network,
               "pinning": (f"server side on CPU {SERVER_CPU}, load side on CPU {CLIENT_CPU} "
                           "(taskset)") if self.pin else "none (fewer than 2 CPUs)",
               "rounds": self.rounds, "duration_s": self.duration, "warmup_s": self.warmup,
               "command": self.a.command_line,
               "binaries": (os.path.relpath(self.a.bin_dir, self.root)
                            if self.a.bin_dir.startswith(self.root + "/") else self.a.bin_dir),
               "rouse_built": datetime.datetime.fromtimestamp(
                   os.path.getmtime(os.path.join(self.a.bin_dir, "rouse")),
                   datetime.timezone.utc).isoformat(timespec="seconds")}
        if self.pin:
            os.sched_setaffinity(0, {CLIENT_CPU})
        res["quiet"] = self.wait_quiet() if self.a.wait_quiet else "not checked"
        res["loadavg_at_start"] = open("/proc/loadavg").read().split()[:3]
        self.monitor = Monitor()
        self.monitor.start()
        log(f"workdir {self.workdir}; {res['pinning']}; {self.a.network}")

        raw = {}
        try:
            self.start_peers()
        except Exception as e:
            raise SystemExit(f"peers failed to start: {e}")
        try:
            if self.want("hop") or self.want("h2") or self.want("cold") or self.want("burst"):
                self.start_main_rouse()
        except Exception as e:
            log(f"rouse serve (main) failed: {e}")
            self.main = None
            raw["main:errors"] = [str(e)]

        if self.want("procs"):
            try:
                self.chains = chains.start(self)
            except Exception as e:
                log(f"the nginx and HAProxy chains failed to start: {e}")
                self.chains = {}
                raw["chains:errors"] = [str(e)]
            try:
                self.start_hop_procs()
            except Exception as e:
                log(f"the separate hop processes failed to start: {e}")
                self.hops = None
                raw["procs:errors"] = [str(e)]

        rows = self.hop_rows()
        cold_per_round = [self.cold_tries // self.rounds + (1 if i < self.cold_tries % self.rounds
                                                            else 0) for i in range(self.rounds)]
        if self.want("cold"):
            raw["app_listen_ms"] = [t * 1000 for t in self.app_listen_times(
                max(3, self.cold_tries))]
        for r in range(self.rounds):
            log(f"round {r + 1}/{self.rounds}")
            # Rotate the order each round so no row always runs right after the same one.
            k = r % len(rows) if rows else 0
            for row in rows[k:] + rows[:k]:
                log(f"  {row[0]}")
                self.attempt(raw, "hop:" + row[0], lambda row=row: self.run_hop_row(row))
            if self.want("cold") and cold_per_round[r]:
                log(f"  cold start x{cold_per_round[r]}")
                self.attempt(raw, "cold", lambda: self.cold_round(r, cold_per_round[r]))
            if self.want("burst"):
                log(f"  burst of {self.burst_n}")
                self.attempt(raw, "burst", lambda: self.burst_round(r))
            if self.want("procs") and getattr(self, "hops", None):
                log("  separate activator: waiting requests")
                self.attempt(raw, "procs-memory", lambda: self.procs_memory_round(r))
            if self.want("memory"):
                log(f"  {self.waiting_n} waiting requests")
                self.attempt(raw, "memory", lambda: self.memory_round(r))
            if self.want("idle"):
                log(f"  idle footprint, {self.idle_services} services")
                self.attempt(raw, "idle", lambda: self.idle_round(r))
            if self.want("control"):
                log(f"  control plane, {self.control_services} services")
                self.attempt(raw, "control", lambda: self.control_round(r))

        res["during_run"] = self.monitor.summary()
        res["scenarios_run"] = sorted(n for n in ("hop", "h2", "procs", "cold", "burst", "memory",
                                                  "idle", "control") if self.want(n))
        res["sks_modes"] = getattr(self, "sks_seen", None)
        res["hop"] = self.summarize_hop(raw, rows)
        res["cold_start"] = self.summarize_cold(raw)
        res["burst"] = self.summarize_rounds(raw, "burst", ["time_s", "errors",
                                                            "instances_started",
                                                            "instances_started_later"])
        res["memory_per_waiting"] = self.summarize_rounds(
            raw, "memory", ["per_request_bytes", "rss_before_kb", "rss_waiting_kb", "server_fds"])
        res["idle"] = self.summarize_rounds(
            raw, "idle", ["rss_empty_kb", "rss_idle_kb", "per_service_kb", "per_instance_kb",
                          "app_rss_per_instance_kb"])
        res["control_plane"] = self.summarize_rounds(raw, "control", ["ready_s"])
        res["procs_memory"] = self.summarize_rounds(
            raw, "procs-memory", ["activator_per_request_bytes", "gateway_per_request_bytes",
                                  "sidecar_idle_kb", "sidecar_peak_kb", "sidecar_quiet_kb",
                                  "activator_idle_kb", "gateway_idle_kb"])
        res["errors"] = {k[:-7]: v for k, v in raw.items() if k.endswith(":errors")}
        res["commands"] = self.commands
        res["targets"] = targets(res)
        res["wall_time_s"] = round(time.time() - t_start, 1)
        return res

    def summarize_hop(self, raw, rows):
        out = []
        for name, proto, _port, svc, cc in rows:
            rs = raw.get("hop:" + name, [])
            entry = {"name": name, "protocol": proto, "service": svc,
                     "container_concurrency": cc, "rounds": rs,
                     "errors_text": raw.get("hop:" + name + ":errors", [])}
            if rs:
                entry.update(quiet_note(rs))
                entry["errors"] = sum(x["errors"] for x in rs)
                rs = quiet_rounds(rs)
                entry["rps"] = median([x["rps"] for x in rs])
                entry["p50_ms"] = median([x["p50_ms"] for x in rs])
                entry["p99_ms"] = median([x["p99_ms"] for x in rs])
                entry["server_cpu_us_per_req"] = median(
                    [x.get("server_cpu_us_per_req") for x in rs])
            out.append(entry)
        by = {e["name"]: e for e in out}
        for e in out:
            if e["protocol"] == chains.LATENCY_PROTO:
                continue
            sfx = "-h2" if e["protocol"] == "h2c" else ""
            peers = {"nginx": "nginx" + sfx, "haproxy": "haproxy" + sfx}
            if e["name"] in chains.CHAIN_PEER:  # as many proxy processes as this row
                peers["chain"] = e["chain_peer"] = chains.CHAIN_PEER[e["name"]]
            for key, peer in peers.items():
                ref = by.get(peer)
                if ref and ref.get("rps") and e.get("rps"):
                    e[f"rps_vs_{key}"] = e["rps"] / ref["rps"]
                    e[f"p99_vs_{key}"] = e["p99_ms"] / ref["p99_ms"] if ref["p99_ms"] else None
                    if ref.get("server_cpu_us_per_req") and e.get("server_cpu_us_per_req"):
                        # >1 means cheaper than the peer: the req/s ratio on a dedicated core.
                        e[f"cpu_efficiency_vs_{key}"] = (ref["server_cpu_us_per_req"]
                                                         / e["server_cpu_us_per_req"])
        chains.add_latency(out)
        return out

    def summarize_cold(self, raw):
        rounds = quiet_rounds(raw.get("cold", []))
        tries = [t for rnd in rounds for t in rnd["tries"]]
        app = raw.get("app_listen_ms", [])
        out = {"tries": len(tries), "rounds": raw.get("cold", []),
               "app_listen_ms_samples": app, "errors_text": raw.get("cold:errors", []),
               **quiet_note(raw.get("cold", []))}
        if tries and app:
            fb = [t["first_byte_ms"] for t in tries]
            app_med = median(app)
            out.update({
                "first_byte_median_ms": median(fb),
                "first_byte_p95_ms": percentile(fb, 95),
                "app_listen_median_ms": app_med,
                "app_listen_p95_ms": percentile(app, 95),
                "overhead_median_ms": median(fb) - app_med,
                "overhead_p95_ms": percentile(fb, 95) - app_med,
                "warm_first_byte_median_ms": median([t["warm_first_byte_ms"] for t in tries]),
            })
        return out

    def summarize_rounds(self, raw, key, fields):
        rs = raw.get(key, [])
        out = {"rounds": rs, "errors_text": raw.get(key + ":errors", []), **quiet_note(rs)}
        for f in fields:
            vals = [x.get(f) for x in quiet_rounds(rs) if x.get(f) is not None]
            if vals:
                out[f] = median(vals)
        if rs and "errors" in fields:
            out["errors_total"] = sum(x["errors"] for x in rs)
        return out


# ---------------------------------------------------------------------------------------
# Targets and reports


def quiet_rounds(rounds):
    """The rounds medians are taken over: the quiet ones when at least two were quiet (other
    work competed for the CPUs in the rest), else all of them."""
    quiet = [r for r in rounds if not disturbed(r.get("window"))]
    return quiet if len(quiet) >= 2 else rounds


def quiet_note(rounds):
    quiet = sum(1 for r in rounds if not disturbed(r.get("window")))
    return {"quiet_rounds": quiet, "rounds_run": len(rounds),
            "median_over": "quiet rounds" if quiet >= 2 and quiet < len(rounds)
            else "all rounds"}


def quiet_mark(entry):
    """'2/3' and a dagger when some rounds were disturbed."""
    q, n = entry.get("quiet_rounds"), entry.get("rounds_run")
    if q is None or not n:
        return ""
    return f"{q}/{n}" + ("" if q == n else " †")


def targets(res):
    """Issue 6's targets, each judged against what this run measured (None = not measured)."""
    hop = {e["name"]: e for e in res.get("hop", [])}
    t = []

    def add(what, measured, met, informational=False):
        t.append({"target": what, "measured": measured, "met": met,
                  **({"informational": True} if informational else {})})

    s, a = hop.get("rouse-serve", {}), hop.get("rouse-activator", {})
    if s.get("rps_vs_nginx") is not None:
        ok = s["rps_vs_nginx"] >= 1.0 and s["p99_ms"] <= hop["nginx"]["p99_ms"] \
            and not s.get("errors")
        add("Serve mode >= 1.0x nginx rps, p99 no worse",
            f"{s['rps_vs_nginx']:.2f}x, p99 {s['p99_ms']:.2f} vs {hop['nginx']['p99_ms']:.2f} ms"
            f" (CPU per request: {fmt(s.get('cpu_efficiency_vs_nginx'), '.2f', 'x')} nginx's "
            "efficiency)", ok)
    else:
        add("Serve mode >= 1.0x nginx rps, p99 no worse", "not measured", None)
    if a.get("rps_vs_nginx") is not None:
        add("Activator path >= 0.8x nginx rps",
            f"{a['rps_vs_nginx']:.2f}x (CPU per request: "
            f"{fmt(a.get('cpu_efficiency_vs_nginx'), '.2f', 'x')} nginx's efficiency)",
            a["rps_vs_nginx"] >= 0.8 and not a.get("errors"))
    else:
        add("Activator path >= 0.8x nginx rps", "not measured", None)
    c = res.get("cold_start", {})
    if c.get("overhead_median_ms") is not None:
        add("Cold-start overhead <= 5 ms median", f"{c['overhead_median_ms']:.1f} ms",
            c["overhead_median_ms"] <= 5.0)
    else:
        add("Cold-start overhead <= 5 ms median", "not measured", None)
    m = res.get("memory_per_waiting", {})
    if m.get("per_request_bytes") is not None:
        add("<= 2 KB per waiting request", f"{m['per_request_bytes'] / 1024:.2f} KB",
            m["per_request_bytes"] <= 2048)
    else:
        add("<= 2 KB per waiting request", "not measured", None)
    i = res.get("idle", {})
    n_idle = (i.get("rounds") or [{}])[0].get("services")
    if i.get("rss_idle_kb") is not None:
        add("Idle footprint <= 30 MB with 100 services",
            f"{i['rss_idle_kb'] / 1024:.1f} MB with {n_idle} services",
            (i["rss_idle_kb"] <= 30 * 1024) if n_idle == 100 else None)
    else:
        add("Idle footprint <= 30 MB with 100 services", "not measured", None)
    if i.get("per_instance_kb") is not None:
        add("<= 200 KB added per running instance (rouse serve's RSS)",
            f"{i['per_instance_kb']:.0f} KB", i["per_instance_kb"] <= 200)
    else:
        add("<= 200 KB added per running instance", "not measured", None)
    ran = set(res.get("scenarios_run", []))
    if "procs" in ran:
        procs_targets(res, hop, add)
    if "h2" in ran:
        h2 = hop.get("rouse-serve-h2", {})
        if h2.get("rps_vs_nginx") is not None:
            add("HTTP/2 in local mode (Serve) >= 1.0x nginx rps (issue 13)",
                f"{h2['rps_vs_nginx']:.2f}x", h2["rps_vs_nginx"] >= 1.0 and not h2.get("errors"))
        else:
            add("HTTP/2 in local mode (Serve) >= 1.0x nginx rps (issue 13)", "not measured", None)
    cp = res.get("control_plane", {})
    n_cp = (cp.get("rounds") or [{}])[0].get("services")
    if cp.get("ready_s") is not None:
        add("100 services Ready within 5 s", f"{cp['ready_s']:.2f} s for {n_cp} services",
            (cp["ready_s"] <= 5.0) if n_cp == 100 else None)
    else:
        add("100 services Ready within 5 s", "not measured", None)
    return t


def procs_targets(res, hop, add):
    """Issue 13's targets for the hops as separate processes."""
    for row, peer, floor, p99 in (("procs-sidecar", "nginx", 1.0, True),
                                  ("procs-sidecar-h2", "nginx-h2", 1.0, True),
                                  ("procs-gateway-activator-sidecar", "nginx", 0.8, False)):
        e, ref = hop.get(row, {}), hop.get(peer, {})
        what = f"{row} >= {floor}x {peer} rps" + (", p99 no worse" if p99 else "")
        if e.get("rps_vs_nginx") is None:
            add(what, "not measured", None)
            continue
        ok = e["rps_vs_nginx"] >= floor and not e.get("errors")
        if p99:
            ok = ok and e["p99_ms"] <= ref["p99_ms"]
        add(what, f"{e['rps_vs_nginx']:.2f}x, p99 {e['p99_ms']:.2f} vs {ref['p99_ms']:.2f} ms", ok)
    chain_ratios(hop, add)
    m = res.get("procs_memory", {})
    if m.get("sidecar_idle_kb") is not None:
        # Idle: a pod whose sidecar has had no request for a while (just after serving, the
        # code that served is still resident; that figure is in the memory table).
        idle = m.get("sidecar_quiet_kb") or m["sidecar_idle_kb"]
        add("Sidecar <= 5 MB RSS idle", f"{idle / 1024:.1f} MB", idle <= 5 * 1024)
        add("Sidecar <= 10 MB RSS under load (peak)", f"{m['sidecar_peak_kb'] / 1024:.1f} MB",
            m["sidecar_peak_kb"] <= 10 * 1024)
        add("Separate activator <= 2 KB per waiting request",
            f"{m['activator_per_request_bytes'] / 1024:.2f} KB",
            m["activator_per_request_bytes"] <= 2048)
    else:
        for what in ("Sidecar <= 5 MB RSS idle", "Sidecar <= 10 MB RSS under load (peak)",
                     "Separate activator <= 2 KB per waiting request"):
            add(what, "not measured", None)


def chain_ratios(hop, add):
    """Not targets: the procs chains beside nginx chains of as many proxy processes, where
    each pays the same kernel TCP work per hop (docs/benchmarks.md)."""
    for row in ("procs-gateway-sidecar", "procs-gateway-activator-sidecar"):
        e, peer = hop.get(row, {}), chains.CHAIN_PEER[row]
        what = f"{row} vs {peer} (as many proxy processes)"
        if e.get("rps_vs_chain") is None:
            add(what, "not measured", None, informational=True)
            continue
        add(what, f"{e['rps_vs_chain']:.2f}x rps (CPU per request: "
                  f"{fmt(e.get('cpu_efficiency_vs_chain'), '.2f', 'x')} {peer}'s efficiency)",
            None, informational=True)


def fmt(v, spec=".0f", unit=""):
    return "—" if v is None else f"{v:{spec}}{unit}"


def markdown(res):
    m = res["machine"]
    L = []
    L.append(f"Run of {res['date']} ({res['mode']}), commit `{m['git_commit']}`"
             f"{' + local changes' if m['git_dirty'] else ''}.")
    L.append("")
    L.append(f"- Machine: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, "
             f"{m['mem_total_mb']} MB RAM.")
    L.append(f"- Network: {res['network']}. Pinning: {res['pinning']}.")
    d = res.get("during_run") or {}
    during = ""
    if d.get("samples"):
        during = (f"; during the run (sampled each second): "
                  f"{100 * (d.get('foreign_cpu') or 0):.1f} % of all CPU time went to work "
                  f"outside the harness (steal included), rustc seen in "
                  f"{d['compiler_samples']} of {d['samples']} samples")
    L.append(f"- Machine state: {res['quiet']}; load at start "
             f"{' '.join(res['loadavg_at_start'])}{during}.")
    L.append(f"- {res['rounds']} round(s) interleaved, {res['duration_s']:g} s measured per "
             f"throughput run after {res['warmup_s']:g} s of unrecorded warm-up; medians shown.")
    L.append(f"- Peers: nginx {m['nginx']}, HAProxy {m['haproxy']}, wrk {m['wrk']}, "
             f"h2load {m['h2load']}. Backend everywhere: `rouse-testapp` (answers `/` from "
             "memory).")
    L.append(f"- Command: `{res['command']}` (wall time {res['wall_time_s']:.0f} s); "
             f"binaries from `{res['binaries']}` (rouse built {res['rouse_built']})"
             f"{' (DEBUG BUILD: not representative)' if 'debug' in res['binaries'] else ''}.")
    L.append("")
    for proto, title in (("http/1.1", f"HTTP/1.1, wrk -t1 -c{CONNECTIONS}, keep-alive"),
                         ("h2c", f"HTTP/2 cleartext (prior knowledge), h2load -t1 "
                                 f"-c{H2_CONNECTIONS} -m{H2_STREAMS}")):
        rows = [e for e in res["hop"] if e["protocol"] == proto]
        if not rows:
            continue
        # The chain columns only when the procs rows ran beside their nginx chains.
        chain = any(e.get("chain_peer") for e in rows)
        L.append(f"### Hop overhead: {title}")
        L.append("")
        L.append("| path | req/s | p50 ms | p99 ms | req/s vs nginx | req/s vs HAProxy "
                 "| p99 vs nginx | server CPU µs/req | CPU/req: nginx's ÷ this | "
                 + ("req/s vs nginx chain | CPU/req: chain's ÷ this | " if chain else "")
                 + "errors | quiet rounds |")
        L.append("|---|" + "---:|" * (12 if chain else 10))
        for e in rows:
            label = e["name"]
            if e.get("service"):
                mode = (res.get("sks_modes") or {}).get(e["service"])
                label += f" (SKS {mode})" if mode else ""
            if "rps" not in e:
                err = "; ".join(e["errors_text"])[:120] or "no result"
                L.append(f"| {label} | failed: {err} |" + " |" * (11 if chain else 9))
                continue
            vs_chain = ""
            if chain:
                peer = f" ({e['chain_peer']})" if e.get("rps_vs_chain") is not None else ""
                vs_chain = (f"{fmt(e.get('rps_vs_chain'), '.2f', 'x')}{peer} | "
                            f"{fmt(e.get('cpu_efficiency_vs_chain'), '.2f', 'x')} | ")
            L.append(f"| {label} | {e['rps']:.0f} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | "
                     f"{fmt(e.get('rps_vs_nginx'), '.2f', 'x')} | "
                     f"{fmt(e.get('rps_vs_haproxy'), '.2f', 'x')} | "
                     f"{fmt(e.get('p99_vs_nginx'), '.2f', 'x')} | "
                     f"{fmt(e.get('server_cpu_us_per_req'), '.1f')} | "
                     f"{fmt(e.get('cpu_efficiency_vs_nginx'), '.2f', 'x')} | {vs_chain}"
                     f"{e['errors']} | {quiet_mark(e)} |")
        L.append("")
    L += latency_table([e for e in res["hop"] if e["protocol"] == chains.LATENCY_PROTO])
    L.append("### Scale from zero, memory and control plane")
    L.append("")
    L.append("| scenario | result | quiet rounds |")
    L.append("|---|---|---:|")

    def row(label, text, entry=None):
        L.append(f"| {label} | {text} | {quiet_mark(entry) if entry else ''} |")

    def failed(label, entry):
        row(label, f"failed: {'; '.join(entry['errors_text'])[:200] or 'no result'}")

    ran = set(res["scenarios_run"])
    c = res["cold_start"]
    if "cold" not in ran:
        pass
    elif c.get("first_byte_median_ms") is not None:
        row(f"Cold start, {c['tries']} tries: first request to first byte",
            f"median {c['first_byte_median_ms']:.1f} ms, p95 {c['first_byte_p95_ms']:.1f} ms", c)
        row("App's own spawn-to-listening time (measured apart)",
            f"median {c['app_listen_median_ms']:.1f} ms, p95 {c['app_listen_p95_ms']:.1f} ms")
        row("**Cold-start overhead** (first byte − app's median)",
            f"median **{c['overhead_median_ms']:.1f} ms**, p95 {c['overhead_p95_ms']:.1f} ms "
            f"(a warm request right after: {c['warm_first_byte_median_ms']:.2f} ms)", c)
    else:
        failed("Cold start", c)
    b = res["burst"]
    if "burst" not in ran:
        pass
    elif b.get("time_s") is not None:
        n = b["rounds"][0]["requests"]
        statuses = {}
        for rnd in b["rounds"]:
            for k, v in rnd["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
        seen = ", ".join(f"{'transport error' if k == '0' else k}: {v}"
                         for k, v in sorted(statuses.items()))
        row(f"Burst from zero: {n} concurrent, CC 10",
            f"errors **{b['errors_total']}** (all rounds; statuses {seen}); all answered in "
            f"**{b['time_s']:.2f} s**; {b['instances_started']:.0f} instance(s) started by then, "
            f"{b['instances_started_later']:.0f} after {b['rounds'][0]['later_s']:g} s more", b)
    else:
        failed("Burst from zero", b)
    mw = res["memory_per_waiting"]
    if "memory" not in ran:
        pass
    elif mw.get("per_request_bytes") is not None:
        n = mw["rounds"][0]["waiting"]
        row(f"Memory per waiting request ({n} waiting)",
            f"**{mw['per_request_bytes'] / 1024:.2f} KB** per request (RSS "
            f"{mw['rss_before_kb'] / 1024:.1f} → {mw['rss_waiting_kb'] / 1024:.1f} MB)", mw)
    else:
        failed("Memory per waiting request", mw)
    i = res["idle"]
    if "idle" not in ran:
        pass
    elif i.get("rss_idle_kb") is not None:
        n = i["rounds"][0]["services"]
        row(f"Idle footprint: `rouse serve` RSS, {n} services at zero",
            f"**{i['rss_idle_kb'] / 1024:.1f} MB** (empty: {i['rss_empty_kb'] / 1024:.1f} MB; "
            f"{i['per_service_kb']:.0f} KB per service)", i)
        row("Added per running instance (`rouse serve` only, queue-proxy included)",
            f"**{i['per_instance_kb']:.0f} KB** (the app process itself: "
            f"{fmt(i.get('app_rss_per_instance_kb'), '.0f')} KB RSS)", i)
    else:
        failed("Idle footprint", i)
    pm = res.get("procs_memory", {})
    if "procs" not in ran:
        pass
    elif pm.get("activator_per_request_bytes") is not None:
        n = pm["rounds"][0]["waiting"]
        row("Separate processes: idle RSS",
            f"sidecar **{pm['sidecar_idle_kb'] / 1024:.1f} MB**, activator "
            f"{pm['activator_idle_kb'] / 1024:.1f} MB, gateway "
            f"{pm['gateway_idle_kb'] / 1024:.1f} MB", pm)
        if pm.get("sidecar_quiet_kb") is not None:
            row(f"Sidecar RSS after {SIDECAR_QUIET_S:.0f} s without requests",
                f"**{pm['sidecar_quiet_kb'] / 1024:.1f} MB**", pm)
        row("Sidecar peak RSS (VmHWM) after the load rows",
            f"**{pm['sidecar_peak_kb'] / 1024:.1f} MB**", pm)
        row(f"Separate activator: memory per waiting request ({n} waiting)",
            f"**{pm['activator_per_request_bytes'] / 1024:.2f} KB** (the gateway in front: "
            f"{pm['gateway_per_request_bytes'] / 1024:.2f} KB per held request)", pm)
    else:
        failed("Separate processes: memory", pm)
    cp = res["control_plane"]
    if "control" not in ran:
        pass
    elif cp.get("ready_s") is not None:
        n = cp["rounds"][0]["services"]
        row(f"Control plane: {n} services applied at once until all Ready",
            f"**{cp['ready_s']:.2f} s**", cp)
    else:
        failed("Control plane", cp)
    L.append("")
    L.append("† Other work competed for the CPUs during some rounds (over 10 % of the "
             "machine's CPU time outside the harness, or a rustc running); medians are over "
             "the quiet rounds when at least two were quiet, else over all rounds "
             "(`bench/results/latest.json` has each round's figures and its `window`).")
    L.append("")
    L.append("### Targets of issues 6 and 13 (this run)")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for t in res["targets"]:
        met = ("informational" if t.get("informational")
               else {True: "yes", False: "**no**", None: "not measured"}[t["met"]])
        L.append(f"| {t['target']} | {t['measured']} | {met} |")
    L.append("")
    if res["errors"]:
        L.append("### Failures in this run")
        L.append("")
        for k, v in res["errors"].items():
            L.append(f"- `{k}`: {'; '.join(v)[:400]}")
        L.append("")
    if not res["commands"]:
        return "\n".join(L) + "\n"
    L.append("<details><summary>Load commands</summary>")
    L.append("")
    L.append("```")
    for k, v in res["commands"].items():
        if not k.endswith("-warmup"):
            L.append(f"{k}: {v}")
    L.append("```")
    L.append("")
    L.append("</details>")
    return "\n".join(L) + "\n"


def latency_table(rows):
    """The rows at one connection: what each path's proxies add to the direct latency."""
    if not rows:
        return []
    L = ["### Latency per proxy at low load: HTTP/1.1, wrk -t1 -c1, keep-alive", "",
         "One request in flight, so no queueing; \"added\" is over the direct row. Published "
         "reference read beside it (OpenShift Serverless): each extra Knative hop adds "
         "0.5–1 ms, and each component takes up to 1 vCPU per 2,500 req/s (400 µs of CPU "
         "per request); see docs/benchmarks.md.", "",
         "| path | proxies | req/s | p50 ms | p99 ms | added p50 per proxy ms "
         "| added p99 per proxy ms | server CPU µs/req | added CPU per proxy µs/req | errors "
         "| quiet rounds |",
         "|---|" + "---:|" * 10]
    for e in rows:
        if "rps" not in e:
            err = "; ".join(e["errors_text"])[:120] or "no result"
            L.append(f"| {e['name']} | failed: {err} |" + " |" * 9)
            continue
        L.append(f"| {e['name']} | {e['hops']} | {e['rps']:.0f} | {e['p50_ms']:.3f} | "
                 f"{e['p99_ms']:.3f} | {fmt(e.get('added_p50_ms_per_hop'), '.3f')} | "
                 f"{fmt(e.get('added_p99_ms_per_hop'), '.3f')} | "
                 f"{fmt(e.get('server_cpu_us_per_req'), '.1f')} | "
                 f"{fmt(e.get('added_cpu_us_per_hop'), '.1f')} | {e['errors']} | "
                 f"{quiet_mark(e)} |")
    return L + [""]


def update_doc(path, md):
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    else:
        text = ("# Benchmarks\n\nHow to run them and what each scenario measures: "
                "[docs/benchmarks.md](docs/benchmarks.md).\n\n## Latest results\n\n"
                f"{DOC_BEGIN}\n{DOC_END}\n")
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        _, tail = rest.split(DOC_END, 1)
        text = f"{head}{DOC_BEGIN}\n{md}{DOC_END}{tail}"
    else:
        text += f"\n## Latest results\n\n{DOC_BEGIN}\n{md}{DOC_END}\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", required=True)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--network", default="host loopback")
    ap.add_argument("--command-line", default="bench/run")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--only")
    ap.add_argument("--out")
    ap.add_argument("--wait-quiet", action="store_true")
    ap.add_argument("--retry-disturbed", type=int, default=2)
    ap.add_argument("--no-update-doc", action="store_true")
    a = ap.parse_args()
    known = {"hop", "h2", "procs", "cold", "burst", "memory", "idle", "control"}
    if a.only and not set(a.only.split(",")) <= known:
        raise SystemExit(f"--only takes {','.join(sorted(known))}")
    h = Harness(a)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        res = h.run()
    finally:
        h.procs.stop_all()
    out_dir = a.out or os.path.join(a.root, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    stem = "smoke" if a.smoke else "latest"
    md = markdown(res)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(md)
    if not a.smoke and not a.no_update_doc:
        update_doc(os.path.join(a.root, "BENCHMARKS.md"), md)
    print()
    print(md)
    log(f"wrote {out_dir}/{stem}.json and {stem}.md"
        + ("" if a.smoke or a.no_update_doc else " and BENCHMARKS.md"))
    if res["errors"]:
        log(f"{len(res['errors'])} scenario(s) had failures; logs kept in {h.workdir}")
        sys.exit(1)
    shutil.rmtree(h.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
