//! End to end on the real Docker Engine: Knative Services naming only an image run as
//! containers. The image is built here, once per test run: `FROM scratch` holding the test app
//! and the shared libraries it links (tagged with a hash of their contents, so reruns reuse
//! it). Every test skips, saying why, when Docker is not reachable.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use common::*;

/// The test image's tag, building it the first time; `None` (with the reason printed) when
/// Docker is not usable here.
fn test_image() -> Option<String> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    let built = IMAGE.get_or_init(build_image);
    match built {
        Ok(tag) => Some(tag.clone()),
        Err(why) => {
            println!("skipped: {why}");
            None
        }
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI")
}

fn build_image() -> Result<String, String> {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|e| format!("no docker CLI: {e}"))?;
    if !ok.status.success() {
        return Err(format!(
            "Docker Engine is not reachable: {}",
            String::from_utf8_lossy(&ok.stderr).trim()
        ));
    }
    let app = testapp_bin();
    let mut files: Vec<PathBuf> = vec![app.clone()];
    let ldd = Command::new("ldd")
        .arg(&app)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux… (0x…)"
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push(PathBuf::from(p));
        }
    }
    let mut hash: u64 = 0xcbf29ce484222325;
    for f in &files {
        for b in std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))? {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    let tag = format!("rouse-testapp:{hash:016x}");
    if docker(&["image", "inspect", &tag]).status.success() {
        return Ok(tag);
    }
    let ctx = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = ctx.path().join("rootfs");
    std::fs::create_dir_all(root.join("tmp")).map_err(|e| e.to_string())?;
    std::fs::copy(&app, root.join("app")).map_err(|e| e.to_string())?;
    for lib in &files[1..] {
        let dest = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::copy(lib, &dest).map_err(|e| e.to_string())?;
    }
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENV LISTEN_HOST=0.0.0.0\nENTRYPOINT [\"/app\"]\n",
    )
    .map_err(|e| e.to_string())?;
    let out = docker(&["build", "-q", "-t", &tag, &ctx.path().display().to_string()]);
    if !out.status.success() {
        return Err(format!(
            "docker build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(tag)
}

/// Ids of the containers (running or not) of a revision in the default namespace.
fn containers_of(revision: &str, running_only: bool) -> Vec<String> {
    let filter = format!("label=dev.rouse.revision={revision}");
    let mut args = vec!["ps", "-q", "--no-trunc", "--filter", &filter];
    if !running_only {
        args.push("-a");
    }
    let out = docker(&args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn inspect(id: &str) -> serde_json::Value {
    let out = docker(&["inspect", id]);
    assert!(out.status.success(), "docker inspect {id}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

/// A name no other test run uses (containers are machine-wide).
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn image_service(name: &str, image: &str, annotations: &str, container_extra: &str) -> String {
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
{annotations}    spec:
      containers:
        - image: {image}
{container_extra}"#
    )
}

fn condition<'a>(v: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

#[test]
fn image_only_service_becomes_ready_answers_and_pins_its_digest() {
    let Some(image) = test_image() else { return };
    let p = Platform::start();
    let name = unique("img");
    let extra =
        "          env:\n            - {name: MESSAGE, value: \"hello from a container\"}\n";
    p.apply_wait(&image_service(&name, &image, "", extra));
    let host = format!("{name}.default.localhost");
    let r = p.http_get(&host, "/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, "hello from a container"));

    // The digest resolved at creation is recorded, and the container runs from it.
    let rev = format!("{name}-00001");
    let id_out = docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
    let image_id = String::from_utf8_lossy(&id_out.stdout).trim().to_string();
    let revision = p.get_json("revision", &rev).unwrap();
    assert_eq!(
        revision["status"]["containerStatuses"][0]["imageDigest"],
        image_id.as_str(),
        "{revision}"
    );
    let running = containers_of(&rev, true);
    assert_eq!(running.len(), 1, "{running:?}");
    let c = inspect(&running[0]);
    assert_eq!(c["Image"], image_id.as_str());
    assert_eq!(c["Config"]["Labels"]["dev.rouse.namespace"], "default");
    // Published on loopback only.
    let binding = &c["HostConfig"]["PortBindings"]["8080/tcp"][0];
    assert_eq!(binding["HostIp"], "127.0.0.1", "{binding}");

    // Its output lands in the instance's log file.
    let logs = p.data_dir.join("logs/default").join(&rev);
    eventually("the container's output in its log", PATIENCE, || {
        let entry = std::fs::read_dir(&logs).ok()?.flatten().next()?;
        let text = std::fs::read_to_string(entry.path()).ok()?;
        text.contains("rouse-testapp listening on 0.0.0.0:8080")
            .then_some(())
    });

    // Deleting the service removes its containers.
    p.cli_ok(&["delete", "ksvc", &name]);
    eventually("no container left", PATIENCE, || {
        containers_of(&rev, false).is_empty().then_some(())
    });
}

#[test]
fn env_command_args_limits_and_security_context_reach_the_container() {
    let Some(image) = test_image() else { return };
    // A `command` would run as a process under `auto`: forced to Docker, it overrides the
    // image's entrypoint.
    let p = Platform::start_with(&["--runtime", "docker"]);
    let name = unique("contract");
    let extra = r#"          command: ["/app"]
          args: ["--print", "rev=$(K_REVISION)"]
          workingDir: /tmp
          ports:
            - containerPort: 9000
          env:
            - {name: FOO, value: "bar"}
          resources:
            limits:
              cpu: 500m
              memory: 64Mi
          securityContext:
            runAsUser: 1234
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
"#;
    p.apply_wait(&image_service(&name, &image, "", extra));
    let rev = format!("{name}-00001");
    let running = containers_of(&rev, true);
    assert_eq!(running.len(), 1);
    let c = inspect(&running[0]);
    assert_eq!(c["Config"]["Entrypoint"], serde_json::json!(["/app"]));
    assert_eq!(
        c["Config"]["Cmd"],
        serde_json::json!(["--print", format!("rev={rev}")])
    );
    assert_eq!(c["Config"]["WorkingDir"], "/tmp");
    assert_eq!(c["Config"]["User"], "1234");
    let env: Vec<&str> = c["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for want in ["FOO=bar", "PORT=9000", &format!("K_REVISION={rev}")] {
        assert!(env.contains(&want), "{want} in {env:?}");
    }
    let hc = &c["HostConfig"];
    assert_eq!(hc["NanoCpus"], 500_000_000);
    assert_eq!(hc["Memory"], 64 * 1024 * 1024);
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]));
    assert!(hc["PortBindings"]["9000/tcp"].is_array(), "{hc}");

    // And the app inside sees them.
    let host = format!("{name}.default.localhost");
    let r = p.http_get(&host, "/runtime").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let rt: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(rt["cwd"], "/tmp", "{rt}");
    assert!(r.body.contains("\"FOO\""), "{}", r.body);
    assert!(r.body.contains("1234"), "{}", r.body);
}

#[test]
fn a_missing_image_fails_the_revision_with_knatives_reason_and_the_daemons_message() {
    if test_image().is_none() {
        return;
    }
    let p = Platform::start();
    let name = unique("missing");
    // A registry that refuses at once: the pull fails fast, with the daemon's message.
    let image = "127.0.0.1:1/rouse/missing:v1";
    let out = p.apply(&image_service(&name, image, "", ""), &[]);
    assert!(out.status.success());
    let rev = format!("{name}-00001");
    let ready = eventually("the revision fails", PATIENCE, || {
        let r = p.get_json("revision", &rev)?;
        let c = condition(&r, "Ready")?.clone();
        (c["status"] == "False").then_some(c)
    });
    assert_eq!(ready["reason"], "ContainerMissing", "{ready}");
    let msg = ready["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!("Unable to fetch image \"{image}\": ")),
        "{msg}"
    );
    assert!(msg.contains("127.0.0.1:1"), "the daemon's words: {msg}");
    assert!(containers_of(&rev, false).is_empty());

    // imagePullPolicy Never: not pulled, and said so.
    let never = unique("never");
    let extra = "          imagePullPolicy: Never\n";
    p.apply(&image_service(&never, "rouse/absent:v1", "", extra), &[]);
    let ready = eventually("the Never revision fails", PATIENCE, || {
        let r = p.get_json("revision", &format!("{never}-00001"))?;
        let c = condition(&r, "Ready")?.clone();
        (c["status"] == "False").then_some(c)
    });
    let msg = ready["message"].as_str().unwrap();
    assert!(msg.contains("imagePullPolicy is Never"), "{msg}");
}

#[test]
fn process_only_runtime_refuses_image_only_revisions() {
    if test_image().is_none() {
        return;
    }
    let p = Platform::start_with(&["--runtime", "process"]);
    let name = unique("proc-only");
    p.apply(&image_service(&name, "rouse/whatever:v1", "", ""), &[]);
    let ready = eventually("the revision fails", PATIENCE, || {
        let r = p.get_json("revision", &format!("{name}-00001"))?;
        let c = condition(&r, "Ready")?.clone();
        (c["status"] == "False").then_some(c)
    });
    let msg = ready["message"].as_str().unwrap();
    assert!(msg.contains("--runtime process"), "{msg}");
}

#[test]
fn scales_to_zero_and_back() {
    let Some(image) = test_image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--config", &cfg]);
    let name = unique("zero");
    p.apply_wait(&image_service(&name, &image, "", ""));
    let rev = format!("{name}-00001");
    let host = format!("{name}.default.localhost");
    assert_eq!(p.http_get(&host, "/").unwrap().status, 200);
    // At zero no container runs; one is kept created (not started) for the next cold start.
    eventually("scaled to zero, no container running", PATIENCE * 2, || {
        (pa_scale(&p, &rev) == (0, 0) && containers_of(&rev, true).is_empty()).then_some(())
    });
    eventually("a container made ahead", PATIENCE, || {
        (containers_of(&rev, false).len() == 1).then_some(())
    });
    let r = p.http_get(&host, "/").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(containers_of(&rev, true).len(), 1);
}

#[test]
fn kill_9_of_rouse_serve_leaves_no_container_after_restart() {
    let Some(image) = test_image() else { return };
    let mut p = Platform::start();
    let name = unique("leak");
    let ann = "        autoscaling.knative.dev/min-scale: \"1\"\n";
    p.apply_wait(&image_service(&name, &image, ann, ""));
    let rev = format!("{name}-00001");
    let before = containers_of(&rev, true);
    assert_eq!(before.len(), 1);
    p.kill9();
    // The container outlives its platform...
    assert_eq!(containers_of(&rev, true), before);
    p.restart();
    // ...until the next one on the same data dir removes it (before starting a new one).
    assert!(
        p.early_lines
            .iter()
            .any(|l| l.contains("removed container") && l.contains(&rev)),
        "{:?}",
        p.early_lines
    );
    assert!(!containers_of(&rev, false).contains(&before[0]));
    // The service comes back in a new container.
    let host = format!("{name}.default.localhost");
    eventually("served again", PATIENCE, || {
        (p.http_get(&host, "/").ok()?.status == 200).then_some(())
    });
    let after = containers_of(&rev, true);
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
    drop(p);
    eventually("no container after a clean stop", PATIENCE, || {
        containers_of(&rev, false).is_empty().then_some(())
    });
}

/// First request to first byte from zero, for the same app as a process and as a container,
/// in one run. Run it with `cargo test -p rouse --test e2e_docker -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check: it prints cold-start times (run by hand with --ignored --nocapture)"]
fn cold_start_container_vs_process() {
    let Some(image) = test_image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--config", &cfg]);
    let zero = "        autoscaling.knative.dev/initial-scale: \"0\"\n";
    let proc_name = unique("cold-proc");
    let app = testapp_bin();
    let proc_extra = format!("          command: [\"{}\"]\n", app.display());
    p.apply_wait(&image_service(&proc_name, &image, zero, &proc_extra));
    let ctr_name = unique("cold-ctr");
    p.apply_wait(&image_service(&ctr_name, &image, zero, ""));
    let mut report = Vec::new();
    for round in 0..3 {
        for name in [&proc_name, &ctr_name] {
            let rev = format!("{name}-00001");
            eventually("at zero", PATIENCE * 2, || {
                // A container is kept created (not started) for the next cold start.
                let made_ahead = name == &proc_name || containers_of(&rev, false).len() == 1;
                (pa_scale(&p, &rev).1 == 0 && containers_of(&rev, true).is_empty() && made_ahead)
                    .then_some(())
            });
            let host = format!("{name}.default.localhost");
            let t0 = Instant::now();
            let r = p.http_get(&host, "/").unwrap();
            let took = t0.elapsed();
            assert_eq!(r.status, 200);
            let kind = if name == &proc_name {
                "process"
            } else {
                "container"
            };
            report.push(format!("round {round}: {kind:9} {took:?}"));
        }
    }
    for line in report {
        println!("COLD START {line}");
    }
}

#[test]
fn a_crashing_container_fails_the_revision_with_its_exit_code_and_output() {
    let Some(image) = test_image() else { return };
    let p = Platform::start_with(&["--runtime", "docker"]);
    let name = unique("crash");
    let extra = r#"          command: ["/app"]
          args: ["--print", "about to fail", "--exit-immediately", "3"]
"#;
    p.apply(&image_service(&name, &image, "", extra), &[]);
    let rev = format!("{name}-00001");
    let healthy = eventually("the revision reports the exit", PATIENCE, || {
        let r = p.get_json("revision", &rev)?;
        let c = condition(&r, "ContainerHealthy")?.clone();
        (c["status"] == "False").then_some(c)
    });
    assert_eq!(healthy["reason"], "ExitCode3", "{healthy}");
    let msg = healthy["message"].as_str().unwrap();
    assert!(msg.contains("about to fail"), "{msg}");
    // Restarted with back-off, a new container each time, all writing to the instance's log.
    let logs = p.data_dir.join("logs/default").join(&rev);
    eventually("restarted", PATIENCE, || {
        let entry = std::fs::read_dir(&logs).ok()?.flatten().next()?;
        let text = std::fs::read_to_string(entry.path()).ok()?;
        (text.matches("about to fail").count() >= 2).then_some(())
    });
}

#[test]
fn without_docker_an_image_only_revision_fails_saying_so() {
    // Runs whatever the machine: Docker is made unreachable on purpose.
    let tmp = tempfile::tempdir().unwrap();
    let p = Platform::spawn_wrapped(
        &["env", "DOCKER_HOST=unix:///nonexistent/docker.sock"],
        &tmp.path().join("data"),
        &[],
    );
    let name = unique("nodocker");
    p.apply(&image_service(&name, "rouse/any:v1", "", ""), &[]);
    let ready = eventually("the revision fails", PATIENCE, || {
        let r = p.get_json("revision", &format!("{name}-00001"))?;
        let c = condition(&r, "Ready")?.clone();
        (c["status"] == "False").then_some(c)
    });
    assert_eq!(ready["reason"], "ContainerMissing", "{ready}");
    let msg = ready["message"].as_str().unwrap();
    assert!(
        msg.contains("cannot reach Docker Engine at /nonexistent/docker.sock"),
        "{msg}"
    );
    assert!(msg.contains("give the container a command"), "{msg}");
}

/// Exec probes run inside the container, as the kubelet runs them: `/app` exists only in the
/// image (not on this machine), and the probe's `$(VAR)`s expand from the container's.
#[test]
fn exec_probes_run_inside_the_container() {
    let Some(image) = test_image() else { return };
    assert!(
        !std::path::Path::new("/app").exists(),
        "/app on the host would let a host-side exec probe pass"
    );
    let p = Platform::start();
    // Fails every readiness check (exit 1): applied first, so by the time the passing one is
    // Ready it has been probed for at least as long.
    let bad = unique("exec-bad");
    let bad_extra = r#"          readinessProbe:
            exec:
              command: ["/app", "--print", "not ready on $(PORT)", "--exit-immediately", "1"]
"#;
    let out = p.apply(&image_service(&bad, &image, "", bad_extra), &[]);
    assert!(out.status.success(), "{out:?}");
    let good = unique("exec-ok");
    let good_extra = r#"          readinessProbe:
            exec:
              command: ["/app", "--print", "$(PORT)", "--exit-immediately", "0"]
            periodSeconds: 1
          livenessProbe:
            exec:
              command: ["/app", "--exit-immediately", "0"]
            periodSeconds: 1
"#;
    p.apply_wait(&image_service(&good, &image, "", good_extra));
    let r = p
        .http_get(&format!("{good}.default.localhost"), "/")
        .unwrap();
    assert_eq!(r.status, 200);

    // The failing one runs and serves inside its container, yet is never Ready.
    let bad_rev = format!("{bad}-00001");
    let logs = p.data_dir.join("logs/default").join(&bad_rev);
    eventually("the failing one's app listening", PATIENCE, || {
        let entry = std::fs::read_dir(&logs).ok()?.flatten().next()?;
        let text = std::fs::read_to_string(entry.path()).ok()?;
        text.contains("rouse-testapp listening").then_some(())
    });
    assert_eq!(containers_of(&bad_rev, true).len(), 1);
    let ready = eventually("the failing one reported as not ready", PATIENCE, || {
        let rev = p.get_json("revision", &bad_rev)?;
        let c = condition(&rev, "Ready")?.clone();
        let msg = c["message"].as_str()?;
        msg.contains("readiness probe has not passed yet")
            .then_some(c)
    });
    assert_eq!(ready["status"], "Unknown", "{ready}");
}

/// A container's exec startup probe runs inside it, before liveness: failing its threshold
/// restarts the container, and the revision says so with the command's output (the liveness
/// probe, which would fail at once, never runs).
#[test]
fn a_failing_exec_startup_probe_restarts_the_container_before_liveness_runs() {
    let Some(image) = test_image() else { return };
    let p = Platform::start();
    let name = unique("exec-unstarted");
    let extra = r#"          startupProbe:
            exec:
              command: ["/app", "--print", "not started on $(PORT)", "--exit-immediately", "1"]
            periodSeconds: 1
            failureThreshold: 2
          livenessProbe:
            exec:
              command: ["/app", "--exit-immediately", "1"]
            periodSeconds: 1
            failureThreshold: 1
"#;
    p.apply(&image_service(&name, &image, "", extra), &[]);
    let rev = format!("{name}-00001");
    let healthy = eventually("the revision reports the startup failure", PATIENCE, || {
        let r = p.get_json("revision", &rev)?;
        let c = condition(&r, "ContainerHealthy")?.clone();
        (c["status"] == "False").then_some(c)
    });
    let msg = healthy["message"].as_str().unwrap();
    assert!(
        msg.contains("startup probe exec")
            && msg.contains("failed 2 times in a row: exited with code 1")
            && msg.contains("not started on 8080")
            && !msg.contains("liveness"),
        "{msg}"
    );
}

/// A failing exec liveness probe restarts the container, and the revision (never Ready: its
/// exec readiness probe fails too) says why with the command's output from inside it.
#[test]
fn a_failing_exec_liveness_probe_restarts_the_container_saying_why() {
    let Some(image) = test_image() else { return };
    let p = Platform::start();
    let name = unique("exec-dead");
    let extra = r#"          readinessProbe:
            exec:
              command: ["/app", "--exit-immediately", "1"]
          livenessProbe:
            exec:
              command: ["/app", "--print", "dead on $(PORT)", "--exit-immediately", "1"]
            periodSeconds: 1
            failureThreshold: 1
"#;
    p.apply(&image_service(&name, &image, "", extra), &[]);
    let rev = format!("{name}-00001");
    let healthy = eventually(
        "the revision reports the liveness failure",
        PATIENCE,
        || {
            let r = p.get_json("revision", &rev)?;
            let c = condition(&r, "ContainerHealthy")?.clone();
            (c["status"] == "False").then_some(c)
        },
    );
    let msg = healthy["message"].as_str().unwrap();
    assert!(
        msg.contains("liveness probe exec")
            && msg.contains("exited with code 1")
            && msg.contains("dead on 8080"),
        "{msg}"
    );
}
