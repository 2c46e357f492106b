//! [`EmbeddedStore`]: the [`Store`] on a redb file in the data dir.
//!
//! Layout: one table per kind keyed by `(namespace, name)` holding the object's JSON, and a
//! `meta` table holding the global resourceVersion. Every write runs in one redb transaction
//! under a mutex that also guards the watch hub, so events are published in commit order and a
//! watch registers between two writes.
//!
//! Durable writes commit with an fsync. Relaxed writes commit without one (redb's
//! `Durability::None`): they are visible at once, and reach the disk with the next durable
//! commit, which a flusher thread makes within [`FLUSH_INTERVAL`] of the first relaxed write
//! or after [`FLUSH_AFTER_COMMITS`] of them, whichever comes first. A crash keeps the database
//! consistent at its last durable commit. So that a resourceVersion
//! handed out by a lost relaxed write is never handed out again for different content, relaxed
//! writes only use versions reserved by a durable commit ([`RELAXED_SPAN`] at a time: the
//! relaxed write that finds the reserve used up commits durably and reserves the next span),
//! and opening after a crash starts above the reserve. A clean close releases it.

mod deletion;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{
    Database, DatabaseError, Durability, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use rouse_api::Kind;
use serde_json::Value;

use crate::error::MODIFIED;
use crate::object::{self, meta_str};
use crate::watch::{Hub, Watch};
use crate::{Durability as WriteDurability, EventType, Propagation, Store, StoreError, WatchEvent};
use deletion::Deletion;

/// The database file inside the data dir.
pub const DB_FILE: &str = "store.redb";

/// How many recent events a watch can replay, by default. A watch starts right after the list
/// it follows, so a short window suffices (an older start is told Expired and relists), and the
/// history stays small however long the process runs: about 1 KiB an event, so 1,000 of them
/// were a twentieth of `rouse serve`'s idle footprint.
pub const DEFAULT_HISTORY: usize = 100;

/// Tries at a free name for `generateName` before giving up.
const GENERATE_NAME_TRIES: usize = 16;

/// The longest a relaxed write stays off the disk (while the process lives).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Relaxed commits after which the flusher commits durably at once. redb frees the pages a
/// relaxed commit replaced only at the next durable commit, so this bounds the file's and the
/// page cache's growth during a burst.
pub const FLUSH_AFTER_COMMITS: u32 = 64;

/// How many resourceVersions relaxed writes may take past the last durable commit; a relaxed
/// write beyond them commits durably.
pub const RELAXED_SPAN: u64 = 10_000;

/// redb's own page cache. Kept small: pages it misses come from the OS page cache (one pread
/// each, a few microseconds), while a large cache keeps every page a relaxed commit ever wrote
/// (they are freed only at the next durable commit) and grows the resident memory with it.
/// 256 KiB instead of 1 MiB took 1 MB off the idle footprint with 100 services and left the
/// time to get 100 services Ready unchanged.
const CACHE_BYTES: usize = 256 * 1024;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RV_KEY: &str = "resourceVersion";
/// The highest resourceVersion relaxed writes may have used since the last durable commit.
const RESERVED_KEY: &str = "relaxedReserve";

type ObjectTable = TableDefinition<'static, (&'static str, &'static str), &'static [u8]>;

/// The table holding `kind`'s objects, keyed by `(namespace, name)`.
fn objects(kind: Kind) -> ObjectTable {
    TableDefinition::new(kind.plural())
}

fn decode(bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("corrupt object: {e}")))
}

/// The store Rouse keeps in its data dir: an ACID redb database file (`store.redb`).
///
/// Only one process may open a data dir at a time. Writes are serialized; a durable write is on
/// disk when it returns, together with every write before it; reads run on snapshots in
/// parallel with writes.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    flusher: Option<JoinHandle<()>>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    state: Mutex<State>,
    /// Wakes the flusher: after the first relaxed write since a durable one, and at close.
    wake: Condvar,
}

/// What the write mutex guards.
struct State {
    hub: Hub,
    /// The resourceVersion up to which relaxed writes may go before one commits durably.
    reserve: u64,
    /// Relaxed commits since the last durable one (committed, not yet on disk).
    unflushed: u32,
    /// The store is closing: the flusher stops.
    closing: bool,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// How long opening waits for the store's lock to be released by a `rouse` that is exiting.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir`, keeping the last
    /// [`DEFAULT_HISTORY`] events for watches to replay.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_history(data_dir, DEFAULT_HISTORY)
    }

    /// Like [`EmbeddedStore::open`], retaining the last `history` events (at least one).
    pub fn open_with_history(data_dir: &Path, history: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DB_FILE);
        // A `rouse` killed a moment ago may still be exiting (a child it was starting can
        // hold the file's lock for a few milliseconds): wait for the lock, bounded.
        let give_up = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            let mut builder = Database::builder();
            builder.create_with_file_format_v3(true);
            builder.set_cache_size(CACHE_BYTES);
            match builder.create(&path) {
                Ok(db) => break db,
                Err(DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::Backend(format!(
                        "data dir {} is in use by another rouse",
                        data_dir.display()
                    )));
                }
                Err(e) => {
                    return Err(StoreError::Backend(format!(
                        "cannot open store {}: {e}",
                        path.display()
                    )));
                }
            }
        };

        // Create every table up front so reads never meet a missing one. Versions continue
        // above any a lost relaxed write may have used.
        let mut tx = db.begin_write().map_err(StoreError::backend)?;
        tx.set_durability(Durability::Immediate);
        let rv = {
            let mut meta = tx.open_table(META).map_err(StoreError::backend)?;
            let stored = meta
                .get(RV_KEY)
                .map_err(StoreError::backend)?
                .map(|g| g.value())
                .unwrap_or(0);
            let reserved = meta
                .get(RESERVED_KEY)
                .map_err(StoreError::backend)?
                .map(|g| g.value())
                .unwrap_or(0);
            let rv = stored.max(reserved);
            meta.insert(RV_KEY, rv).map_err(StoreError::backend)?;
            meta.insert(RESERVED_KEY, rv).map_err(StoreError::backend)?;
            for kind in Kind::ALL {
                tx.open_table(objects(kind)).map_err(StoreError::backend)?;
            }
            rv
        };
        tx.commit().map_err(StoreError::backend)?;
        tracing::debug!(path = %path.display(), resource_version = rv, "store opened");
        let inner = Arc::new(Inner {
            db,
            path,
            state: Mutex::new(State {
                hub: Hub::new(rv, history),
                reserve: rv,
                unflushed: 0,
                closing: false,
            }),
            wake: Condvar::new(),
        });
        let flusher = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("store-flush".to_string())
                .spawn(move || inner.flush_loop())
                .map_err(|e| StoreError::Backend(format!("cannot start the flusher: {e}")))?
        };
        Ok(EmbeddedStore {
            inner,
            flusher: Some(flusher),
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The last committed resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().hub.rv()
    }

    /// True when every write so far is on disk (no relaxed write is waiting for a flush).
    pub fn is_flushed(&self) -> bool {
        self.inner.lock().unflushed == 0
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.inner.lock().closing = true;
        self.inner.wake.notify_all();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        // A clean close: nothing relaxed is left off the disk, and no version is reserved.
        if let Err(e) = self.inner.persist(true) {
            tracing::warn!(error = %e, "closing the store: final flush failed");
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-write aborts its transaction, so the state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every relaxed write durable. With `release`, also gives back the versions reserved
    /// for relaxed writes (a clean close: the next open continues from the last version).
    fn persist(&self, release: bool) -> Result<(), StoreError> {
        let mut st = self.lock();
        let rv = st.hub.rv();
        if st.unflushed == 0 && (!release || st.reserve <= rv) {
            return Ok(());
        }
        let reserve = if release { rv } else { st.reserve };
        let mut tx = self.db.begin_write().map_err(StoreError::backend)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut meta = tx.open_table(META).map_err(StoreError::backend)?;
            meta.insert(RESERVED_KEY, reserve)
                .map_err(StoreError::backend)?;
        }
        tx.commit().map_err(StoreError::backend)?;
        st.reserve = reserve;
        st.unflushed = 0;
        Ok(())
    }

    /// The flusher: within [`FLUSH_INTERVAL`] of a relaxed write, or once
    /// [`FLUSH_AFTER_COMMITS`] relaxed commits gathered, commits durably.
    fn flush_loop(&self) {
        loop {
            {
                let mut st = self.lock();
                while st.unflushed == 0 && !st.closing {
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.closing {
                    return;
                }
                // Let relaxed writes gather, so a burst costs one fsync per interval.
                let (st, _) = self
                    .wake
                    .wait_timeout_while(st, FLUSH_INTERVAL, |s| {
                        !s.closing && s.unflushed < FLUSH_AFTER_COMMITS
                    })
                    .unwrap_or_else(|p| p.into_inner());
                if st.closing {
                    return;
                }
            }
            if let Err(e) = self.persist(false) {
                tracing::warn!(error = %e, "store flush failed; retrying");
                std::thread::sleep(FLUSH_INTERVAL);
            }
        }
    }

    /// Runs `f` in one write transaction; commits and publishes its events when it wrote
    /// anything, aborts on error or when it wrote nothing. Durable commits fsync; relaxed ones
    /// do not (unless they would pass the reserved versions).
    fn write<T>(
        &self,
        durability: WriteDurability,
        f: impl FnOnce(&mut Txn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut st = self.lock();
        let tx = self.db.begin_write().map_err(StoreError::backend)?;
        let rv = {
            let meta = tx.open_table(META).map_err(StoreError::backend)?;
            let rv = meta.get(RV_KEY).map_err(StoreError::backend)?;
            rv.map(|g| g.value()).unwrap_or(0)
        };
        let mut txn = Txn {
            tx,
            rv,
            events: Vec::new(),
        };
        let out = f(&mut txn)?;
        let Txn { mut tx, rv, events } = txn;
        if events.is_empty() {
            tx.abort().map_err(StoreError::backend)?;
            return Ok(out);
        }
        // A relaxed write past the reserve commits durably and reserves the next span.
        let reserve =
            (durability == WriteDurability::Relaxed && rv > st.reserve).then(|| rv + RELAXED_SPAN);
        let durable = durability == WriteDurability::Durable || reserve.is_some();
        {
            let mut meta = tx.open_table(META).map_err(StoreError::backend)?;
            meta.insert(RV_KEY, rv).map_err(StoreError::backend)?;
            if let Some(reserve) = reserve {
                meta.insert(RESERVED_KEY, reserve)
                    .map_err(StoreError::backend)?;
            }
        }
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        tx.commit().map_err(StoreError::backend)?;
        if let Some(reserve) = reserve {
            st.reserve = reserve;
        }
        if durable {
            st.unflushed = 0;
        } else {
            st.unflushed += 1;
            if st.unflushed == 1 || st.unflushed == FLUSH_AFTER_COMMITS {
                self.wake.notify_all();
            }
        }
        for ev in &events {
            tracing::trace!(rv = ev.resource_version, kind = %ev.kind, event = ?ev.event_type,
                name = meta_str(&ev.object, "name"), durable, "committed");
        }
        st.hub.publish(events);
        Ok(out)
    }
}

/// One write transaction in progress, with the events it will publish once committed.
struct Txn {
    tx: WriteTransaction,
    /// The resourceVersion of the last write (committed or in this transaction).
    rv: u64,
    events: Vec<WatchEvent>,
}

impl Txn {
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Value>, StoreError> {
        let table = self
            .tx
            .open_table(objects(kind))
            .map_err(StoreError::backend)?;
        let got = table.get((namespace, name)).map_err(StoreError::backend)?;
        got.map(|g| decode(g.value())).transpose()
    }

    fn exists(&self, kind: Kind, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let table = self
            .tx
            .open_table(objects(kind))
            .map_err(StoreError::backend)?;
        let got = table.get((namespace, name)).map_err(StoreError::backend)?;
        Ok(got.is_some())
    }

    /// Stamps the next resourceVersion on `obj`, stores it and records the event.
    fn put(
        &mut self,
        kind: Kind,
        mut obj: Value,
        event_type: EventType,
    ) -> Result<Value, StoreError> {
        self.rv += 1;
        object::set_resource_version(&mut obj, self.rv);
        let bytes = serde_json::to_vec(&obj).map_err(StoreError::backend)?;
        {
            let mut table = self
                .tx
                .open_table(objects(kind))
                .map_err(StoreError::backend)?;
            table
                .insert(
                    (meta_str(&obj, "namespace"), meta_str(&obj, "name")),
                    bytes.as_slice(),
                )
                .map_err(StoreError::backend)?;
        }
        self.events.push(WatchEvent {
            event_type,
            kind,
            object: obj.clone(),
            resource_version: self.rv,
        });
        Ok(obj)
    }

    /// Removes an object, stamping the next resourceVersion on what it returns and records the
    /// Deleted event; `None` when absent.
    fn remove(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError> {
        let removed = {
            let mut table = self
                .tx
                .open_table(objects(kind))
                .map_err(StoreError::backend)?;
            let got = table
                .remove((namespace, name))
                .map_err(StoreError::backend)?;
            got.map(|g| decode(g.value())).transpose()?
        };
        let Some(mut obj) = removed else {
            return Ok(None);
        };
        self.rv += 1;
        object::set_resource_version(&mut obj, self.rv);
        self.events.push(WatchEvent {
            event_type: EventType::Deleted,
            kind,
            object: obj.clone(),
            resource_version: self.rv,
        });
        Ok(Some(obj))
    }

    /// Every object of every kind, indexed by the uids of its owners.
    fn children_by_owner(&self) -> Result<HashMap<String, Vec<ObjectKey>>, StoreError> {
        let mut index: HashMap<String, Vec<ObjectKey>> = HashMap::new();
        for kind in Kind::ALL {
            let table = self
                .tx
                .open_table(objects(kind))
                .map_err(StoreError::backend)?;
            if table.len().map_err(StoreError::backend)? == 0 {
                continue;
            }
            for entry in table.iter().map_err(StoreError::backend)? {
                let (key, value) = entry.map_err(StoreError::backend)?;
                let obj = decode(value.value())?;
                let (namespace, name) = key.value();
                for uid in object::owner_uids(&obj) {
                    index.entry(uid.to_string()).or_default().push(ObjectKey {
                        kind,
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                    });
                }
            }
        }
        Ok(index)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ObjectKey {
    kind: Kind,
    namespace: String,
    name: String,
}

fn not_found(kind: Kind, namespace: &str, name: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn conflict(kind: Kind, namespace: &str, name: &str, message: String) -> StoreError {
    StoreError::Conflict {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        message,
    }
}

/// Normalizes an object sent to `update`/`update_status`, loads the stored one and checks the
/// resourceVersion and uid preconditions. Returns (given, stored).
fn load_for_update(txn: &Txn, kind: Kind, mut obj: Value) -> Result<(Value, Value), StoreError> {
    object::normalize(kind, &mut obj)?;
    let namespace = meta_str(&obj, "namespace").to_string();
    let name = meta_str(&obj, "name").to_string();
    if name.is_empty() {
        return Err(StoreError::Invalid(format!(
            "{kind}: metadata.name is required"
        )));
    }
    let stored = txn
        .get(kind, &namespace, &name)?
        .ok_or_else(|| not_found(kind, &namespace, &name))?;
    let given_rv = meta_str(&obj, "resourceVersion");
    if !given_rv.is_empty() && given_rv != meta_str(&stored, "resourceVersion") {
        return Err(conflict(kind, &namespace, &name, MODIFIED.to_string()));
    }
    let given_uid = meta_str(&obj, "uid");
    let stored_uid = meta_str(&stored, "uid");
    if !given_uid.is_empty() && given_uid != stored_uid {
        return Err(conflict(
            kind,
            &namespace,
            &name,
            format!(
                "Precondition failed: UID in precondition: {given_uid}, UID in object meta: {stored_uid}"
            ),
        ));
    }
    Ok((obj, stored))
}

impl Store for EmbeddedStore {
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, StoreError> {
        let rtx = self.inner.db.begin_read().map_err(StoreError::backend)?;
        let table = rtx.open_table(objects(kind)).map_err(StoreError::backend)?;
        let got = table
            .get((namespace, name))
            .map_err(StoreError::backend)?
            .ok_or_else(|| not_found(kind, namespace, name))?;
        decode(got.value())
    }

    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
        // One snapshot for both the objects and the resourceVersion, so a watch from the
        // returned version picks up exactly the writes the list did not see.
        let rtx = self.inner.db.begin_read().map_err(StoreError::backend)?;
        let rv = rtx
            .open_table(META)
            .map_err(StoreError::backend)?
            .get(RV_KEY)
            .map_err(StoreError::backend)?
            .map(|g| g.value())
            .unwrap_or(0);
        let table = rtx.open_table(objects(kind)).map_err(StoreError::backend)?;
        let mut out = Vec::new();
        let range = match namespace {
            Some(ns) => table.range((ns, "")..),
            None => table.iter(),
        }
        .map_err(StoreError::backend)?;
        for entry in range {
            let (key, value) = entry.map_err(StoreError::backend)?;
            if let Some(ns) = namespace
                && key.value().0 != ns
            {
                break;
            }
            out.push(decode(value.value())?);
        }
        Ok((out, rv))
    }

    fn create_with(
        &self,
        kind: Kind,
        mut obj: Value,
        durability: WriteDurability,
    ) -> Result<Value, StoreError> {
        object::normalize(kind, &mut obj)?;
        let namespace = meta_str(&obj, "namespace").to_string();
        let given_name = meta_str(&obj, "name").to_string();
        let generate_name = meta_str(&obj, "generateName").to_string();
        if given_name.is_empty() && generate_name.is_empty() {
            return Err(StoreError::Invalid(format!(
                "{kind}: metadata.name or metadata.generateName is required"
            )));
        }
        object::set_meta(&mut obj, "uid", object::new_uid());
        object::set_meta(
            &mut obj,
            "creationTimestamp",
            rouse_api::clock::now_rfc3339(),
        );
        object::set_meta(&mut obj, "generation", 1);
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            object::meta_mut(&mut obj).remove(field);
        }
        self.inner.write(durability, |txn| {
            let name = if !given_name.is_empty() {
                if txn.exists(kind, &namespace, &given_name)? {
                    return Err(StoreError::AlreadyExists {
                        kind,
                        namespace,
                        name: given_name,
                    });
                }
                given_name
            } else {
                let mut tries = 0;
                loop {
                    let candidate = format!("{generate_name}{}", object::random_suffix());
                    if !txn.exists(kind, &namespace, &candidate)? {
                        break candidate;
                    }
                    tries += 1;
                    if tries == GENERATE_NAME_TRIES {
                        return Err(StoreError::AlreadyExists {
                            kind,
                            namespace,
                            name: candidate,
                        });
                    }
                }
            };
            object::set_meta(&mut obj, "name", name);
            txn.put(kind, obj, EventType::Added)
        })
    }

    fn update_with(
        &self,
        kind: Kind,
        obj: Value,
        durability: WriteDurability,
    ) -> Result<Value, StoreError> {
        self.inner.write(durability, |txn| {
            let (mut new, stored) = load_for_update(txn, kind, obj)?;
            // Identity and bookkeeping come from the stored object; status is written apart;
            // only a delete marks an object for deletion.
            for field in [
                "uid",
                "creationTimestamp",
                "resourceVersion",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                object::copy_meta(&mut new, &stored, field);
            }
            object::copy_top(&mut new, &stored, "status");
            if new.get("spec") != stored.get("spec") {
                object::set_meta(&mut new, "generation", object::generation(&stored) + 1);
            }
            if new == stored {
                return Ok(stored);
            }
            if deletion::is_marked(&stored) {
                let added: Vec<&str> = deletion::finalizers(&new)
                    .filter(|f| !deletion::finalizers(&stored).any(|s| s == *f))
                    .collect();
                if !added.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                    )));
                }
                if deletion::finalizers(&new).next().is_none() {
                    // The last finalizer is cleared: the marked object goes.
                    return Deletion::new(txn).finalized(kind, new);
                }
            }
            txn.put(kind, new, EventType::Modified)
        })
    }

    fn update_status_with(
        &self,
        kind: Kind,
        obj: Value,
        durability: WriteDurability,
    ) -> Result<Value, StoreError> {
        self.inner.write(durability, |txn| {
            let (given, stored) = load_for_update(txn, kind, obj)?;
            let mut new = stored.clone();
            object::copy_top(&mut new, &given, "status");
            if new == stored {
                return Ok(stored);
            }
            txn.put(kind, new, EventType::Modified)
        })
    }

    fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, StoreError> {
        self.delete_propagating(kind, namespace, name, Propagation::Background)
    }

    fn delete_propagating(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        propagation: Propagation,
    ) -> Result<Value, StoreError> {
        self.inner.write(WriteDurability::Durable, |txn| {
            let key = ObjectKey {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            };
            Deletion::new(txn)
                .delete(&key, propagation)?
                .ok_or_else(|| not_found(kind, namespace, name))
        })
    }

    fn watch(&self, from: u64) -> Result<Watch, StoreError> {
        self.inner.lock().hub.watch(from)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.persist(false)
    }
}
