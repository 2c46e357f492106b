//! `rouse autoscaler simulate` through the real binary: the CLI's flags reach the simulator and
//! its output (or its refusal) comes back on stdout (or stderr with a non-zero exit).

use std::process::Command;

fn rouse(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rouse"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn trace(dir: &tempfile::TempDir) -> String {
    let mut text = String::from("second,concurrency\n");
    for s in 0..30 {
        text.push_str(&format!("{s},{}\n", if s < 10 { 1 } else { 25 }));
    }
    let p = dir.path().join("trace.csv");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn simulate_prints_csv_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let t = trace(&dir);
    let (code, out, err) = rouse(&[
        "autoscaler",
        "simulate",
        "--trace",
        &t,
        "--annotation",
        "autoscaling.knative.dev/target=10",
        "--container-concurrency",
        "10",
        "--startup-delay",
        "2s",
    ]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("second,stable,panic,desired,applied,ready,panic_mode,ebc,mode")
    );
    // Ticks every 2 s up to the last second; 25 concurrent requests at a target of 10 and
    // Knative's 70 % utilization need ceil(25 / 7) = 4 instances.
    let last: Vec<&str> = lines.last().unwrap().split(',').collect();
    assert_eq!(last[0], "28");
    assert_eq!(last[4], "4", "{out}");

    let (code, out, err) = rouse(&["autoscaler", "simulate", "--trace", &t, "--output", "svg"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim_start().starts_with("<svg"), "{out}");
}

#[test]
fn simulate_refusals_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let t = trace(&dir);
    let (code, _, err) = rouse(&[
        "autoscaler",
        "simulate",
        "--trace",
        &t,
        "--annotation",
        "autoscaling.knative.dev/targett=10",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown annotation \"autoscaling.knative.dev/targett\""),
        "{err}"
    );
    let (code, _, err) = rouse(&[
        "autoscaler",
        "simulate",
        "--trace",
        "/nonexistent/trace.csv",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/trace.csv"), "{err}");
    let (code, _, err) = rouse(&[
        "autoscaler",
        "simulate",
        "--trace",
        &t,
        "--startup-delay",
        "2",
    ]);
    assert_eq!(code, 2, "{err}");
}
