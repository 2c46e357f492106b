//! The exec probe: run a program, pass on exit code 0. On Kubernetes the kubelet does this
//! inside the container; locally it runs beside the instance, with its environment.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::ProbeFailure;

/// The most of a failing program's output kept in its failure.
const OUTPUT_TAIL: usize = 512;

/// Runs `command` once with exactly the environment `env` (the instance's). Dropping the
/// future (the probe's timeout) kills the program.
pub(crate) async fn run(
    command: &[String],
    env: &[(String, String)],
    dir: Option<&Path>,
) -> Result<(), ProbeFailure> {
    let Some((program, args)) = command.split_first() else {
        return Err(ProbeFailure::Spawn {
            program: String::new(),
            reason: "the exec probe has no command".into(),
        });
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().await.map_err(|e| ProbeFailure::Spawn {
        program: program.clone(),
        reason: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(ProbeFailure::Exit {
        code: out.status.code(),
        output: tail(text.trim(), OUTPUT_TAIL).to_string(),
    })
}

/// The last `max` bytes of `s` (at a character boundary).
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut from = s.len() - max;
    while !s.is_char_boundary(from) {
        from += 1;
    }
    &s[from..]
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("abcdef", 2), "ef");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }
}
