//! Getting intents to and from the cluster, for every edge.
//!
//! The HTTP and gRPC edges only translate their wire formats; what an operation does with the
//! cluster lives here once: authenticating a key, reading an intent with read-your-writes,
//! proposing a command and unwrapping its reply ([`intents`]), and the two watching streams
//! ([`agent_deliveries`], [`intent_events`]), which the edges frame as SSE or gRPC server
//! streams. The leader-side delivery engine (leases, retries, deadlines) will grow here too.

mod error;
pub mod intents;
mod streams;

pub use error::DeliveryError;
pub use streams::{agent_deliveries, intent_events, Delivery, StatusFilter, StreamOptions, Watch};
