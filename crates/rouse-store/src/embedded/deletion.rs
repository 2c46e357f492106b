//! Kubernetes' deletion semantics, which its apiserver and garbage collector share and the
//! embedded store carries out itself, within one transaction: finalizers hold an object
//! (marked with `deletionTimestamp`) until an update clears them; propagation decides whether
//! owned objects go after their owner (background), before it (foreground) or stay (orphan).

use std::collections::{HashMap, HashSet};

use rouse_api::Kind;
use serde_json::Value;

use super::{ObjectKey, Txn};
use crate::object::{self, meta, meta_str};
use crate::{EventType, FOREGROUND_FINALIZER, Propagation, StoreError};

/// One delete (or finalizer-clearing update) in progress.
pub(super) struct Deletion<'t> {
    txn: &'t mut Txn,
    /// Owner uid → the objects naming it, read once; entries are re-checked before use.
    index: Option<HashMap<String, Vec<ObjectKey>>>,
    /// Objects already handled, so an ownership cycle cannot loop.
    seen: HashSet<ObjectKey>,
}

impl<'t> Deletion<'t> {
    pub(super) fn new(txn: &'t mut Txn) -> Self {
        Deletion {
            txn,
            index: None,
            seen: HashSet::new(),
        }
    }

    /// Deletes the object at `key` as `propagation` says. Returns it as removed, or as marked
    /// when finalizers hold it; `None` when it is not there.
    pub(super) fn delete(
        &mut self,
        key: &ObjectKey,
        propagation: Propagation,
    ) -> Result<Option<Value>, StoreError> {
        self.seen.insert(key.clone());
        let Some(obj) = self.txn.get(key.kind, &key.namespace, &key.name)? else {
            return Ok(None);
        };
        let uid = meta_str(&obj, "uid").to_string();
        match propagation {
            Propagation::Background => self.finish(key, obj),
            Propagation::Orphan => {
                for (dep_key, mut dep) in self.dependents(&uid, &key.namespace)? {
                    let meta = object::meta_mut(&mut dep);
                    if let Some(refs) = meta
                        .get_mut("ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(&uid));
                        if refs.is_empty() {
                            meta.remove("ownerReferences");
                        }
                    }
                    self.txn.put(dep_key.kind, dep, EventType::Modified)?;
                }
                self.finish(key, obj)
            }
            Propagation::Foreground => {
                let mut held = false;
                for (dep_key, _) in self.dependents(&uid, &key.namespace)? {
                    if self.seen.contains(&dep_key) {
                        continue;
                    }
                    if let Some(dep) = self.delete(&dep_key, Propagation::Foreground)? {
                        held |= is_marked(&dep)
                            && self
                                .txn
                                .exists(dep_key.kind, &dep_key.namespace, &dep_key.name)?;
                    }
                }
                if held {
                    self.mark(key.kind, obj, Some(FOREGROUND_FINALIZER))
                        .map(Some)
                } else {
                    self.finish(key, obj)
                }
            }
        }
    }

    /// Removes an object whose last finalizer an update has just cleared (`obj` as updated).
    pub(super) fn finalized(&mut self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        let key = ObjectKey {
            kind,
            namespace: meta_str(&obj, "namespace").to_string(),
            name: meta_str(&obj, "name").to_string(),
        };
        self.seen.insert(key.clone());
        let stored = self.txn.put(kind, obj, EventType::Modified)?;
        Ok(self.remove(&key)?.unwrap_or(stored))
    }

    /// Removes `obj` unless finalizers hold it, in which case it is marked.
    fn finish(&mut self, key: &ObjectKey, obj: Value) -> Result<Option<Value>, StoreError> {
        if finalizers(&obj).next().is_some() {
            return self.mark(key.kind, obj, None).map(Some);
        }
        self.remove(key)
    }

    /// Sets `deletionTimestamp` (once) and adds `finalizer`, writing only when that changes
    /// something.
    fn mark(
        &mut self,
        kind: Kind,
        mut obj: Value,
        finalizer: Option<&str>,
    ) -> Result<Value, StoreError> {
        let mut changed = false;
        if !is_marked(&obj) {
            object::set_meta(
                &mut obj,
                "deletionTimestamp",
                rouse_api::clock::now_rfc3339(),
            );
            object::set_meta(&mut obj, "deletionGracePeriodSeconds", 0);
            changed = true;
        }
        if let Some(f) = finalizer
            && !finalizers(&obj).any(|x| x == f)
        {
            let list = object::meta_mut(&mut obj)
                .entry("finalizers")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(list) = list.as_array_mut() {
                list.push(Value::String(f.to_string()));
            }
            changed = true;
        }
        if changed {
            self.txn.put(kind, obj, EventType::Modified)
        } else {
            Ok(obj)
        }
    }

    /// Removes the object, then deletes what it owns (in the background) and lets go of the
    /// owners waiting on it in the foreground.
    fn remove(&mut self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        let Some(removed) = self.txn.remove(key.kind, &key.namespace, &key.name)? else {
            return Ok(None);
        };
        let uid = meta_str(&removed, "uid").to_string();
        for (dep_key, _) in self.dependents(&uid, &key.namespace)? {
            if self.seen.insert(dep_key.clone()) {
                self.delete(&dep_key, Propagation::Background)?;
            }
        }
        self.release_owners(&removed)?;
        Ok(Some(removed))
    }

    /// Owners of `removed` deleted in the foreground go once nothing they own is left.
    fn release_owners(&mut self, removed: &Value) -> Result<(), StoreError> {
        let namespace = meta_str(removed, "namespace").to_string();
        let refs: Vec<(Kind, String, String)> = meta(removed)
            .get("ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let kind = Kind::from_name(r.get("kind")?.as_str()?)?;
                Some((
                    kind,
                    r.get("name")?.as_str()?.to_string(),
                    r.get("uid")?.as_str()?.to_string(),
                ))
            })
            .collect();
        for (kind, name, uid) in refs {
            let Some(mut owner) = self.txn.get(kind, &namespace, &name)? else {
                continue;
            };
            let waiting = meta_str(&owner, "uid") == uid
                && is_marked(&owner)
                && finalizers(&owner).any(|f| f == FOREGROUND_FINALIZER);
            if !waiting || !self.dependents(&uid, &namespace)?.is_empty() {
                continue;
            }
            if let Some(list) = object::meta_mut(&mut owner)
                .get_mut("finalizers")
                .and_then(Value::as_array_mut)
            {
                list.retain(|f| f != FOREGROUND_FINALIZER);
            }
            let key = ObjectKey {
                kind,
                namespace: namespace.clone(),
                name,
            };
            if finalizers(&owner).next().is_none() {
                self.seen.insert(key.clone());
                self.remove(&key)?;
            } else {
                self.txn.put(kind, owner, EventType::Modified)?;
            }
        }
        Ok(())
    }

    /// The objects in `namespace` that still name `uid` among their owners.
    fn dependents(
        &mut self,
        uid: &str,
        namespace: &str,
    ) -> Result<Vec<(ObjectKey, Value)>, StoreError> {
        if uid.is_empty() {
            return Ok(Vec::new());
        }
        if self.index.is_none() {
            self.index = Some(self.txn.children_by_owner()?);
        }
        let keys = self
            .index
            .as_ref()
            .and_then(|i| i.get(uid))
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::new();
        for key in keys.into_iter().filter(|k| k.namespace == namespace) {
            if let Some(obj) = self.txn.get(key.kind, &key.namespace, &key.name)?
                && object::owner_uids(&obj).any(|u| u == uid)
            {
                out.push((key, obj));
            }
        }
        Ok(out)
    }
}

/// The object's finalizers.
pub(super) fn finalizers(obj: &Value) -> impl Iterator<Item = &str> {
    meta(obj)
        .get("finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// True once a delete has marked the object.
pub(super) fn is_marked(obj: &Value) -> bool {
    meta(obj)
        .get("deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}
