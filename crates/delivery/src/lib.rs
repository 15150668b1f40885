//! Getting intents to and from the cluster, for every edge.
//!
//! The HTTP and gRPC edges only translate their wire formats; what an operation does with the
//! cluster lives here once: authenticating a key, reading an intent with read-your-writes,
//! proposing a command and unwrapping its reply ([`intents`]), and the two watching streams
//! ([`agent_deliveries`], [`intent_events`]), which the edges frame as SSE or gRPC server
//! streams, whose consumers of one address take turns ([`StreamConsumers`]). The leader-side delivery [`engine`] acts on the due-time index: lease expiries,
//! signed HTTP pushes with backoff, circuit breakers and an SSRF guard, delayed releases,
//! deadlines, reminders and webhook pushes, and beside it the mesh health sweep (`health`);
//! [`Metrics`] counts what it does.

pub mod backoff;
pub mod breaker;
mod consumers;
pub mod engine;
mod error;
mod health;
pub mod intents;
pub mod metrics;
pub mod push;
pub mod signing;
pub mod ssrf;
mod streams;

pub use consumers::StreamConsumers;
pub use engine::{Engine, EngineConfig, EngineError};
pub use error::DeliveryError;
pub use metrics::Metrics;
pub use ssrf::{check_url, AllowList, SsrfError};
pub use streams::{agent_deliveries, intent_events, Delivery, StatusFilter, StreamOptions, Watch};
