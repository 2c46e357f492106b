//! rouse-store
