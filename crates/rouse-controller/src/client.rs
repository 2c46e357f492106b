//! Typed access to the [`Store`]: objects go in and out as `rouse_api` types.
//!
//! Every write here is derived state that the level-triggered reconcilers recompute after a
//! restart, so it is [`Durability::Relaxed`]: committed and visible at once without waiting
//! for an fsync. A crash may lose the latest of them; what users wrote through the API stays
//! durable.

use std::sync::Arc;

use rouse_api::meta::Resource;
use rouse_store::{Durability, Store, StoreError};

use crate::ReconcileError;

/// A typed view of the store.
#[derive(Clone)]
pub struct Client {
    store: Arc<dyn Store>,
}

impl Client {
    /// Wraps a store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The untyped store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Gets an object; `None` when it does not exist.
    pub fn get<T: Resource>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<T>, ReconcileError> {
        match self.store.get(T::KIND, namespace, name) {
            Ok(v) => Ok(Some(decode(v)?)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Lists objects of a kind in a namespace (or all namespaces).
    pub fn list<T: Resource>(&self, namespace: Option<&str>) -> Result<Vec<T>, ReconcileError> {
        let (items, _) = self.store.list(T::KIND, namespace)?;
        items.into_iter().map(decode).collect()
    }

    /// Creates an object.
    pub fn create<T: Resource>(&self, obj: &T) -> Result<T, ReconcileError> {
        decode(
            self.store
                .create_with(T::KIND, obj.to_value(), Durability::Relaxed)?,
        )
    }

    /// Replaces an object's metadata and spec (compare-and-swap on its resourceVersion).
    pub fn update<T: Resource>(&self, obj: &T) -> Result<T, ReconcileError> {
        decode(
            self.store
                .update_with(T::KIND, obj.to_value(), Durability::Relaxed)?,
        )
    }

    /// Replaces an object's status (compare-and-swap on its resourceVersion).
    pub fn update_status<T: Resource>(&self, obj: &T) -> Result<T, ReconcileError> {
        decode(
            self.store
                .update_status_with(T::KIND, obj.to_value(), Durability::Relaxed)?,
        )
    }
}

fn decode<T: Resource>(v: serde_json::Value) -> Result<T, ReconcileError> {
    T::from_value(v).map_err(|e| ReconcileError::Decode(T::KIND, e.to_string()))
}
