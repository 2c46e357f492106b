//! End to end: the real kubectl against the real `rouse serve --tls`, through the kubeconfig
//! `rouse kubeconfig` prints: discovery, server-side tables, watch, wait, client-side and
//! server-side apply, patches, explain, dry runs, namespaces and delete. Skipped (with the
//! reason printed) where kubectl is not installed.

mod common;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn kubectl_bin() -> Option<PathBuf> {
    ["/usr/bin/kubectl", "/usr/local/bin/kubectl"]
        .into_iter()
        .map(PathBuf::from)
        .find(|k| k.exists())
}

/// kubectl with a kubeconfig for `p`, its cache in a HOME of its own.
struct Kubectl {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Kubectl {
    fn new(bin: PathBuf, p: &Platform) -> Kubectl {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("kubeconfig"), p.cli_ok(&["kubeconfig"])).unwrap();
        Kubectl { bin, home }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(self.home.path().join("kubeconfig"))
            .args(args)
            .env("HOME", self.home.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        let file = self.home.path().join("stdin.yaml");
        std::fs::write(&file, input).unwrap();
        let mut c = self.command(args);
        c.stdin(std::fs::File::open(&file).unwrap());
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn kubectl_drives_rouse() {
    let Some(bin) = kubectl_bin() else {
        println!("SKIPPED: kubectl is not installed (/usr/bin/kubectl, /usr/local/bin/kubectl)");
        return;
    };
    let p = Platform::start_with(&["--tls"]);
    let k = Kubectl::new(bin, &p);

    // Discovery: Knative's names and short names.
    let resources = k.ok(&["api-resources"]);
    let ksvc = resources
        .lines()
        .find(|l| l.starts_with("services "))
        .unwrap_or_else(|| panic!("{resources}"));
    assert_eq!(
        words(ksvc),
        [
            "services",
            "kservice,ksvc",
            "serving.knative.dev/v1",
            "true",
            "Service"
        ]
    );
    assert!(resources.contains("podautoscalers"), "{resources}");
    assert!(
        k.ok(&["version", "-o", "json"])
            .contains("\"major\": \"1\"")
    );

    // explain, from the schemas generated from the Rust types.
    let explain = k.ok(&["explain", "ksvc.spec.template"]);
    assert!(explain.contains("KIND:       Service"), "{explain}");
    assert!(explain.contains("FIELDS:"), "{explain}");

    // A watch started before the Service exists sees it become Ready.
    let mut watcher = k
        .command(&["get", "ksvc", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watched = Arc::new(Mutex::new(String::new()));
    let mut out = watcher.stdout.take().unwrap();
    let sink = watched.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });

    // Client-side apply: create, then a changed manifest makes a new revision.
    let marker = unique_marker("kubectl");
    let manifest = service_yaml("kube", &marker, &[]);
    let out = k.run_stdin(&["apply", "-f", "-"], &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("service.serving.knative.dev/kube created")
    );
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "ksvc/kube",
        "--timeout=180s",
    ]);
    eventually("the watch shows Ready", Duration::from_secs(30), || {
        let w = watched.lock().unwrap();
        w.lines()
            .any(|l| l.starts_with("MODIFIED") && words(l).get(5).is_some_and(|r| r == "True"))
            .then_some(())
    });
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    reader.join().unwrap();

    // Server-side printing: kubectl's table and `rouse get` agree on the columns and values.
    let wide = k.ok(&["get", "ksvc", "-o", "wide"]);
    let ours = p.cli_ok(&["get", "ksvc"]);
    let (kh, oh) = (wide.lines().next().unwrap(), ours.lines().next().unwrap());
    assert_eq!(words(kh), words(oh), "kubectl:\n{wide}\nrouse:\n{ours}");
    let row = words(wide.lines().nth(1).unwrap());
    assert_eq!(row[0], "kube");
    assert_eq!(row[2], "kube-00001");
    assert_eq!(row[4], "True");

    let changed = service_yaml("kube", &marker, &[("EXTRA", "1")]);
    let out = k.run_stdin(&["apply", "-f", "-"], &changed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configured"));
    eventually("a second revision", Duration::from_secs(60), || {
        k.ok(&["get", "rev", "-o", "name"])
            .contains("revision.serving.knative.dev/kube-00002")
            .then_some(())
    });

    // Merge and JSON patches; label selectors.
    k.ok(&[
        "patch",
        "ksvc",
        "kube",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"team":"a"}}}"#,
    ]);
    k.ok(&[
        "patch",
        "ksvc",
        "kube",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/tier","value":"web"}]"#,
    ]);
    assert_eq!(
        k.ok(&["get", "ksvc", "-l", "team=a,tier=web", "-o", "name"])
            .trim(),
        "service.serving.knative.dev/kube"
    );
    assert!(
        k.ok(&["get", "ksvc", "-l", "team=b", "-o", "name"])
            .trim()
            .is_empty()
    );

    // Server-side apply: a second manager conflicts on a field the first owns, unless forced.
    let ssa = |team: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: ssa\n  labels:\n    team: {team}\nspec:\n  template:\n    spec:\n      containers:\n        - command: [\"/bin/sleep\", \"1000\"]\n"
        )
    };
    let out = k.run_stdin(&["apply", "--server-side", "-f", "-"], &ssa("a"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Re-applying the same manifest (the server defaulted more than it says) is no conflict.
    let out = k.run_stdin(
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        &ssa("a"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = k.run_stdin(
        &["apply", "--server-side", "--field-manager=third", "-f", "-"],
        &ssa("b"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict with \"kubectl\": .metadata.labels.team"),
        "{err}"
    );
    let out = k.run_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=third",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &ssa("b"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        k.ok(&[
            "get",
            "ksvc",
            "ssa",
            "-o",
            "jsonpath={.metadata.labels.team}"
        ]),
        "b"
    );
    let managers = k.ok(&[
        "get",
        "ksvc",
        "ssa",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
        "--show-managed-fields",
    ]);
    assert!(managers.contains("third"), "{managers}");

    // A server dry run stores nothing; generateName names a new object.
    let out = k.run_stdin(
        &["create", "--dry-run=server", "-f", "-"],
        &ssa("c").replace("name: ssa", "name: dry"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!k.run(&["get", "ksvc", "dry"]).status.success());
    let made = k.run_stdin(
        &["create", "-o", "name", "-f", "-"],
        &ssa("c").replace("name: ssa", "generateName: gen-"),
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(String::from_utf8_lossy(&made.stdout).starts_with("service.serving.knative.dev/gen-"));

    // Validation errors name the field, as kubectl prints Kubernetes' causes.
    let bad = ssa("c").replace("name: ssa", "name: bad")
        + "  traffic:\n    - latestRevision: true\n      percent: 90\n";
    let out = k.run_stdin(&["apply", "-f", "-"], &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is invalid") && err.contains("spec.traffic"),
        "{err}"
    );

    // Knative's ConfigMaps: listed, patched, edited and replaced, validated as `--config` is, and
    // in effect for the next write without a restart.
    let cms = k.ok(&["get", "cm", "-n", "knative-serving", "-o", "name"]);
    assert!(cms.contains("configmap/config-defaults"), "{cms}");
    k.ok(&[
        "patch",
        "cm",
        "config-defaults",
        "-n",
        "knative-serving",
        "--type=merge",
        "-p",
        r#"{"data":{"revision-timeout-seconds":"77"}}"#,
    ]);
    let edited = k
        .command(&["edit", "cm", "config-defaults", "-n", "knative-serving"])
        .env("KUBE_EDITOR", "sed -i s/\"77\"/\"123\"/")
        .output()
        .unwrap();
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    let data = k.ok(&[
        "get",
        "cm",
        "config-defaults",
        "-n",
        "knative-serving",
        "-o",
        "jsonpath={.data}",
    ]);
    assert_eq!(data, r#"{"revision-timeout-seconds":"123"}"#);
    let mut cm: serde_json::Value = serde_json::from_str(&k.ok(&[
        "get",
        "cm",
        "config-defaults",
        "-n",
        "knative-serving",
        "-o",
        "json",
    ]))
    .unwrap();
    cm["data"]["revision-timeout-seconds"] = "abc".into();
    let out = k.run_stdin(&["replace", "-f", "-"], &cm.to_string());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data[revision-timeout-seconds]: invalid integer"),
        "{err}"
    );
    let out = k.run_stdin(
        &["apply", "-f", "-"],
        &ssa("c").replace("name: ssa", "name: timed"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        k.ok(&[
            "get",
            "ksvc",
            "timed",
            "-o",
            "jsonpath={.spec.template.spec.timeoutSeconds}"
        ]),
        "123"
    );

    // Namespaces; delete.
    let namespaces = words(&k.ok(&["get", "ns", "-o", "name"]));
    assert!(namespaces.contains(&"namespace/default".to_string()));
    assert!(namespaces.contains(&"namespace/knative-serving".to_string()));
    assert!(k.ok(&["delete", "ksvc", "ssa"]).contains("deleted"));
    let gone = k.run(&["get", "ksvc", "ssa"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
}

/// A Service that never needs to get ready, in `ns`, labelled `tier`.
fn idle_service(name: &str, ns: &str, tier: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    tier: {tier}\nspec:\n  template:\n    spec:\n      containers:\n        - command: [\"/bin/sleep\", \"1000\"]\n"
    )
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn kubectl_subresources_selectors_deletion_and_namespaces() {
    let Some(bin) = kubectl_bin() else {
        println!("SKIPPED: kubectl is not installed (/usr/bin/kubectl, /usr/local/bin/kubectl)");
        return;
    };
    let p = Platform::start_with(&["--tls"]);
    let k = Kubectl::new(bin, &p);

    // Aggregated discovery: kubectl learns every group from /api and /apis alone.
    let out = k.run(&["api-resources", "-v=6"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let log = stderr_of(&out);
    assert!(log.contains("/apis?timeout"), "{log}");
    assert!(!log.contains("/apis/serving.knative.dev/v1?"), "{log}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("kservice,ksvc"));

    // Namespaces: created by kubectl (protobuf) and by a manifest, with objects in them.
    assert!(
        k.ok(&["create", "namespace", "demo"])
            .contains("namespace/demo created")
    );
    let out = k.run(&["create", "namespace", "default"]);
    assert!(
        stderr_of(&out).contains("AlreadyExists"),
        "{}",
        stderr_of(&out)
    );
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    team: a\n---\n{}---\n{}---\n{}",
        idle_service("web", "shop", "web"),
        idle_service("db", "shop", "db"),
        idle_service("cache", "shop", "cache"),
    );
    let out = k.run_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = k.run_stdin(&["apply", "-f", "-"], &manifest);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("namespace/shop unchanged"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    k.ok(&["label", "ns", "shop", "env=dev"]);
    assert_eq!(
        k.ok(&["get", "ns", "shop", "-o", "jsonpath={.metadata.labels.env}"]),
        "dev"
    );
    let namespaces = words(&k.ok(&["get", "ns", "-o", "name"]));
    for ns in ["default", "demo", "knative-serving", "shop"] {
        assert!(
            namespaces.contains(&format!("namespace/{ns}")),
            "{namespaces:?}"
        );
    }

    // Set-based label selectors and field selectors.
    let names = |args: &[&str]| {
        let mut all = vec!["get", "ksvc", "-n", "shop", "-o", "name"];
        all.extend_from_slice(args);
        let mut got = words(&k.ok(&all));
        got.sort();
        got
    };
    let svc = |n: &str| format!("service.serving.knative.dev/{n}");
    assert_eq!(names(&["-l", "tier in (web,db)"]), [svc("db"), svc("web")]);
    assert_eq!(names(&["-l", "tier notin (web,db)"]), [svc("cache")]);
    assert_eq!(names(&["-l", "tier,!missing"]).len(), 3);
    assert_eq!(
        names(&["--field-selector", "metadata.name=db"]),
        [svc("db")]
    );
    assert_eq!(
        names(&[
            "--field-selector",
            "metadata.name!=db",
            "-l",
            "tier in (db,web)"
        ]),
        [svc("web")]
    );

    // The status subresource: read and written on its own; the object's writes ignore status.
    assert_eq!(
        k.ok(&[
            "get",
            "ksvc",
            "web",
            "-n",
            "shop",
            "--subresource=status",
            "-o",
            "name"
        ])
        .trim(),
        svc("web")
    );
    let table = k.ok(&["get", "ksvc", "web", "-n", "shop", "--subresource=status"]);
    assert!(table.starts_with("NAME "), "{table}");
    let written = k.ok(&[
        "patch",
        "ksvc",
        "web",
        "-n",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"observedGeneration":99},"spec":{"traffic":[]}}"#,
        "-o",
        "jsonpath={.status.observedGeneration} {.metadata.generation}",
    ]);
    assert_eq!(written, "99 1");
    let out = k.run(&[
        "patch",
        "ksvc",
        "web",
        "-n",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"observedGeneration":"many"}}"#,
    ]);
    assert!(
        stderr_of(&out).contains("observedGeneration"),
        "{}",
        stderr_of(&out)
    );
    let ignored = k.ok(&[
        "patch",
        "ksvc",
        "web",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"status":{"url":"http://elsewhere"}}"#,
        "-o",
        "jsonpath={.status.url}",
    ]);
    assert_ne!(ignored, "http://elsewhere");
    // Knative's CRDs have no scale subresource.
    let out = k.run(&["scale", "ksvc", "web", "-n", "shop", "--replicas=2"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("NotFound") || stderr_of(&out).contains("not found"),
        "{}",
        stderr_of(&out)
    );

    // Finalizers: a delete marks the object; clearing the last finalizer removes it and what
    // it owns.
    k.ok(&[
        "patch",
        "ksvc",
        "web",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    eventually("web's Route", Duration::from_secs(30), || {
        k.run(&["get", "rt", "web", "-n", "shop"])
            .status
            .success()
            .then_some(())
    });
    k.ok(&["delete", "ksvc", "web", "-n", "shop", "--wait=false"]);
    let marked = k.ok(&[
        "get",
        "ksvc",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!marked.is_empty());
    k.ok(&["get", "rt", "web", "-n", "shop"]);
    let out = k.run(&[
        "patch",
        "ksvc",
        "web",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold","example.com/more"]}}"#,
    ]);
    assert!(
        stderr_of(&out).contains("no new finalizers"),
        "{}",
        stderr_of(&out)
    );
    k.ok(&[
        "patch",
        "ksvc",
        "web",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    for kind in ["ksvc", "rt", "cfg"] {
        let gone = k.run(&["get", kind, "web", "-n", "shop"]);
        assert!(
            stderr_of(&gone).contains("NotFound"),
            "{kind}: {}",
            stderr_of(&gone)
        );
    }

    // Orphan keeps what the Service owns, unowned; foreground takes the owned objects first.
    eventually("db's Configuration", Duration::from_secs(30), || {
        k.run(&["get", "cfg", "db", "-n", "shop"])
            .status
            .success()
            .then_some(())
    });
    k.ok(&["delete", "ksvc", "db", "-n", "shop", "--cascade=orphan"]);
    assert_eq!(
        k.ok(&[
            "get",
            "cfg",
            "db",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.ownerReferences}"
        ]),
        ""
    );
    eventually("db's Revision", Duration::from_secs(30), || {
        k.run(&["get", "rev", "db-00001", "-n", "shop"])
            .status
            .success()
            .then_some(())
    });
    k.ok(&["delete", "cfg", "db", "-n", "shop", "--cascade=foreground"]);
    let gone = k.run(&["get", "rev", "db-00001", "-n", "shop"]);
    assert!(
        stderr_of(&gone).contains("NotFound"),
        "{}",
        stderr_of(&gone)
    );
    k.ok(&["delete", "rt", "db", "-n", "shop"]);

    // 405 for a verb a resource lacks, as a Status kubectl prints.
    let out = k.run(&["create", "configmap", "extra", "-n", "knative-serving"]);
    assert!(
        stderr_of(&out).contains("POST is not allowed on the configmap list"),
        "{}",
        stderr_of(&out)
    );
    eventually("cache's PodAutoscaler", Duration::from_secs(30), || {
        k.run(&["get", "kpa", "cache-00001", "-n", "shop"])
            .status
            .success()
            .then_some(())
    });
    let out = k.run(&["delete", "kpa", "cache-00001", "-n", "shop"]);
    let err = stderr_of(&out);
    assert!(
        err.contains("MethodNotAllowed") && err.contains("read-only"),
        "{err}"
    );

    // Deleting a namespace deletes what is in it; while a finalizer holds an object the
    // namespace is Terminating and takes nothing new.
    k.ok(&[
        "patch",
        "ksvc",
        "cache",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    k.ok(&["delete", "namespace", "shop", "--wait=false"]);
    assert_eq!(
        k.ok(&["get", "ns", "shop", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    let out = k.run_stdin(&["apply", "-f", "-"], &idle_service("late", "shop", "web"));
    assert!(
        stderr_of(&out).contains("being terminated"),
        "{}",
        stderr_of(&out)
    );
    k.ok(&[
        "patch",
        "ksvc",
        "cache",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let gone = k.run(&["get", "ns", "shop"]);
    assert!(
        stderr_of(&gone).contains("NotFound"),
        "{}",
        stderr_of(&gone)
    );
    assert!(
        k.ok(&["get", "ksvc", "-n", "shop", "-o", "name"])
            .trim()
            .is_empty()
    );
    let out = k.run(&["delete", "namespace", "default"]);
    assert!(stderr_of(&out).contains("Forbidden"), "{}", stderr_of(&out));
    k.ok(&["delete", "namespace", "demo"]);
}
