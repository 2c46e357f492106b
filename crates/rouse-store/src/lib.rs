//! The platform's state store: the [`Store`] trait the controller and the API server work
//! against, and [`EmbeddedStore`], its implementation on an embedded ACID database (redb) in
//! the data dir, used by the local `rouse serve`.
//!
//! Objects are Kubernetes-shaped JSON (`apiVersion`, `kind`, `metadata`, `spec`, `status`). The
//! store keeps Kubernetes' bookkeeping: one global, monotonically increasing
//! `resourceVersion` with compare-and-swap updates, `generation` bumped on spec changes only,
//! status written apart from spec, owner references with cascading delete, and watches that
//! resume from a resourceVersion.

mod embedded;
mod error;
mod object;
mod watch;

pub use embedded::{
    DB_FILE, DEFAULT_HISTORY, EmbeddedStore, FLUSH_AFTER_COMMITS, FLUSH_INTERVAL, RELAXED_SPAN,
};
pub use error::StoreError;
pub use rouse_api::Kind;
pub use watch::{Hub as EventHub, Watch};

use serde_json::Value;

/// What happened to the object a [`WatchEvent`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Created.
    Added,
    /// Updated (spec, metadata or status).
    Modified,
    /// Deleted, directly or by an owner's cascade.
    Deleted,
}

/// One committed change, as a watcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// What happened.
    pub event_type: EventType,
    /// The object's kind.
    pub kind: Kind,
    /// The object after the change (for Deleted: as it was, with the deletion's
    /// resourceVersion).
    pub object: Value,
    /// The resourceVersion of this change.
    pub resource_version: u64,
}

/// How a delete treats the objects the deleted one owns (Kubernetes' `propagationPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Propagation {
    /// The object goes first; what it owns goes after it (each held by its own finalizers).
    #[default]
    Background,
    /// What the object owns goes first; the object stays, marked, with the
    /// `foregroundDeletion` finalizer, while an owned object is held by finalizers.
    Foreground,
    /// What the object owns stays, no longer owned by it.
    Orphan,
}

/// The finalizer that holds an owner deleted in the foreground until its dependents are gone.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// How far a write has got when the call that made it returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// On disk (fsynced), with every write before it: survives a crash. For what a client was
    /// told is stored.
    #[default]
    Durable,
    /// Committed and visible to reads and watches at once, on disk shortly after (with the
    /// next durable write or flush). A crash may lose the latest relaxed writes, whole and in
    /// order, never a durable one; the store stays consistent. For derived state that
    /// reconcilers recompute.
    Relaxed,
}

/// Storage for the platform's objects: get/list/create/update with compare-and-swap on
/// `resourceVersion`, status updates, cascading delete and watch.
///
/// Every write that changes something takes the next resourceVersion and emits exactly one
/// event; a cascading delete takes one resourceVersion (and emits one Deleted event) per
/// object removed, owner first, all committed in one transaction.
///
/// The methods block (disk I/O, with an fsync per durable write); async callers accept that or
/// use `spawn_blocking`. `create`, `update`, `update_status` and `delete` are durable; the
/// `*_with` forms choose.
pub trait Store: Send + Sync + 'static {
    /// The object, or [`StoreError::NotFound`].
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, StoreError>;

    /// The objects of `kind` in `namespace` (`None` = all namespaces), sorted by namespace
    /// then name, and the store's resourceVersion at the time of the read (to watch from).
    ///
    /// The number is the position in the store's event stream: the embedded store's global
    /// resourceVersion; for a backend whose objects carry opaque resourceVersions (Kubernetes),
    /// the sequence of the events it has published. Objects' `metadata.resourceVersion` is
    /// always an opaque string, compared only for equality.
    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError>;

    /// Stores a new object and returns it as stored.
    ///
    /// The namespace defaults to `default`. Without a name, `metadata.generateName` plus five
    /// random lowercase alphanumerics names it. The store sets `uid`, `creationTimestamp`,
    /// `generation` 1 and `resourceVersion` (replacing any given). [`StoreError::AlreadyExists`]
    /// when the name is taken.
    fn create(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        self.create_with(kind, obj, Durability::Durable)
    }

    /// [`Store::create`] with the given durability.
    fn create_with(
        &self,
        kind: Kind,
        obj: Value,
        durability: Durability,
    ) -> Result<Value, StoreError>;

    /// Replaces an object's metadata and spec (not its status).
    ///
    /// A non-empty `metadata.resourceVersion` (or `uid`) that differs from the stored one is a
    /// [`StoreError::Conflict`]; an empty one updates unconditionally. `generation` goes up by
    /// one only when `spec` changed. When nothing changed, nothing is written, no event is
    /// emitted and the stored object is returned.
    fn update(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        self.update_with(kind, obj, Durability::Durable)
    }

    /// [`Store::update`] with the given durability.
    fn update_with(
        &self,
        kind: Kind,
        obj: Value,
        durability: Durability,
    ) -> Result<Value, StoreError>;

    /// Replaces only an object's `status`, with the same preconditions as
    /// [`Store::update`]; never changes `generation`; a no-op when the status is unchanged.
    fn update_status(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        self.update_status_with(kind, obj, Durability::Durable)
    }

    /// [`Store::update_status`] with the given durability.
    fn update_status_with(
        &self,
        kind: Kind,
        obj: Value,
        durability: Durability,
    ) -> Result<Value, StoreError>;

    /// Deletes an object and, in the same transaction, every object of any kind whose
    /// `metadata.ownerReferences` names a deleted object's uid, recursively. Returns the
    /// object deleted.
    ///
    /// As in Kubernetes, an object with `metadata.finalizers` is not removed but marked: its
    /// `deletionTimestamp` is set (and it is returned so); it goes once an update clears its
    /// last finalizer. Such an object among the dependents is marked likewise and keeps what it
    /// owns until it goes.
    fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, StoreError>;

    /// [`Store::delete`] with a propagation policy. Stores that only cascade in the background
    /// refuse the others.
    fn delete_propagating(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        propagation: Propagation,
    ) -> Result<Value, StoreError> {
        match propagation {
            Propagation::Background => self.delete(kind, namespace, name),
            other => Err(StoreError::Invalid(format!(
                "propagationPolicy {other:?} is not supported by this store"
            ))),
        }
    }

    /// A stream of the events with a resourceVersion above `from`, in order: first those
    /// retained in memory, then live ones. [`StoreError::Expired`] when `from` is older than
    /// what is retained (list again and watch from the list's resourceVersion).
    fn watch(&self, from: u64) -> Result<Watch, StoreError>;

    /// Puts every relaxed write made so far on disk.
    fn flush(&self) -> Result<(), StoreError>;
}
