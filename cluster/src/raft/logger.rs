//! raft-rs logs through `tracing`: a slog logger whose drain forwards every record to the
//! current `tracing` dispatcher (raft-rs is built without its `default-logger`).

/// A slog logger for the raft-rs node `node_id` that forwards to `tracing`. Installs no
/// subscriber: whatever the binary installed decides what is shown.
///
/// ```
/// let logger = herald_cluster::raft::raft_logger(1);
/// slog::info!(logger, "goes to tracing");
/// ```
pub fn raft_logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(
        tracing_slog::TracingSlogDrain,
        slog::o!("raft_id" => node_id),
    )
}
