//! The leader-side delivery engine and what it needs.
//!
//! The [`engine`] acts on the replicated due-time index while its node leads: lease expiries,
//! signed HTTP pushes with backoff ([`backoff`], [`signing`], [`push`]), circuit breakers
//! ([`breaker`]) and an SSRF guard ([`ssrf`]), delayed releases, deadlines, reminders,
//! webhook pushes, workflow timers and purges, and beside it the mesh health sweep
//! (`health`). [`Metrics`] counts what it does (and what the
//! node's streams hold, read from `intentd_operations::StreamConsumers`). The operations the
//! edges make for clients live in `intentd-operations`.

pub mod backoff;
pub mod breaker;
pub mod engine;
mod health;
pub mod metrics;
pub mod push;
pub mod signing;
pub mod ssrf;

pub use engine::{Engine, EngineConfig, EngineError};
pub use metrics::Metrics;
pub use ssrf::{check_url, AllowList, SsrfError};
