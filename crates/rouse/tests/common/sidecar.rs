//! A revision's pod on loopback: the test app and `rouse queue-proxy` in front of it, as
//! processes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use super::testapp_bin;

/// A child process killed when dropped.
pub struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test app listening on `port`.
pub fn start_app(port: u16) -> Killed {
    start_app_with(port, &[])
}

/// The test app listening on `port`, with more environment (`MESSAGE`, say).
pub fn start_app_with(port: u16, env: &[(&str, &str)]) -> Killed {
    start_app_with_args(port, &[], env)
}

/// The test app listening on `port`, with arguments (`--h2c`, say) and more environment.
pub fn start_app_with_args(port: u16, args: &[&str], env: &[(&str, &str)]) -> Killed {
    Killed(
        Command::new(testapp_bin())
            .env("PORT", port.to_string())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("test app starts"),
    )
}

/// Knative's sidecar environment for the test app on `user_port`, every port ephemeral on
/// 127.0.0.1 (override `ROUSE_QUEUE_*` to change that).
pub fn sidecar_env(user_port: u16) -> Vec<(&'static str, String)> {
    [
        ("SERVING_NAMESPACE", "default"),
        ("SERVING_SERVICE", "hello"),
        ("SERVING_CONFIGURATION", "hello"),
        ("SERVING_REVISION", "hello-00001"),
        ("SERVING_POD", "hello-00001-deployment-x1"),
        ("SERVING_POD_IP", "127.0.0.1"),
        ("QUEUE_SERVING_PORT", "0"),
        ("QUEUE_SERVING_TLS_PORT", "8112"),
        ("CONTAINER_CONCURRENCY", "0"),
        ("REVISION_TIMEOUT_SECONDS", "300"),
        ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "0"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "0"),
        ("SERVING_LOGGING_CONFIG", ""),
        ("SERVING_LOGGING_LEVEL", ""),
        (
            "SERVING_READINESS_PROBE",
            r#"{"tcpSocket":{"port":0},"successThreshold":1}"#,
        ),
        ("ENABLE_HTTP2_AUTO_DETECTION", "false"),
        ("ROUSE_QUEUE_BIND", "127.0.0.1"),
        ("ROUSE_QUEUE_H2C_PORT", "0"),
        ("ROUSE_QUEUE_ADMIN_PORT", "0"),
        ("ROUSE_QUEUE_METRICS_PORT", "0"),
        ("ROUSE_QUEUE_USER_METRICS_PORT", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .chain([("USER_PORT", user_port.to_string())])
    .collect()
}

/// A running sidecar and the addresses it printed.
pub struct Sidecar {
    /// The `rouse queue-proxy` process.
    pub child: Child,
    addrs: HashMap<String, SocketAddr>,
}

impl Sidecar {
    pub fn start(env: &[(&str, String)]) -> Sidecar {
        // The sidecar's lean binary (`rouse-queue-proxy`, the same code as `rouse queue-proxy`).
        let mut child = Command::new(env!("CARGO_BIN_EXE_rouse-queue-proxy"))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rouse queue-proxy starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addrs = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect::<HashMap<_, SocketAddr>>();
        assert!(addrs.contains_key("serving"), "first line: {line:?}");
        Sidecar { child, addrs }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
