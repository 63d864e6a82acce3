//! weft-proxy: a reverse proxy that runs weft plugin chains (Go HTTP plugins loaded through
//! `weft-runtime`) on requests before forwarding them to upstreams.
//!
//! The binary in `main.rs` is a thin CLI over this library, so tests and benches can run the
//! proxy (and the demo upstream) in-process.

pub mod accept;
pub mod admin;
pub mod balance;
pub mod body;
pub mod clock;
pub mod config;
pub mod conn;
pub mod demo;
pub mod forward;
pub mod h1;
pub mod health;
pub mod lint;
pub mod logging;
pub mod metrics;
pub mod new_plugin;
pub mod path;
pub mod plugins;
pub mod pool;
pub mod proxy;
pub mod reload;
mod request;
pub mod retry;
pub mod route;
pub mod server;
pub mod timer;
pub mod tls;
pub mod upstream;
pub mod version;
pub mod workers;
pub mod ws;

pub use config::Config;
pub use proxy::Proxy;
pub use server::{serve, spawn};
