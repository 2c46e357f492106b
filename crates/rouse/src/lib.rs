//! The `rouse` binary's library: the HTTP API server (`api`), the command line (`cli`) and
//! `rouse serve` (`serve`), which wires every component of the platform into one process with
//! the local seam implementations (`local`).

pub mod api;
pub mod cli;
pub mod code_pages;
pub mod host;
pub mod local;
pub mod serve;
