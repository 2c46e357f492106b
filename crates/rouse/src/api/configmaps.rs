//! Knative's ConfigMaps in namespace `knative-serving` (`config-defaults`,
//! `config-autoscaler`, `config-network`, `config-domain`, `config-gc`, `config-features`,
//! `config-observability`, `config-rouse`)
//! through the core API: readable, and writable (replace or patch) with the same validation
//! and messages as `--config`. A write that passes replaces the running config at once (the
//! API's defaulting, validation and limits, and the controller's reconcilers read it afresh);
//! `--config` seeds them at start-up. A written ConfigMap is kept in
//! `<data-dir>/configmaps/<name>.json` (written whole, then renamed into place) and wins over
//! `--config`'s map of the same name at the next start; removing the file goes back to
//! `--config`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use http::StatusCode;
use rouse_api::config::{CONFIGMAP_NAMES, Config};
use serde_json::{Value, json};

use super::status::ApiError;

/// The namespace Knative's ConfigMaps live in.
pub const NAMESPACE: &str = "knative-serving";

/// The ConfigMaps as last written, and the resourceVersion of the newest write.
#[derive(Debug)]
pub struct ConfigMaps {
    inner: Mutex<(BTreeMap<String, Value>, u64)>,
    /// Where written maps are kept across restarts (none: in memory only, as in tests).
    dir: Option<PathBuf>,
}

impl Default for ConfigMaps {
    fn default() -> Self {
        Self::seeded(&[])
    }
}

fn object(name: &str, data: Value, rv: u64) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "resourceVersion": rv.to_string(),
            "uid": format!("rouse-{name}"),
        },
        "data": data,
    })
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("configmaps \"{name}\" not found"),
    )
}

impl ConfigMaps {
    /// The ConfigMaps `--config`'s texts give (already validated at start-up); the others
    /// with no data (Knative's defaults).
    pub fn seeded(texts: &[String]) -> Self {
        let mut maps = BTreeMap::new();
        for name in CONFIGMAP_NAMES {
            maps.insert(name.to_string(), object(name, json!({}), 1));
        }
        for text in texts {
            for doc in rouse_api::decode::parse_documents(text).unwrap_or_default() {
                if let Some(name) = doc["metadata"]["name"].as_str()
                    && maps.contains_key(name)
                {
                    let data = doc.get("data").cloned().unwrap_or(json!({}));
                    maps.insert(name.to_string(), object(name, data, 1));
                }
            }
        }
        Self {
            inner: Mutex::new((maps, 1)),
            dir: None,
        }
    }

    /// Keeps written maps in `dir`, and lays the maps an earlier run wrote there over the
    /// seeded ones. Returns the maps and the config they make together.
    pub fn persisted_in(mut self, dir: &Path) -> anyhow::Result<(Self, Config)> {
        let mut maps = self.lock().0.clone();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "json"))
                    .collect();
                files.sort();
                for file in files {
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
                    let doc: Value = serde_json::from_str(&text)
                        .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", file.display()))?;
                    if let Some(name) = doc["metadata"]["name"].as_str()
                        && maps.contains_key(name)
                    {
                        let data = doc.get("data").cloned().unwrap_or(json!({}));
                        maps.insert(name.to_string(), object(name, data, 1));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("reading {}: {e}", dir.display()),
        }
        let texts: Vec<String> = maps.values().map(Value::to_string).collect();
        let config = Config::from_yaml_texts(&texts).map_err(|e| {
            anyhow::anyhow!(
                "invalid config (with the ConfigMaps kept in {}): {e}",
                dir.display()
            )
        })?;
        self.lock().0 = maps;
        self.dir = Some(dir.to_path_buf());
        Ok((self, config))
    }

    /// Writes one map to the persistence dir: whole to a temporary file, synced, then renamed.
    fn persist(&self, name: &str, stored: &Value) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{name}.json.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(stored.to_string().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{name}.json")))?;
        std::fs::File::open(dir)?.sync_all()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (BTreeMap<String, Value>, u64)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every ConfigMap in `namespace` (none outside `knative-serving`).
    pub fn list(&self, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let g = self.lock();
        if namespace.is_some_and(|ns| ns != NAMESPACE) {
            return (Vec::new(), g.1);
        }
        (g.0.values().cloned().collect(), g.1)
    }

    /// One ConfigMap.
    pub fn get(&self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        if namespace != NAMESPACE {
            return Err(not_found(name));
        }
        self.lock()
            .0
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Replaces a ConfigMap with `new` (computed from the current one by `change`), validating
    /// the whole config; returns the stored object and the config to run with.
    pub fn write(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<(Value, Config), ApiError> {
        let mut g = self.lock();
        let current = match g.0.get(name) {
            Some(c) if namespace == NAMESPACE => c.clone(),
            _ => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "configmaps \"{name}\" is forbidden: Rouse serves only Knative's ConfigMaps in namespace {NAMESPACE}: {}",
                        CONFIGMAP_NAMES.join(", ")
                    ),
                ));
            }
        };
        let new = change(&current)?;
        let given_rv = new["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !given_rv.is_empty() && given_rv != current["metadata"]["resourceVersion"] {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on configmaps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
            ));
        }
        if new["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                new["metadata"]["name"]
            )));
        }
        let data = new.get("data").cloned().unwrap_or(json!({}));
        let rv = g.1 + 1;
        let stored = object(name, data, rv);
        // Validate the whole set, as `--config` does, with the changed one in place.
        let texts: Vec<String> =
            g.0.iter()
                .map(|(n, v)| if n == name { &stored } else { v })
                .map(|v| v.to_string())
                .collect();
        let config = Config::from_yaml_texts(&texts).map_err(|e| {
            let mut err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("ConfigMap \"{name}\" is invalid: {e}"),
            );
            err.details = Some(json!({
                "name": name, "kind": "ConfigMap",
                "causes": [{"reason": "FieldValueInvalid", "message": e.reason,
                            "field": format!("data[{}]", e.key)}],
            }));
            err
        })?;
        // Kept on disk before it takes effect: an acknowledged write survives a restart.
        self.persist(name, &stored).map_err(|e| {
            ApiError::internal(format!("keeping ConfigMap \"{name}\" on disk failed: {e}"))
        })?;
        g.1 = rv;
        g.0.insert(name.to_string(), stored.clone());
        Ok((stored, config))
    }
}

/// A Table of ConfigMaps: NAME, DATA.
pub fn table(maps: &[Value], rv: u64) -> Value {
    let rows: Vec<Value> = maps
        .iter()
        .map(|m| {
            let n = m["data"].as_object().map(|d| d.len()).unwrap_or(0);
            json!({"cells": [m["metadata"]["name"], n],
                   "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                              "metadata": m["metadata"]}})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "priority": 0, "description": ""},
            {"name": "Data", "type": "integer", "format": "", "priority": 0, "description": ""},
        ],
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_validated_like_config() {
        let maps = ConfigMaps::default();
        assert_eq!(maps.list(Some(NAMESPACE)).0.len(), CONFIGMAP_NAMES.len());
        let bad = maps
            .write(NAMESPACE, "config-defaults", |cur| {
                let mut v = cur.clone();
                v["data"] = json!({"revision-timeout-seconds": "abc"});
                Ok(v)
            })
            .unwrap_err();
        assert_eq!(bad.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            bad.message.contains("revision-timeout-seconds"),
            "{}",
            bad.message
        );
        let (stored, cfg) = maps
            .write(NAMESPACE, "config-defaults", |cur| {
                let mut v = cur.clone();
                v["data"] = json!({"revision-timeout-seconds": "42"});
                Ok(v)
            })
            .unwrap();
        assert_eq!(stored["metadata"]["resourceVersion"], "2");
        assert_eq!(cfg.defaults.revision_timeout_seconds, 42);
        assert!(maps.write(NAMESPACE, "other", |c| Ok(c.clone())).is_err());
    }

    #[test]
    fn written_maps_survive_a_restart_and_win_over_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("configmaps");
        let seed = vec![
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-defaults\n  namespace: knative-serving\ndata:\n  revision-timeout-seconds: \"100\"\n".to_string(),
        ];
        let (maps, cfg) = ConfigMaps::seeded(&seed).persisted_in(&keep).unwrap();
        assert_eq!(cfg.defaults.revision_timeout_seconds, 100);
        maps.write(NAMESPACE, "config-defaults", |cur| {
            let mut v = cur.clone();
            v["data"] = json!({"revision-timeout-seconds": "42"});
            Ok(v)
        })
        .unwrap();
        // A refused write changes nothing on disk.
        maps.write(NAMESPACE, "config-defaults", |cur| {
            let mut v = cur.clone();
            v["data"] = json!({"revision-timeout-seconds": "abc"});
            Ok(v)
        })
        .unwrap_err();
        drop(maps);

        let (again, cfg) = ConfigMaps::seeded(&seed).persisted_in(&keep).unwrap();
        assert_eq!(cfg.defaults.revision_timeout_seconds, 42);
        let stored = again.get(NAMESPACE, "config-defaults").unwrap();
        assert_eq!(stored["data"]["revision-timeout-seconds"], "42");

        // Without the kept file, the seed is back.
        std::fs::remove_file(keep.join("config-defaults.json")).unwrap();
        let (_, cfg) = ConfigMaps::seeded(&seed).persisted_in(&keep).unwrap();
        assert_eq!(cfg.defaults.revision_timeout_seconds, 100);
    }
}
