//! Turning a [`WorkloadSpec`] into the exact program, arguments, environment and directory of
//! one instance, the way Kubernetes would for a container.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rouse_queue::{ProbeAction, ProbeSpec};

use crate::spec::{Termination, WorkloadSpec};

/// Reason for a program that cannot be found or executed.
pub(crate) const REASON_MISSING: &str = "ContainerMissing";
/// Reason for any other failure to start.
pub(crate) const REASON_START: &str = "StartError";

/// One instance's launch, fully resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    /// The executable, as an absolute path when it came with a `/` or from `PATH`.
    pub program: PathBuf,
    /// `argv[0]` as the user wrote it.
    pub argv0: String,
    /// The remaining arguments, expanded.
    pub args: Vec<String>,
    /// The program's whole environment: the passed-through variables of the platform's
    /// ([`base_env`]), then the container's, `PORT` and `K_*` (each name once).
    pub env: Vec<(String, String)>,
    /// The directory to run in.
    pub cwd: Option<PathBuf>,
}

/// Why an instance cannot be launched.
pub(crate) fn start_failure(reason: &str, message: String) -> Termination {
    Termination {
        exit_code: None,
        signal: None,
        reason: reason.to_string(),
        message,
    }
}

/// `PATH` for a workload when `rouse serve` has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a workload gets from the platform's own environment: `PATH` (or [`DEFAULT_PATH`]),
/// `HOME`, `LANG`, `TZ` and the names in `pass` (each when set), and nothing else, so an
/// operator's secrets stay with Rouse.
pub fn base_env(pass: &[String]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let names = ["PATH", "HOME", "LANG", "TZ"]
        .into_iter()
        .chain(pass.iter().map(String::as_str));
    for name in names {
        if env.iter().any(|(k, _): &(String, String)| k == name) {
            continue;
        }
        match std::env::var(name) {
            Ok(v) => env.push((name.to_string(), v)),
            Err(_) if name == "PATH" => env.push((name.to_string(), DEFAULT_PATH.to_string())),
            Err(_) => {}
        }
    }
    env
}

/// `base`, then `vars` on top: each name once, a later value winning.
fn layered(base: &[(String, String)], vars: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::with_capacity(base.len() + vars.len());
    for (k, v) in base.iter().chain(vars) {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// The variables one instance listening on `port` declares: the container's, then `PORT`
/// and the `K_*` ones (what `$(VAR)` references expand from).
pub(crate) fn instance_env(spec: &WorkloadSpec, port: u16) -> Vec<(String, String)> {
    let mut env = spec.env.clone();
    env.push(("PORT".into(), port.to_string()));
    env.push(("K_REVISION".into(), spec.revision.clone()));
    env.push(("K_CONFIGURATION".into(), spec.configuration.clone()));
    env.push(("K_SERVICE".into(), spec.service.clone()));
    env
}

/// A probe as one instance listening on `port` runs it: an exec probe gets the instance's
/// environment (then its own variables) and working directory (unless it names one), its
/// `$(VAR)` references expanded and its program found the way the instance's is (left as
/// written when it cannot be, so the probe says why). Other probes are unchanged (they target
/// the instance's port whatever port they name).
pub(crate) fn instance_probe(
    probe: &ProbeSpec,
    spec: &WorkloadSpec,
    port: u16,
    base: &[(String, String)],
) -> ProbeSpec {
    let ProbeAction::Exec {
        command,
        env: own_env,
        working_dir: own_dir,
    } = &probe.action
    else {
        return probe.clone();
    };
    let mut declared = instance_env(spec, port);
    declared.extend(own_env.iter().cloned());
    let vars: HashMap<&str, &str> = declared
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut command: Vec<String> = command.iter().map(|a| expand(a, &vars)).collect();
    let env = layered(base, &declared);
    let here = std::env::current_dir().unwrap_or_default();
    let working_dir = own_dir
        .as_ref()
        .or(spec.working_dir.as_ref())
        .map(|d| here.join(d));
    if let Some(program) = command.first_mut() {
        let path_var = path_of(&env);
        if let Ok(found) = resolve(program, working_dir.as_deref().unwrap_or(&here), path_var) {
            *program = found.display().to_string();
        }
    }
    ProbeSpec {
        action: ProbeAction::Exec {
            command,
            env,
            working_dir,
        },
        ..probe.clone()
    }
}

/// The `PATH` of an environment.
fn path_of(env: &[(String, String)]) -> Option<OsString> {
    env.iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| OsString::from(v))
}

/// Plans the launch of one instance listening on `port`, its environment on top of `base`
/// (see [`base_env`]).
pub(crate) fn plan(
    spec: &WorkloadSpec,
    port: u16,
    base: &[(String, String)],
) -> Result<Launch, Termination> {
    let declared = instance_env(spec, port);
    let vars: HashMap<&str, &str> = declared
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut argv = spec
        .command
        .iter()
        .chain(&spec.args)
        .map(|a| expand(a, &vars));
    let Some(argv0) = argv.next() else {
        return Err(start_failure(REASON_START, "no command to run".into()));
    };
    let args = argv.collect();

    let here = std::env::current_dir()
        .map_err(|e| start_failure(REASON_START, format!("current directory: {e}")))?;
    let cwd = match &spec.working_dir {
        Some(dir) => {
            let dir = here.join(dir);
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => Some(dir),
                Ok(_) => {
                    return Err(start_failure(
                        REASON_START,
                        format!("working directory {}: not a directory", dir.display()),
                    ));
                }
                Err(e) => {
                    return Err(start_failure(
                        REASON_START,
                        format!("working directory {}: {e}", dir.display()),
                    ));
                }
            }
        }
        None => None,
    };
    let env = layered(base, &declared);
    let program = resolve(&argv0, cwd.as_deref().unwrap_or(&here), path_of(&env))?;
    Ok(Launch {
        program,
        argv0,
        args,
        env,
        cwd,
    })
}

/// Finds the program: a name with a `/` is a path (relative ones against `dir`); a bare name
/// is searched in `PATH`.
fn resolve(name: &str, dir: &Path, path_var: Option<OsString>) -> Result<PathBuf, Termination> {
    if name.contains('/') {
        let path = dir.join(name);
        return match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Err(start_failure(
                REASON_MISSING,
                format!("program {}: is a directory", path.display()),
            )),
            Ok(_) => Ok(path),
            Err(e) => Err(start_failure(
                REASON_MISSING,
                format!("program {}: {e}", path.display()),
            )),
        };
    }
    let found = path_var.as_ref().and_then(|p| {
        std::env::split_paths(p)
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| dir.join(d).join(name))
            .find(|c| {
                std::fs::metadata(c)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    });
    found.ok_or_else(|| {
        start_failure(
            REASON_MISSING,
            format!("executable file {name:?} not found in $PATH"),
        )
    })
}

/// Expands `$(VAR)` from `vars` as Kubernetes does: `$$` is a literal `$`, and a reference to
/// an unknown variable (or an unclosed one) stays as written.
pub(crate) fn expand(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::QueueTemplate;
    use std::time::Duration;

    /// [`super::plan`] on the test process's own base environment.
    fn plan(s: &WorkloadSpec, port: u16) -> Result<Launch, Termination> {
        super::plan(s, port, &base_env(&[]))
    }

    /// [`super::instance_probe`] on the test process's own base environment.
    fn instance_probe(p: &ProbeSpec, s: &WorkloadSpec, port: u16) -> ProbeSpec {
        super::instance_probe(p, s, port, &base_env(&[]))
    }

    fn spec(command: &[&str], args: &[&str]) -> WorkloadSpec {
        WorkloadSpec {
            namespace: "default".into(),
            revision: "hello-00001".into(),
            configuration: "hello".into(),
            service: "hello".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("GREETING".into(), "hi".into())],
            working_dir: None,
            queue: QueueTemplate {
                h2c: false,
                container_concurrency: 0,
                readiness: Default::default(),
                revision: "hello-00001".into(),
                namespace: "default".into(),
                timeout: None,
                response_start_timeout: None,
                idle_timeout: None,
                request_body_buffer: rouse_http::DEFAULT_REQUEST_BODY_BUFFER,
            },
            drain_timeout: Duration::from_secs(1),
            liveness: None,
            startup: None,
            container: None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars: HashMap<&str, &str> = [("PORT", "8080"), ("A", "x")].into_iter().collect();
        assert_eq!(expand("--port=$(PORT)", &vars), "--port=8080");
        assert_eq!(expand("$(A)$(A)/$(PORT)", &vars), "xx/8080");
        assert_eq!(expand("$(MISSING)", &vars), "$(MISSING)");
        assert_eq!(expand("$$(PORT)", &vars), "$(PORT)");
        assert_eq!(expand("cost $5 $", &vars), "cost $5 $");
        assert_eq!(expand("$(PORT", &vars), "$(PORT");
        assert_eq!(expand("no refs", &vars), "no refs");
    }

    #[test]
    fn plan_sets_env_expands_args_and_finds_programs_in_path() {
        let l = plan(
            &spec(&["sh", "-c"], &["echo $(GREETING) $(PORT) $(K_SERVICE)"]),
            9000,
        )
        .unwrap();
        assert!(
            l.program.is_absolute() && l.program.ends_with("sh"),
            "{l:?}"
        );
        assert_eq!(l.argv0, "sh");
        assert_eq!(l.args, vec!["-c", "echo hi 9000 hello"]);
        for kv in [
            ("PORT", "9000"),
            ("K_REVISION", "hello-00001"),
            ("K_CONFIGURATION", "hello"),
            ("K_SERVICE", "hello"),
            ("GREETING", "hi"),
        ] {
            assert!(
                l.env.contains(&(kv.0.into(), kv.1.into())),
                "{kv:?} in {:?}",
                l.env
            );
        }
    }

    #[test]
    fn the_environment_is_the_base_then_the_declared_variables() {
        // Cargo sets CARGO_* for this test process: none of it reaches a workload.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        let base = vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("HOME".to_string(), "/root".to_string()),
            ("GREETING".to_string(), "from the platform".to_string()),
        ];
        let l = super::plan(&spec(&["sh"], &[]), 7, &base).unwrap();
        let names: Vec<&str> = l.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "GREETING",
                "PORT",
                "K_REVISION",
                "K_CONFIGURATION",
                "K_SERVICE"
            ]
        );
        assert!(
            l.env.contains(&("GREETING".into(), "hi".into())),
            "{:?}",
            l.env
        );

        let own = base_env(&[
            "CARGO_PKG_NAME".to_string(),
            "NOT_SET_ANYWHERE_ROUSE".into(),
        ]);
        let names: Vec<&str> = own.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            names.contains(&"PATH") && names.contains(&"CARGO_PKG_NAME"),
            "{names:?}"
        );
        assert!(!names.contains(&"NOT_SET_ANYWHERE_ROUSE"), "{names:?}");
        assert!(!base_env(&[]).iter().any(|(k, _)| k.starts_with("CARGO")));
    }

    #[test]
    fn relative_paths_resolve_against_the_working_dir() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("bin/app");
        std::fs::create_dir_all(prog.parent().unwrap()).unwrap();
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        let mut s = spec(&["./bin/app"], &[]);
        s.working_dir = Some(dir.path().to_path_buf());
        let l = plan(&s, 1).unwrap();
        assert_eq!(l.program, dir.path().join("./bin/app"));
        assert_eq!(l.cwd.as_deref(), Some(dir.path()));
    }

    #[test]
    fn missing_programs_and_dirs_are_clear_failures() {
        let t = plan(&spec(&["no-such-program-rouse"], &[]), 1).unwrap_err();
        assert_eq!(t.reason, "ContainerMissing");
        assert_eq!(
            t.message,
            "executable file \"no-such-program-rouse\" not found in $PATH"
        );

        let t = plan(&spec(&["./nope/app"], &[]), 1).unwrap_err();
        assert_eq!(t.reason, "ContainerMissing");
        assert!(
            t.message.contains("No such file or directory"),
            "{}",
            t.message
        );

        let mut s = spec(&["sh"], &[]);
        s.working_dir = Some("/no/such/dir".into());
        let t = plan(&s, 1).unwrap_err();
        assert_eq!(t.reason, "StartError");
        assert!(
            t.message.starts_with("working directory /no/such/dir"),
            "{}",
            t.message
        );

        let t = plan(&spec(&[], &[]), 1).unwrap_err();
        assert_eq!(t.message, "no command to run");
    }

    #[test]
    fn path_from_the_container_env_wins() {
        let mut s = spec(&["sh"], &[]);
        s.env.push(("PATH".into(), "/definitely/not/here".into()));
        let t = plan(&s, 1).unwrap_err();
        assert_eq!(t.reason, "ContainerMissing");
    }

    #[test]
    fn exec_probes_get_the_instance_env_dir_and_program() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(&["sh"], &[]);
        s.working_dir = Some(dir.path().to_path_buf());
        let probe = ProbeSpec {
            action: ProbeAction::Exec {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "test $(PORT) = $(GREETING)".into(),
                ],
                env: vec![("EXTRA".into(), "1".into())],
                working_dir: None,
            },
            period: Duration::from_secs(3),
            ..ProbeSpec::default()
        };
        let p = instance_probe(&probe, &s, 9000);
        assert_eq!(p.period, Duration::from_secs(3));
        let ProbeAction::Exec {
            command,
            env,
            working_dir,
        } = p.action
        else {
            panic!("not exec: {:?}", p.action);
        };
        assert!(Path::new(&command[0]).is_absolute(), "{command:?}");
        assert!(command[0].ends_with("/sh"), "{command:?}");
        assert_eq!(command[1..], ["-c", "test 9000 = hi"]);
        assert_eq!(working_dir.as_deref(), Some(dir.path()));
        for kv in [
            ("PORT", "9000"),
            ("K_SERVICE", "hello"),
            ("GREETING", "hi"),
            ("EXTRA", "1"),
        ] {
            assert!(
                env.contains(&(kv.0.into(), kv.1.into())),
                "{kv:?} in {env:?}"
            );
        }

        // A program that cannot be found stays as written; other probes are untouched.
        let missing = ProbeSpec {
            action: ProbeAction::Exec {
                command: vec!["no-such-probe-rouse".into()],
                env: vec![],
                working_dir: None,
            },
            ..ProbeSpec::default()
        };
        let p = instance_probe(&missing, &s, 1);
        assert!(
            matches!(&p.action, ProbeAction::Exec { command, .. } if command[0] == "no-such-probe-rouse")
        );
        let tcp = ProbeSpec::default();
        assert_eq!(instance_probe(&tcp, &s, 1), tcp);
    }
}
