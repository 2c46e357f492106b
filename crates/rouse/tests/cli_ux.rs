//! The newcomer's CLI papercuts, through the real binary without a platform: help texts, the
//! simulator's errors, typo suggestions and `serve` failing to bind before it writes anything.

use std::net::TcpListener;
use std::process::{Command, Output};

fn rouse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rouse"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("ROUSE_API")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn serve_and_simulate_help_list_only_their_own_flags() {
    for args in [
        &["serve", "--help"][..],
        &["autoscaler", "simulate", "--help"][..],
    ] {
        let out = rouse(args);
        assert!(out.status.success(), "{args:?}");
        let help = text(&out.stdout);
        assert!(!help.contains("--api <"), "{args:?} lists --api:\n{help}");
        assert!(!help.contains("--namespace"), "{args:?} lists -n:\n{help}");
    }
    for args in [&["get", "--help"][..], &["apply", "--help"][..]] {
        let help = text(&rouse(args).stdout);
        assert!(
            help.contains("--api") && help.contains("--namespace"),
            "{help}"
        );
    }
    let help = text(&rouse(&["autoscaler", "simulate", "--help"]).stdout);
    assert!(help.contains("second,concurrency"), "{help}");
    assert!(help.contains("examples/autoscaling"), "{help}");
}

#[test]
fn a_bad_trace_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(&app, "import os\nprint(1)\n").unwrap();
    let out = rouse(&["autoscaler", "simulate", "--trace", app.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.matches("bad header").count(), 1, "{err}");
    let missing = dir.path().join("missing.csv");
    let err = text(
        &rouse(&[
            "autoscaler",
            "simulate",
            "--trace",
            missing.to_str().unwrap(),
        ])
        .stderr,
    );
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[test]
fn a_typo_gets_a_suggestion_and_no_webhook_wording() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("svc.yaml");
    std::fs::write(
        &f,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  template:\n    spec:\n      containers:\n        - image: x\n          comand: [\"/bin/true\"]\n",
    )
    .unwrap();
    // The manifest is checked before anything is sent, so no API is needed.
    let out = rouse(&[
        "apply",
        "-f",
        f.to_str().unwrap(),
        "--api",
        "http://127.0.0.1:9",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("did you mean `command`?"), "{err}");
    assert!(!err.contains("admission webhook"), "{err}");
}

#[test]
fn serve_that_cannot_bind_writes_no_data_dir() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = rouse(&[
        "serve",
        "--listen",
        &addr,
        "--api-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot listen"), "{out:?}");
    assert!(!data.exists(), "the data dir was created");
}

#[test]
fn delete_by_file_needs_no_kind() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("svc.yaml");
    std::fs::write(
        &f,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  template:\n    spec:\n      containers:\n        - image: x\n",
    )
    .unwrap();
    // Nothing listens there: the command got past parsing and tried the API.
    let out = rouse(&[
        "delete",
        "-f",
        f.to_str().unwrap(),
        "--api",
        "http://127.0.0.1:9",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach the Rouse API"), "{err}");
}
