//! What every edge does with the cluster, once.
//!
//! Named for what it owns: the operations a client request is made of, whichever wire format
//! it came in (HTTP and SSE, gRPC). The edges decode a request, call these, and encode the
//! answer; the rules they share therefore live here and cannot drift apart: authenticating a
//! key, reading an intent with read-your-writes, proposing a command and unwrapping its reply
//! ([`intents`]), the sequence every change of an existing intent follows, with its
//! idempotency claim ([`change`]), what a receiver is shown of an intent delivered to it
//! ([`view`]), and the two watching streams ([`agent_deliveries`], [`intent_events`]), whose
//! consumers of one address take turns ([`StreamConsumers`]).
//!
//! Kept apart from the leader's delivery engine (`intentd-delivery`), which shares none of
//! this request path: the engine runs on the leader alone and proposes what the due index
//! says, while these run on every node for every request.

pub mod change;
mod consumers;
mod error;
pub mod intents;
mod streams;
pub mod view;

pub use change::{claim, Change, DEFAULT_IDEMPOTENCY_TTL};
pub use consumers::StreamConsumers;
pub use error::OperationsError;
pub use streams::{agent_deliveries, intent_events, Delivery, StatusFilter, StreamOptions, Watch};
