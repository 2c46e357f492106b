//! rouse-controller
