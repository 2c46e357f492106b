//! The exec probe: run a program, pass on exit code 0. Where it runs is a [`CommandRunner`]'s
//! choice: a process instance's probe runs on the host beside it, with its environment
//! ([`HostCommand`]); a container's runs inside the container, as the kubelet does.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;

use tokio::process::Command;

use super::ProbeFailure;

/// The most of a failing program's output kept in its failure.
const OUTPUT_TAIL: usize = 512;

/// One run of an exec probe's command: resolves when it ended (dropping it, at the probe's
/// timeout, abandons the run).
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ProbeFailure>> + Send + 'a>>;

/// How an exec probe's command is run: passes when it exits with code 0.
pub trait CommandRunner: Send + Sync + fmt::Debug {
    /// Runs `command` once with the variables `env` in `dir` (`None`: the runner's default).
    fn run<'a>(
        &'a self,
        command: &'a [String],
        env: &'a [(String, String)],
        dir: Option<&'a Path>,
    ) -> RunFuture<'a>;
}

/// Runs the command as a process on this machine, with exactly the environment it is given.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCommand;

impl CommandRunner for HostCommand {
    fn run<'a>(
        &'a self,
        command: &'a [String],
        env: &'a [(String, String)],
        dir: Option<&'a Path>,
    ) -> RunFuture<'a> {
        Box::pin(run(command, env, dir))
    }
}

/// Runs `command` once with exactly the environment `env` (the instance's). Dropping the
/// future (the probe's timeout) kills the program.
async fn run(
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
    Err(ProbeFailure::exited(out.status.code(), &text))
}

impl ProbeFailure {
    /// An exec probe's command ended with `code` (`None`: a signal), having printed `output`
    /// (of which the last 512 bytes are kept).
    pub fn exited(code: Option<i32>, output: &str) -> Self {
        ProbeFailure::Exit {
            code,
            output: tail(output.trim(), OUTPUT_TAIL).to_string(),
        }
    }
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
