//! rouse-queue
