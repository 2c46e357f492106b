//! HTTP pieces shared by every proxy hop (queue-proxy, gateway, activator): the body type,
//! header hygiene, a pooled forwarding client (with protocol upgrades such as WebSocket) and a
//! server loop with graceful shutdown.

mod body;
mod client;
mod headers;
mod retry;
mod server;
mod upgrade;

pub use body::{Body, BoxError, GuardedBody, boxed, empty, full, text_response};
pub use client::{ProxyClient, ProxyError};
pub use headers::{is_internal, strip_hop_by_hop, strip_internal};
pub use retry::{ForwardError, forward_retryable};
pub use server::serve;
pub use upgrade::{Tunnel, is_upgrade};
