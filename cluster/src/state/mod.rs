//! The replicated state machine of the control group (DESIGN.md §5).
//!
//! Raft entries carry [`Command`]s, encoded as versioned rmp-serde [`Envelope`]s
//! ([`encode`]/[`decode`] check the same rules on both sides). [`StateMachine`] applies them in
//! log order: members, per-region shard maps with epochs, tenants, the newest provider token
//! per key, and device-token state (the last-writer-wins [`TokenTable`] of `herald-actors`,
//! reused, not re-implemented). It snapshots to versioned rmp-serde bytes and restores from
//! them. [`rebalance`] computes balanced shard assignments with bounded moves.
//!
//! Reads are local: a replica answers from the entries it has applied, so it trails the
//! leader by the committed entries it has not applied yet (usually one `ready()` round).
//!
//! ```
//! use herald_cluster::state::{ApplyResult, Command, StateMachine, decode, encode};
//!
//! let command = Command::AddMember { id: 1, addr: "10.0.0.1:7000".into(), region: "eu".into() };
//! let bytes = encode(&command).unwrap();
//! assert_eq!(decode(&bytes).unwrap(), command);
//!
//! let mut machine = StateMachine::new();
//! assert_eq!(machine.apply_bytes(1, &bytes), ApplyResult::Applied);
//! let copy = StateMachine::restore(&machine.snapshot().unwrap()).unwrap();
//! assert_eq!(copy, machine);
//! ```
//!
//! [`TokenTable`]: herald_actors::token_state::TokenTable

mod command;
pub mod devices;
mod machine;
mod rebalance;

pub use command::{
    API_TENANT_P8_BYTES_MAX, API_TENANTS_MAX, ApiTenantRecord, COMMAND_VERSION, Command,
    CommandError, Envelope, IDENTIFIER_BYTES_MAX, MemberState, NodeId,
    PROVIDER_TOKEN_JWT_BYTES_MAX, REVOKED_KEYS_MAX, SHARDS_MAX, TENANT_TOPICS_MAX,
    TOKEN_EVENTS_PER_COMMAND_MAX, TenantLimits, TokenEventRecord, WEBHOOK_FIELD_BYTES_MAX,
    WEBHOOKS_MAX, WebhookRecord, decode, encode,
};
pub use machine::{
    ApplyResult, Member, PROVIDER_TOKEN_FORGOTTEN_AFTER, ProviderTokenRecord, Rejection,
    SNAPSHOT_VERSION, ShardMap, SnapshotError, StateMachine, Tenant,
};
pub use rebalance::{RebalanceError, rebalance};
