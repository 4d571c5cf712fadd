//! A property test of the pure part of the recovery seam (SPEC §15, `publications.rs`): `place` and
//! `Seam`, driven over a model of the task's deliveries, not the task itself (the task, with real
//! clients, nodes and Redis, is covered by js-client-tests/test/history.test.js and channels.test.js): whatever the interleaving of
//! a recovering subscribe with the channel's publications, the client receives every publication
//! after its `since` exactly once and in order, or is told `recovered:false` and receives every
//! publication after the position it was given, exactly once and in order.
//!
//! The model: publications 1..=n of one epoch. The node had delivered 1..=p when the subscription
//! started; the history was read when it held 1..=r (r >= p: other nodes may have appended more);
//! the node then delivers p+1..=n, some before the client had its answer (held, sent at the `Go`)
//! and the rest after (through the catching-up room, then the channel's room): both go through the
//! same rule in the same order, so where that split falls does not change what the client gets.
//! The history keeps the last `size`. The client's `since` may be anywhere, also ahead of this node (it
//! came from a node that was ahead).

use proptest::prelude::*;
use realtime_gateway::app::publications::{place, Seam};
use realtime_gateway::storage::history::{Position, Publication, Tail};

const EPOCH: &str = "e";

fn tail(after: Option<u64>, r: u64, size: u64) -> Tail {
    let kept_from = r.saturating_sub(size) + 1;
    let from = after.map_or(u64::MAX, |s| (s + 1).max(kept_from));
    let publications = (from..=r)
        .take(size as usize)
        .map(|offset| Publication { offset, ts: 0, data: serde_json::json!(offset) })
        .collect();
    Tail { position: Position { offset: r, epoch: EPOCH.into() }, publications }
}

/// What the client receives, in order: the replay, the held publications past the seam, then the
/// rest as this node delivers them (skipped while catching up, as the catching-up room does).
fn received(since: Option<u64>, n: u64, p: u64, r: u64, size: u64) -> (Option<bool>, Position, Vec<u64>) {
    let since_pos = since.map(|s| Position { offset: s, epoch: EPOCH.into() });
    let (recovered, start, replay) = place(since_pos.as_ref(), tail(since, r, size));
    let seam = Seam::new(start.clone());
    let mut got: Vec<u64> = replay.iter().map(|p| p.offset).collect();
    let mut caught_up = false;
    for o in p + 1..=n {
        // Held (o <= h) or live (o > h): either way skipped until one is past the seam.
        if caught_up || seam.past(Some(o), Some(EPOCH)) {
            caught_up = true;
            got.push(o);
        }
    }
    (recovered, start, got)
}

fn interleaving() -> impl Strategy<Value = (u64, u64, u64, u64, Option<u64>)> {
    (0u64..80, 1u64..40).prop_flat_map(|(n, size)| {
        (0..=n)
            .prop_flat_map(move |p| (p..=n, prop::option::of(0..=n)).prop_map(move |(r, since)| (n, size, p, r, since)))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn no_gap_no_duplicate_at_the_seam((n, size, p, r, since) in interleaving()) {
        let (recovered, start, got) = received(since, n, p, r, size);
        prop_assert_eq!(start.offset, r);
        match (since, recovered) {
            (None, None) => {
                prop_assert_eq!(got, (r + 1..=n).collect::<Vec<_>>());
            }
            (Some(s), Some(true)) => {
                prop_assert_eq!(got, (s + 1..=n).collect::<Vec<_>>(), "recovered from {}", s);
            }
            (Some(s), Some(false)) => {
                // Only when the position is gone (older than what is kept) or not reached yet.
                let kept_from = r.saturating_sub(size) + 1;
                prop_assert!(s > r || s + 1 < kept_from, "since {} within kept {}..={} must recover", s, kept_from, r);
                prop_assert_eq!(got, (r + 1..=n).collect::<Vec<_>>());
            }
            other => prop_assert!(false, "unexpected answer {:?}", other),
        }
    }
}

#[test]
fn another_epoch_is_not_recovered_and_nothing_is_replayed() {
    let since = Position { offset: 3, epoch: "old".into() };
    let (recovered, start, replay) = place(Some(&since), tail(Some(3), 10, 100));
    assert_eq!(recovered, Some(false));
    assert_eq!(start.offset, 10);
    assert!(replay.is_empty());
    // A publication of a newer epoch is always past the seam, whatever its offset.
    assert!(Seam::new(start).past(Some(1), Some("newer")));
}

#[test]
fn a_channel_without_publications_matches_the_start_of_any_epoch() {
    let since = Position { offset: 0, epoch: String::new() };
    let (recovered, _, replay) = place(Some(&since), tail(Some(0), 4, 100));
    assert_eq!(recovered, Some(true));
    assert_eq!(replay.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
}
