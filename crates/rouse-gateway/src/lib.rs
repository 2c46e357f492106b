//! The gateway: Rouse's front door. It routes each request by its Host header (port ignored,
//! case-insensitive) to one of the route's revisions, picked at random by traffic percent,
//! and within the revision to its endpoint with the fewest requests in flight (the instances'
//! queue-proxies, or later the activator). Client-sent internal headers are stripped and
//! `X-Forwarded-*`/`Forwarded` added. The routing table and endpoints are swapped atomically.
//!
//! Status codes: unknown host 404; a revision without endpoints 503; upstream failure 502.

#![warn(missing_docs)]

mod backends;
mod gateway;
mod routing;

pub use gateway::Gateway;
pub use routing::{RouteTarget, RoutingTable, normalize_host};
