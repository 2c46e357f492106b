//! `rouse controller`'s bad input through the real binary: a `--webhook-url` the API server
//! could not call is refused before anything starts, and a webhook port already taken ends
//! the process naming the flag (no cluster needed: the client connects lazily).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rouse(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rouse"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: these inputs must end the process at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rouse {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn a_webhook_url_must_be_https() {
    let (code, err) = rouse(&["controller", "--webhook-url", "http://127.0.0.1:8443"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--webhook-url"), "{err}");
    assert!(
        err.contains("the API server calls webhooks over https://"),
        "{err}"
    );
}

#[test]
fn a_taken_webhook_port_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\n\
         users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n\
         current-context: c\n",
    )
    .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = rouse(&[
        "controller",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--webhook-listen",
        &addr,
        "--health-listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&format!("--webhook-listen {addr}")), "{err}");
}
