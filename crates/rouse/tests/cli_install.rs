//! `rouse install` through the real binary: it prints exactly the manifests rouse-kube builds
//! (as one YAML stream) with the image asked for, and refuses a malformed image.

use std::process::Command;

use rouse_kube::install::{InstallOptions, manifests, render_yaml};

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

#[test]
fn install_prints_every_manifest_with_the_image() {
    let (code, out, err) = rouse(&["install", "--image", "example.org/rouse:v9"]);
    assert_eq!(code, 0, "stderr: {err}");
    let want = render_yaml(
        &manifests(&InstallOptions {
            image: "example.org/rouse:v9".into(),
        })
        .unwrap(),
    )
    .unwrap();
    assert_eq!(out, want);
    assert!(out.contains("image: example.org/rouse:v9"));
    assert!(out.contains("queue-sidecar-image: example.org/rouse:v9"));
    // The default image.
    let (code, out, _) = rouse(&["install"]);
    assert_eq!(code, 0);
    assert!(out.contains("image: rouse:dev"));
}

#[test]
fn install_refuses_a_malformed_image() {
    let (code, out, err) = rouse(&["install", "--image", "bad image"]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(
        err.contains("--image") && err.contains("bad image"),
        "{err}"
    );
}
