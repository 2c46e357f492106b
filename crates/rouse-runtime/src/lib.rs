//! rouse-runtime
