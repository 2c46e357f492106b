//! Reading manifests for `apply`: files, directories (`*.yaml`, `*.yml`, `*.json`, sorted) and
//! stdin (`-`), each multi-document YAML or JSON, checked strictly before anything is sent.

use std::io::Read;
use std::path::{Path, PathBuf};

use rouse_api::Kind;
use rouse_api::decode::{decode_value, parse_documents};
use serde_json::Value;

/// One object read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Where it came from (a path, or `STDIN`).
    pub source: String,
    /// Its kind.
    pub kind: Kind,
    /// The object as written.
    pub value: Value,
}

/// Reads every object of `paths` in order. Any unreadable file, malformed document, unknown
/// kind or unknown field fails the whole read, so nothing is applied from a broken set.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Manifest>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("reading STDIN: {e}"))?;
            out.extend(parse("STDIN", &text)?);
        } else if p.is_dir() {
            for file in dir_files(p)? {
                out.extend(parse_file(&file)?);
            }
        } else {
            out.extend(parse_file(p)?);
        }
    }
    Ok(out)
}

/// The manifest files of a directory, by name.
fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("reading directory {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading directory {}: {e}", dir.display()))?
            .path();
        let is_manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if is_manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn parse_file(path: &Path) -> Result<Vec<Manifest>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut ms = parse(&path.display().to_string(), &text)?;
    if let Some(dir) = path.parent() {
        for m in &mut ms {
            resolve_commands(&mut m.value, dir);
        }
    }
    Ok(ms)
}

/// Makes a manifest work from any directory: a container `command` that is a relative path
/// (it has a `/`), in a container without `workingDir`, becomes absolute when it names a file
/// relative to the manifest's directory `dir`. Anything else is left for the runtime's rule
/// (a bare name on `PATH`; a relative path against `workingDir`, else `rouse serve`'s
/// directory).
pub fn resolve_commands(obj: &mut Value, dir: &Path) {
    for ptr in ["/spec/template/spec/containers", "/spec/containers"] {
        let Some(containers) = obj.pointer_mut(ptr).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let has_working_dir = c
                .get("workingDir")
                .and_then(Value::as_str)
                .is_some_and(|w| !w.is_empty());
            if has_working_dir {
                continue;
            }
            let Some(first) = c.pointer_mut("/command/0") else {
                continue;
            };
            let Some(cmd) = first.as_str() else { continue };
            let relative = Path::new(cmd);
            if relative.is_absolute() || !cmd.contains('/') {
                continue;
            }
            let candidate = dir.join(relative);
            if candidate.is_file()
                && let Ok(abs) = std::fs::canonicalize(&candidate)
            {
                *first = Value::String(abs.display().to_string());
            }
        }
    }
}

/// Parses one source's documents and checks each strictly (the server checks again).
pub fn parse(source: &str, text: &str) -> Result<Vec<Manifest>, String> {
    let docs = parse_documents(text).map_err(|e| format!("{source}: {e}"))?;
    docs.into_iter()
        .enumerate()
        .map(|(i, value)| {
            let obj = decode_value(i + 1, value.clone()).map_err(|e| format!("{source}: {e}"))?;
            Ok(Manifest {
                source: source.to_string(),
                kind: obj.kind(),
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  template:\n    spec:\n      containers:\n        - image: x\n";

    #[test]
    fn reads_multi_document_yaml_and_json() {
        let text = format!(
            "{SVC}---\n{}\n",
            r#"{"apiVersion":"serving.knative.dev/v1","kind":"Route","metadata":{"name":"r"},"spec":{}}"#
        );
        let ms = parse("x.yaml", &text).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].kind, Kind::Service);
        assert_eq!(ms[1].kind, Kind::Route);
        assert_eq!(ms[1].source, "x.yaml");
    }

    #[test]
    fn refuses_bad_documents_with_where() {
        let e = parse("x.yaml", "kind: [\n").unwrap_err();
        assert!(e.starts_with("x.yaml: document 1: malformed"), "{e}");
        let e = parse("x.yaml", &format!("{SVC}---\napiVersion: v1\nkind: Pod\n")).unwrap_err();
        assert!(e.contains("document 2") && e.contains("\"Pod\""), "{e}");
        let e = parse("x.yaml", &SVC.replace("- image", "- imag")).unwrap_err();
        assert!(e.ends_with("spec.template.spec.containers[0].imag"), "{e}");
    }

    #[test]
    fn relative_commands_resolve_against_the_manifest_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/app"), "").unwrap();
        let svc = SVC.replace(
            "- image: x",
            "- image: x\n          command: [\"./bin/app\", \"--flag\"]",
        );
        std::fs::write(dir.path().join("svc.yaml"), &svc).unwrap();
        let ms = load(&[dir.path().join("svc.yaml")]).unwrap();
        let cmd = &ms[0].value["spec"]["template"]["spec"]["containers"][0]["command"];
        let want = std::fs::canonicalize(dir.path().join("bin/app")).unwrap();
        assert_eq!(cmd[0], want.display().to_string());
        assert_eq!(cmd[1], "--flag");
        // Missing there, a bare name, or with a workingDir: left for the runtime.
        for (from, to) in [("./bin/app", "./bin/missing"), ("./bin/app", "python3")] {
            std::fs::write(dir.path().join("svc.yaml"), svc.replace(from, to)).unwrap();
            let ms = load(&[dir.path().join("svc.yaml")]).unwrap();
            assert_eq!(
                ms[0].value["spec"]["template"]["spec"]["containers"][0]["command"][0],
                to
            );
        }
        let with_wd = svc.replace("command:", "workingDir: /tmp\n          command:");
        std::fs::write(dir.path().join("svc.yaml"), with_wd).unwrap();
        let ms = load(&[dir.path().join("svc.yaml")]).unwrap();
        assert_eq!(
            ms[0].value["spec"]["template"]["spec"]["containers"][0]["command"][0],
            "./bin/app"
        );
    }

    #[test]
    fn directories_are_read_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yml"), SVC.replace("name: a", "name: b")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let ms = load(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<&str> = ms
            .iter()
            .map(|m| m.value["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let e = load(&[dir.path().join("missing.yaml")]).unwrap_err();
        assert!(e.contains("missing.yaml"), "{e}");
    }
}
