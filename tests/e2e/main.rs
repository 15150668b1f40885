//! End-to-end tests: each test starts the real `intentd` binary (a one-node cluster, or with
//! `cluster` several nodes, each on its own loopback ports and temp data directory) and talks
//! to it over HTTP exactly as clients do.
//! Every test is bounded in time; waits are on conditions with deadlines, never fixed sleeps.

mod support;

mod auth;
mod cli;
mod cluster;
mod connections;
mod console;
mod dashboards;
mod delivery;
mod durability;
mod errors;
mod fidelity;
mod grpc;
mod intents;
mod lifecycle;
mod mesh;
mod retention;
mod streams;
mod tls;
mod workflows;
