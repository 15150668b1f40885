//! intentd-jepsen: a Jepsen-style fault-injection harness for intentd.
//!
//! * [`history`]: the operation history (recorder and JSONL format);
//! * [`workload`]: the client workloads that generate it;
//! * [`checker`]: the properties checked over it;
//! * [`plot`]: throughput/latency PNG with nemesis windows shaded.
//!
//! Hosts, node control, nemeses, the leadership monitor and orchestration live
//! in their own modules (net, db, nemesis, monitor, fusefs, run), declared
//! below by their owner.

pub mod checker;
pub mod history;
pub mod plot;
pub mod workload;

// Hosts, nodes, faults and orchestration.
pub mod db;
pub mod fusefs;
pub mod linkem;
pub mod monitor;
pub mod nemesis;
pub mod net;
pub mod run;
