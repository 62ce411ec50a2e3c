use super::*;
use crate::state::command::encode;
use herald_actors::apns::SigningKey;

fn key() -> SigningKey {
    let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    SigningKey::from_p8_pem(p8.as_bytes(), "ABC123DEFG", "TEAM123456").unwrap()
}

fn add(id: NodeId, region: &str) -> Command {
    Command::AddMember {
        id,
        addr: format!("10.0.0.{id}:7000"),
        region: region.into(),
    }
}

fn activate(id: NodeId) -> Command {
    Command::SetMemberState {
        id,
        state: MemberState::Active,
    }
}

fn run(machine: &mut StateMachine, commands: &[Command]) -> Vec<ApplyResult> {
    commands
        .iter()
        .map(|c| {
            let index = machine.applied_index() + 1;
            machine.apply(index, c)
        })
        .collect()
}

#[test]
fn membership_life_cycle() {
    let mut m = StateMachine::new();
    let results = run(
        &mut m,
        &[
            add(1, "eu"),
            add(1, "eu"),
            add(1, "us"),
            activate(1),
            activate(2),
            Command::SetMemberState {
                id: 1,
                state: MemberState::Removed,
            },
            activate(1),
        ],
    );
    assert_eq!(
        results,
        vec![
            ApplyResult::Applied,
            ApplyResult::Unchanged,
            ApplyResult::Rejected(Rejection::MemberExists(1)),
            ApplyResult::Applied,
            ApplyResult::Rejected(Rejection::UnknownMember(2)),
            ApplyResult::Applied,
            ApplyResult::Rejected(Rejection::MemberRemoved(1)),
        ]
    );
    assert_eq!(m.applied_index(), 7);
}

#[test]
fn shard_maps_need_newer_epochs_and_active_owners() {
    let mut m = StateMachine::new();
    run(
        &mut m,
        &[add(1, "eu"), add(2, "eu"), activate(1), activate(2)],
    );
    let assign = |epoch, owners: Vec<NodeId>| Command::AssignShards {
        region: "eu".into(),
        epoch,
        owners,
    };
    let results = run(
        &mut m,
        &[
            assign(1, vec![1, 2, 3]),
            assign(1, vec![1, 2, 1]),
            assign(1, vec![2, 2, 2]),
            assign(2, vec![2, 2]),
        ],
    );
    assert_eq!(
        results,
        vec![
            ApplyResult::Rejected(Rejection::IneligibleOwner(3)),
            ApplyResult::Applied,
            ApplyResult::Rejected(Rejection::StaleEpoch {
                current: 1,
                proposed: 1
            }),
            ApplyResult::Rejected(Rejection::ShardCountChanged {
                current: 3,
                proposed: 2
            }),
        ]
    );
    // Draining node 2 → the rebalance command moves only its shard.
    run(
        &mut m,
        &[Command::SetMemberState {
            id: 2,
            state: MemberState::Draining,
        }],
    );
    let command = m.rebalance_command("eu", 3).unwrap().unwrap();
    assert_eq!(command, assign(2, vec![1, 1, 1]));
    run(&mut m, &[command]);
    assert_eq!(m.rebalance_command("eu", 3).unwrap(), None);
}

#[test]
fn provider_tokens_newest_wins() {
    let key = key();
    let older = key.sign(Timestamp::from_secs(1_000)).unwrap();
    let newer = key.sign(Timestamp::from_secs(2_000)).unwrap();
    let set = |t: &herald_actors::apns::ProviderToken| Command::SetProviderToken {
        key_id: t.key_id().into(),
        jwt: t.jwt().into(),
        issued_at: t.issued_at(),
    };
    let mut m = StateMachine::new();
    let mismatched = Command::SetProviderToken {
        key_id: "OTHERKEY00".into(),
        jwt: newer.jwt().into(),
        issued_at: newer.issued_at(),
    };
    let garbage = Command::SetProviderToken {
        key_id: "ABC123DEFG".into(),
        jwt: "not.a.jwt".into(),
        issued_at: newer.issued_at(),
    };
    let results = run(&mut m, &[set(&newer), set(&older), mismatched, garbage]);
    assert_eq!(results[0], ApplyResult::Applied);
    assert_eq!(
        results[1],
        ApplyResult::Rejected(Rejection::StaleProviderToken)
    );
    assert!(matches!(
        results[2],
        ApplyResult::Rejected(Rejection::InvalidProviderToken(_))
    ));
    assert!(matches!(
        results[3],
        ApplyResult::Rejected(Rejection::InvalidProviderToken(_))
    ));
    let installed = m.provider_tokens()["ABC123DEFG"].token().unwrap();
    assert_eq!(installed, newer);
    // A key nobody mints for any more is forgotten once another key's token is that much
    // newer; until then it is kept.
    let other = {
        let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        SigningKey::from_p8_pem(p8.as_bytes(), "OTHER12345", "TEAM123456").unwrap()
    };
    let forgotten_after = super::PROVIDER_TOKEN_FORGOTTEN_AFTER.as_secs();
    let soon = other
        .sign(Timestamp::from_secs(2_000 + forgotten_after))
        .unwrap();
    assert_eq!(run(&mut m, &[set(&soon)]), vec![ApplyResult::Applied]);
    assert_eq!(m.provider_tokens().len(), 2);
    let later = other
        .sign(Timestamp::from_secs(2_001 + forgotten_after))
        .unwrap();
    assert_eq!(run(&mut m, &[set(&later)]), vec![ApplyResult::Applied]);
    assert_eq!(
        m.provider_tokens().keys().collect::<Vec<_>>(),
        vec!["OTHER12345"]
    );
}

fn populated() -> StateMachine {
    let mut m = StateMachine::new();
    run(
        &mut m,
        &[
            add(1, "eu"),
            activate(1),
            Command::AssignShards {
                region: "eu".into(),
                epoch: 1,
                owners: vec![1; 8],
            },
            Command::UpsertTenant {
                tenant: "acme".into(),
                team_id: "TEAM123456".into(),
                key_id: "ABC123DEFG".into(),
                topics: vec!["com.acme".into()],
                limits: TenantLimits {
                    pushes_per_second: 10,
                    burst: 5,
                },
            },
            Command::TokenEvents(vec![
                TokenEventRecord {
                    tenant: "acme".into(),
                    token: "AAAA".into(),
                    event: TokenEvent::Registered {
                        at: Timestamp::from_secs(1),
                    },
                },
                TokenEventRecord {
                    tenant: "acme".into(),
                    token: "aaaa".into(),
                    event: TokenEvent::Invalidated {
                        at: Timestamp::from_secs(2),
                    },
                },
                TokenEventRecord {
                    tenant: "acme".into(),
                    token: "bbbb".into(),
                    event: TokenEvent::Unregistered {
                        at: Timestamp::from_secs(3),
                    },
                },
            ]),
        ],
    );
    m
}

#[test]
fn token_events_reuse_last_writer_wins() {
    let m = populated();
    assert_eq!(
        m.check_token(&TokenKey::new("acme", "AaAa")),
        TokenValidity::Invalidated {
            at: Timestamp::from_secs(2)
        }
    );
    assert_eq!(m.token_table().len(), 2);
}

#[test]
fn snapshot_round_trips_and_is_canonical() {
    let m = populated();
    let bytes = m.snapshot().unwrap();
    let restored = StateMachine::restore(&bytes).unwrap();
    assert_eq!(restored, m);
    assert_eq!(restored.snapshot().unwrap(), bytes);
    for garbage in [&b""[..], b"\x01\x02", &bytes[..bytes.len() / 2]] {
        assert!(StateMachine::restore(garbage).is_err());
    }
}

#[test]
fn undecodable_entries_are_rejected_alike() {
    let mut m = StateMachine::new();
    assert!(matches!(
        m.apply_bytes(1, b"garbage"),
        ApplyResult::Rejected(Rejection::Undecodable(_))
    ));
    let bytes = encode(&add(1, "eu")).unwrap();
    assert_eq!(m.apply_bytes(2, &bytes), ApplyResult::Applied);
    m.skip(3);
    assert_eq!(m.applied_index(), 3);
}

#[test]
#[should_panic(expected = "in order")]
fn out_of_order_apply_is_a_bug() {
    let mut m = StateMachine::new();
    m.skip(2);
}

#[test]
fn member_life_cycle_moves_are_checked() {
    let mut m = StateMachine::new();
    let set = |id, state| Command::SetMemberState { id, state };
    let results = run(
        &mut m,
        &[
            add(1, "eu"),
            set(1, MemberState::Draining),
            activate(1),
            set(1, MemberState::Joining),
            set(1, MemberState::Draining),
            activate(1),
            set(1, MemberState::Draining),
            set(1, MemberState::Removed),
            add(2, "eu"),
            set(2, MemberState::Removed),
        ],
    );
    let invalid =
        |from, to| ApplyResult::Rejected(Rejection::InvalidTransition { id: 1, from, to });
    assert_eq!(
        results,
        vec![
            ApplyResult::Applied,
            invalid(MemberState::Joining, MemberState::Draining),
            ApplyResult::Applied,
            invalid(MemberState::Active, MemberState::Joining),
            ApplyResult::Applied,
            ApplyResult::Applied,
            ApplyResult::Applied,
            ApplyResult::Applied,
            ApplyResult::Applied,
            ApplyResult::Applied,
        ]
    );
}

#[test]
fn key_revocations_replicate_expire_and_survive_snapshots() {
    let revoke = |id: &str, until_ms: u64, now_ms: u64| Command::RevokeKey {
        id: id.into(),
        until_ms,
        now_ms,
    };
    let mut m = StateMachine::new();
    let v0 = m.revocations_version();
    assert_eq!(
        run(
            &mut m,
            &[
                revoke("k1", 1_000, 10),
                revoke("k1", 900, 20), // not later: unchanged
                revoke("k2", 5, 10),   // expired already
                revoke("k3", 2_000, 30),
            ]
        ),
        vec![
            ApplyResult::Applied,
            ApplyResult::Unchanged,
            ApplyResult::Unchanged,
            ApplyResult::Applied
        ]
    );
    assert_eq!(
        m.revoked_keys().keys().collect::<Vec<_>>(),
        vec!["k1", "k3"]
    );
    assert!(m.revocations_version() > v0);
    // A snapshot carries them; equal states give equal bytes.
    let restored = StateMachine::restore(&m.snapshot().unwrap()).unwrap();
    assert_eq!(restored.revoked_keys(), m.revoked_keys());
    assert_eq!(restored.snapshot().unwrap(), m.snapshot().unwrap());
    // Later commands prune what expired by their proposer's time.
    run(&mut m, &[revoke("k4", 3_000, 1_500)]);
    assert_eq!(
        m.revoked_keys().keys().collect::<Vec<_>>(),
        vec!["k3", "k4"]
    );
    assert!(revoke("", 1, 0).validate().is_err());
}

#[test]
fn devices_replicate_with_feedback_and_survive_snapshots() {
    use crate::state::devices::{DeviceApplied, DeviceChange, DeviceOp};
    let register = |token: &str, at_ms: u64| DeviceChange {
        tenant: "acme".into(),
        token: token.into(),
        op: DeviceOp::Register {
            topic: "com.example.app".into(),
            tags: vec!["beta".into(), "eu".into()],
            at_ms,
        },
    };
    let invalidate = |token: &str, at_ms: u64| TokenEventRecord {
        tenant: "acme".into(),
        token: token.into(),
        event: TokenEvent::Invalidated {
            at: Timestamp::from_millis(at_ms),
        },
    };
    let mut m = StateMachine::new();
    let results = run(
        &mut m,
        &[
            Command::Devices(vec![register("aa01", 1_000), register("aa02", 1_000)]),
            Command::TokenEvents(vec![invalidate("aa01", 2_000)]),
        ],
    );
    assert_eq!(
        results[0],
        ApplyResult::Devices(vec![DeviceApplied::Added, DeviceApplied::Added])
    );
    // The invalidation logged feedback and removed the device registered before it.
    let devices = m.devices();
    let (page, _) = devices.page("acme", None, &Default::default(), None, 10);
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].0, "aa02");
    let feedback = devices.feedback_since("acme", 0, 10);
    assert_eq!(feedback.entries.len(), 1);
    assert_eq!(feedback.entries[0].token, "aa01");
    assert!(matches!(
        m.check_token(&TokenKey::new("acme", "aa01")),
        TokenValidity::Invalidated { .. }
    ));
    // Registering again later revives the token (last writer wins by time).
    run(&mut m, &[Command::Devices(vec![register("aa01", 3_000)])]);
    assert_eq!(
        m.check_token(&TokenKey::new("acme", "aa01")),
        TokenValidity::Valid
    );
    let bytes = m.snapshot().unwrap();
    let restored = StateMachine::restore(&bytes).unwrap();
    assert_eq!(restored, m);
    assert_eq!(restored.snapshot().unwrap(), bytes);
    // Unsorted or too many tags are refused before they reach the log.
    let mut bad = register("aa03", 1);
    if let DeviceOp::Register { tags, .. } = &mut bad.op {
        tags.reverse();
    }
    assert!(encode(&Command::Devices(vec![bad])).is_err());
    assert!(encode(&Command::Devices(vec![])).is_err());
}

#[test]
fn webhooks_replicate_survive_snapshots_and_hide_their_secret() {
    use crate::state::WebhookRecord;
    let record = WebhookRecord {
        url: "http://hooks.example/herald".into(),
        secret: "very-secret-value".into(),
    };
    let set = |webhook: Option<WebhookRecord>| Command::SetWebhook {
        tenant: "acme".into(),
        webhook,
    };
    let mut m = StateMachine::new();
    let results = run(
        &mut m,
        &[set(Some(record.clone())), set(Some(record.clone()))],
    );
    assert_eq!(results, vec![ApplyResult::Applied, ApplyResult::Unchanged]);
    assert_eq!(m.webhooks().get("acme"), Some(&record));
    let restored = StateMachine::restore(&m.snapshot().unwrap()).unwrap();
    assert_eq!(restored, m);
    assert!(!format!("{record:?}").contains("very-secret-value"));
    assert_eq!(run(&mut m, &[set(None)]), vec![ApplyResult::Applied]);
    assert_eq!(run(&mut m, &[set(None)]), vec![ApplyResult::Unchanged]);
    assert!(m.webhooks().is_empty());
    let empty = WebhookRecord {
        url: String::new(),
        secret: "x".into(),
    };
    assert!(encode(&set(Some(empty))).is_err());
}

#[test]
fn api_tenants_replicate_survive_snapshots_and_take_their_webhook_along() {
    use crate::state::devices::{DeviceChange, DeviceOp};
    use crate::state::{ApiTenantRecord, WebhookRecord};
    let record = ApiTenantRecord {
        team_id: "TEAM123456".into(),
        key_id: "ABC123DEFG".into(),
        p8_pem: "-----BEGIN PRIVATE KEY-----".into(),
        queue_max: Some(100),
    };
    let create = |record: &ApiTenantRecord| Command::CreateApiTenant {
        tenant: "globex".into(),
        record: record.clone(),
    };
    let remove = Command::RemoveApiTenant {
        tenant: "globex".into(),
    };
    let other = ApiTenantRecord {
        key_id: "ZZZ123DEFG".into(),
        ..record.clone()
    };
    let hook = Command::SetWebhook {
        tenant: "globex".into(),
        webhook: Some(WebhookRecord {
            url: "http://hooks.example/h".into(),
            secret: "s".into(),
        }),
    };
    let device = Command::Devices(vec![DeviceChange {
        tenant: "globex".into(),
        token: "ab".repeat(32),
        op: DeviceOp::Register {
            topic: "com.globex.app".into(),
            tags: vec![],
            at_ms: 1,
        },
    }]);
    let mut m = StateMachine::new();
    let results = run(
        &mut m,
        &[create(&record), create(&record), create(&other), hook],
    );
    assert!(matches!(
        run(&mut m, &[device])[..],
        [ApplyResult::Devices(_)]
    ));
    m.devices.invalidated("globex", &"cd".repeat(32), 3);
    assert_eq!(
        results,
        vec![
            ApplyResult::Applied,
            // A retried creation is harmless; another tenant under the same id is refused.
            ApplyResult::Unchanged,
            ApplyResult::Rejected(Rejection::TenantExists("globex".into())),
            ApplyResult::Applied,
        ]
    );
    assert_eq!(m.api_tenants().get("globex"), Some(&record));
    let restored = StateMachine::restore(&m.snapshot().unwrap()).unwrap();
    assert_eq!(restored, m);
    assert_eq!(m.devices().device_count(), 1);
    // Removing it removes its webhook, devices and feedback; removing it again changes
    // nothing.
    assert_eq!(
        run(&mut m, &[remove.clone(), remove]),
        vec![ApplyResult::Applied, ApplyResult::Unchanged]
    );
    assert!(m.api_tenants().is_empty() && m.webhooks().is_empty());
    assert_eq!(m.devices().device_count(), 0);
    let feedback = m.devices().feedback_since("globex", 0, 10);
    assert!(feedback.entries.is_empty(), "{feedback:?}");
}
