use proptest::prelude::*;

use super::*;

fn t(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

fn key(n: u8) -> TokenKey {
    TokenKey::new("tenant", format!("{n:02x}aabbcc"))
}

fn fold(events: &[TokenEvent]) -> Option<TokenEntry> {
    events
        .iter()
        .fold(None, |entry, event| Some(merge(entry, *event)))
}

#[test]
fn invalidation_beats_older_registration_and_newer_revives() {
    let invalid = fold(&[
        TokenEvent::Invalidated { at: t(100) },
        TokenEvent::Registered { at: t(99) },
    ])
    .unwrap();
    assert_eq!(
        invalid.validity(),
        TokenValidity::Invalidated { at: t(100) }
    );
    let revived = merge(Some(invalid), TokenEvent::Registered { at: t(101) });
    assert_eq!(revived.validity(), TokenValidity::Valid);
    // The same events in the other order.
    let reordered = fold(&[
        TokenEvent::Registered { at: t(101) },
        TokenEvent::Registered { at: t(99) },
        TokenEvent::Invalidated { at: t(100) },
    ])
    .unwrap();
    assert_eq!(reordered, revived);
    // A later invalidation kills the revived token again.
    let again = merge(Some(revived), TokenEvent::Invalidated { at: t(102) });
    assert_eq!(again.validity(), TokenValidity::Invalidated { at: t(102) });
}

#[test]
fn ties_resolve_to_the_side_that_sends_less() {
    let tie = fold(&[
        TokenEvent::Registered { at: t(5) },
        TokenEvent::Invalidated { at: t(5) },
    ])
    .unwrap();
    assert_eq!(tie.validity(), TokenValidity::Invalidated { at: t(5) });
    let tie = fold(&[
        TokenEvent::Registered { at: t(5) },
        TokenEvent::Unregistered { at: t(5) },
    ])
    .unwrap();
    assert_eq!(tie.validity(), TokenValidity::Unknown);
}

#[test]
fn unregistration_never_clears_an_invalidation() {
    let entry = fold(&[
        TokenEvent::Registered { at: t(1) },
        TokenEvent::Invalidated { at: t(2) },
        TokenEvent::Unregistered { at: t(3) },
    ])
    .unwrap();
    assert_eq!(entry.validity(), TokenValidity::Invalidated { at: t(2) });
    // Revived, then unregistered: nothing standing.
    let entry = merge(Some(entry), TokenEvent::Registered { at: t(4) });
    assert_eq!(entry.validity(), TokenValidity::Valid);
    let entry = merge(Some(entry), TokenEvent::Unregistered { at: t(5) });
    assert_eq!(entry.validity(), TokenValidity::Unknown);
    assert!(entry.validity().may_send());
    assert_eq!(entry.latest(), t(5));
}

#[test]
fn keys_ignore_token_case() {
    assert_eq!(TokenKey::new("a", "ABCDEF"), TokenKey::new("a", "abcdef"));
    assert_ne!(TokenKey::new("a", "abcdef"), TokenKey::new("b", "abcdef"));
    assert_eq!(TokenKey::new("a", "ABCD").to_string(), "a/abcd");
}

#[test]
fn full_table_evicts_the_oldest_entry_that_is_not_invalidated() {
    let mut table = TokenTable::with_entries_max(3);
    table
        .apply(key(1), TokenEvent::Registered { at: t(10) })
        .unwrap();
    table
        .apply(key(2), TokenEvent::Invalidated { at: t(1) })
        .unwrap();
    table
        .apply(key(3), TokenEvent::Registered { at: t(20) })
        .unwrap();
    let applied = table
        .apply(key(4), TokenEvent::Registered { at: t(30) })
        .unwrap();
    // key 2 is older but invalidated: key 1 goes.
    assert_eq!(applied.evicted, Some(key(1)));
    assert_eq!(table.check(&key(1)), TokenValidity::Unknown);
    assert_eq!(
        table.check(&key(2)),
        TokenValidity::Invalidated { at: t(1) }
    );
    assert_eq!(table.len(), 3);
    // Updating an existing key never evicts.
    let applied = table
        .apply(key(3), TokenEvent::Invalidated { at: t(40) })
        .unwrap();
    assert_eq!(applied.evicted, None);
    // key 3 is invalidated now, so key 4 is the only evictable one.
    assert_eq!(
        table
            .apply(key(5), TokenEvent::Invalidated { at: t(50) })
            .unwrap()
            .evicted,
        Some(key(4))
    );
    // Only invalidations left: a new key is refused, existing keys still update.
    assert_eq!(
        table.apply(key(6), TokenEvent::Registered { at: t(60) }),
        Err(TokenStateError::Full)
    );
    assert_eq!(table.len(), 3);
    assert_eq!(
        table
            .apply(key(5), TokenEvent::Registered { at: t(61) })
            .unwrap()
            .validity,
        TokenValidity::Valid
    );
    assert_eq!(
        table
            .apply(key(6), TokenEvent::Registered { at: t(62) })
            .unwrap()
            .evicted,
        Some(key(5))
    );
}

#[tokio::test]
async fn memory_state_applies_rules_and_streams_invalidations() {
    let state: SharedTokenState = std::sync::Arc::new(MemoryTokenState::new());
    let mut invalidations = state.subscribe();
    assert_eq!(state.check(&key(1)), TokenValidity::Unknown);
    assert_eq!(
        state.register(key(1), t(10)).await,
        Ok(TokenValidity::Valid)
    );
    assert_eq!(
        state.invalidate(key(1), t(20)).await,
        Ok(TokenValidity::Invalidated { at: t(20) })
    );
    // Same invalidation again: no effect, not published twice.
    state.invalidate(key(1), t(20)).await.unwrap();
    // An older registration arrives late: still invalid.
    assert_eq!(
        state.register(key(1), t(19)).await,
        Ok(TokenValidity::Invalidated { at: t(20) })
    );
    // A stale invalidation of a re-registered token does not take effect.
    state.register(key(2), t(30)).await.unwrap();
    assert_eq!(
        state.invalidate(key(2), t(29)).await,
        Ok(TokenValidity::Valid)
    );
    // A later invalidation of an invalidated token is published with its new time.
    state.invalidate(key(1), t(25)).await.unwrap();
    assert_eq!(
        state.check(&key(1)),
        TokenValidity::Invalidated { at: t(25) }
    );
    assert_eq!(
        state.unregister(key(2), t(31)).await,
        Ok(TokenValidity::Unknown)
    );
    assert_eq!(state.len(), 2);

    let first = invalidations.try_recv().unwrap();
    assert_eq!(
        first,
        Invalidation {
            key: key(1),
            at: t(20)
        }
    );
    assert_eq!(
        invalidations.try_recv().unwrap(),
        Invalidation {
            key: key(1),
            at: t(25)
        }
    );
    assert!(
        invalidations.try_recv().is_err(),
        "exactly the invalidations that took effect"
    );
}

#[tokio::test]
async fn memory_state_reports_full() {
    let state = MemoryTokenState::with_entries_max(1);
    state.invalidate(key(1), t(1)).await.unwrap();
    assert_eq!(
        state.register(key(2), t(2)).await,
        Err(TokenStateError::Full)
    );
    assert_eq!(state.snapshot().len(), 1);
}

fn event() -> impl Strategy<Value = (u8, TokenEvent)> {
    (0u8..4, 0u8..3, 0u64..12).prop_map(|(k, kind, at)| {
        let at = Timestamp::from_millis(at);
        let event = match kind {
            0 => TokenEvent::Registered { at },
            1 => TokenEvent::Unregistered { at },
            _ => TokenEvent::Invalidated { at },
        };
        (k, event)
    })
}

/// Events for small key numbers.
type Events = Vec<(u8, TokenEvent)>;

fn events_and_shuffle() -> impl Strategy<Value = (Events, Events)> {
    prop::collection::vec(event(), 0..40).prop_flat_map(|events| {
        let shuffled = Just(events.clone()).prop_shuffle();
        (Just(events), shuffled)
    })
}

fn apply_all(events: &[(u8, TokenEvent)], entries_max: usize) -> TokenTable {
    let mut table = TokenTable::with_entries_max(entries_max);
    for (k, event) in events {
        table.apply(key(*k), *event).unwrap();
    }
    table
}

proptest! {
    /// The same set of events in any order gives the same table.
    #[test]
    fn any_order_gives_the_same_state((events, shuffled) in events_and_shuffle()) {
        prop_assert_eq!(apply_all(&events, 8), apply_all(&shuffled, 8));
        let entries: Vec<_> = events.iter().map(|(_, e)| *e).collect();
        let shuffled_entries: Vec<_> = shuffled.iter().map(|(_, e)| *e).collect();
        prop_assert_eq!(fold(&entries), fold(&shuffled_entries));
    }

    /// Applying events again (duplicates, as a replay or a retry delivers them) changes nothing.
    #[test]
    fn applying_again_changes_nothing(events in prop::collection::vec(event(), 0..40)) {
        let once = apply_all(&events, 8);
        let mut twice = events.clone();
        twice.extend(events.iter().rev().cloned());
        prop_assert_eq!(&once, &apply_all(&twice, 8));
        for (k, event) in &events {
            let mut again = once.clone();
            let applied = again.apply(key(*k), *event).unwrap();
            prop_assert_eq!(applied.invalidation, None);
            prop_assert_eq!(&again, &once);
        }
    }

    /// `join` is the merge of two histories: commutative, associative, idempotent, and equal
    /// to folding both histories' events together.
    #[test]
    fn join_is_a_semilattice(a in prop::collection::vec(event(), 0..10), b in prop::collection::vec(event(), 0..10), c in prop::collection::vec(event(), 0..10)) {
        let entry = |events: &[(u8, TokenEvent)]| {
            let events: Vec<_> = events.iter().map(|(_, e)| *e).collect();
            fold(&events).unwrap_or_default()
        };
        let (x, y, z) = (entry(&a), entry(&b), entry(&c));
        prop_assert_eq!(x.join(y), y.join(x));
        prop_assert_eq!(x.join(y).join(z), x.join(y.join(z)));
        prop_assert_eq!(x.join(x), x);
        let both: Vec<_> = a.iter().chain(&b).cloned().collect();
        prop_assert_eq!(x.join(y), entry(&both));
    }

    /// The validity matches the rules written out directly from the event set.
    #[test]
    fn validity_follows_the_written_rules(events in prop::collection::vec(event(), 1..20)) {
        let events: Vec<_> = events.into_iter().map(|(_, e)| e).collect();
        let latest = |pick: fn(&TokenEvent) -> bool| events.iter().filter(|e| pick(e)).map(TokenEvent::at).max();
        let registered = latest(|e| matches!(e, TokenEvent::Registered { .. }));
        let unregistered = latest(|e| matches!(e, TokenEvent::Unregistered { .. }));
        let invalidated = latest(|e| matches!(e, TokenEvent::Invalidated { .. }));
        let expected = match (registered, unregistered, invalidated) {
            (r, _, Some(i)) if r.is_none_or(|r| r <= i) => TokenValidity::Invalidated { at: i },
            (Some(r), u, _) if u.is_none_or(|u| u < r) => TokenValidity::Valid,
            _ => TokenValidity::Unknown,
        };
        prop_assert_eq!(fold(&events).unwrap().validity(), expected);
    }
}
