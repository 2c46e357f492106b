//! rouse-gateway
