//! Hash tables for the per-push keys: push keys, push ids and WAL record ids, random 128-bit
//! values looked up on every push and never iterated.
//!
//! They hash with foldhash under a per-process random seed: several times cheaper than std's
//! SipHash for such keys, and still seeded, so a caller who chooses push ids (through
//! idempotency keys) cannot aim collisions at a table. The tables are never iterated, so
//! neither the seed nor the order reaches behaviour.

use std::collections::{HashMap, HashSet};

/// A hash map keyed by a per-push key (see the [module docs](self)).
pub type KeyMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A hash set of per-push keys (see the [module docs](self)).
pub type KeySet<K> = HashSet<K, foldhash::fast::RandomState>;
