//! kubectl for the tests on a real cluster (`e2e_kube`, `conformance_kube`): one command with
//! a kubeconfig, and a kubeconfig acting as one of the install's ServiceAccounts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Runs kubectl with the kubeconfig `kc` (and `stdin` as its input); whether it succeeded
/// and what it printed (stdout, then stderr).
pub fn kubectl(kc: impl AsRef<Path>, args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kc.as_ref())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs (is it on PATH?)");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Merges `data` (a JSON object; a `null` value removes the key) into the data of Knative's
/// ConfigMap `configmap` in `knative-serving`.
pub fn patch_config(kc: impl AsRef<Path>, configmap: &str, data: &str) -> (bool, String) {
    let patch = format!("{{\"data\":{data}}}");
    kubectl(
        kc,
        &[
            "patch",
            "configmap",
            "-n",
            "knative-serving",
            configmap,
            "--type",
            "merge",
            "-p",
            &patch,
        ],
        None,
    )
}

/// A kubeconfig like `admin`, written to `dir`, acting as the install's ServiceAccount
/// `account` in `knative-serving`, so a role run with it has the permissions the install
/// gives it.
pub fn impersonating(
    admin: impl AsRef<Path>,
    account: &str,
    dir: &Path,
) -> Result<PathBuf, String> {
    let (ok, out) = kubectl(
        admin,
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "json",
        ],
        None,
    );
    if !ok {
        return Err(format!("kubectl config view: {out}"));
    }
    let mut config: Value =
        serde_json::from_str(&out).map_err(|e| format!("kubeconfig as JSON: {e}"))?;
    config["users"][0]["user"]["as"] =
        format!("system:serviceaccount:knative-serving:{account}").into();
    let path = dir.join(format!("{account}.kubeconfig"));
    std::fs::write(&path, config.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
