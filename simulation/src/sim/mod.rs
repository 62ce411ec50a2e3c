//! The deterministic simulator: the real Herald stack (Raft, peer links, the push engine,
//! the replicated token state) on turmoil's simulated network, disks and clocks, driven from
//! one `u64` seed, with swarm-style faults and invariant checks. See `docs/simulation.md`.
//!
//! - [`world`]: hosts, the driver loop, [`run`];
//! - [`network`]: the Connector/Acceptor seams over turmoil TCP;
//! - [`disk`]: the simulated disk (Raft storage, a WAL that loses unsynced writes on crash);
//! - [`workload`]: the app server (pushes, batches, registrations, dead tokens);
//! - [`faults`]: the swarm and its schedule;
//! - [`invariants`]: what must hold;
//! - [`signing`]: the seed-derived team key and deterministic ES256 signatures;
//! - [`trace`]: the event trace, its hash, and its first divergence from another.

pub mod disk;
pub mod faults;
pub mod invariants;
pub mod network;
pub mod signing;
pub mod trace;
pub mod workload;
pub mod world;

pub use world::{RunReport, SimConfig, run};
