//! Tests of choosing what an incremental backup builds on, and of when the chain policy
//! wants a full backup instead.

use super::*;

fn physical(id: &str, cluster: &str, timeline: u32, chain: &[&str]) -> Manifest {
    Manifest {
        system_identifier: Some(cluster.into()),
        timeline: Some(timeline),
        chain: chain.iter().map(|c| c.to_string()).collect(),
        ..Manifest::fixture(id)
    }
}

#[test]
fn builds_on_the_newest_backup_of_the_cluster_and_timeline() {
    let full = physical("20260101T000000Z", "7001", 1, &[]);
    let incremental = physical("20260102T000000Z", "7001", 1, &["20260101T000000Z"]);
    let other = physical("20260103T000000Z", "9999", 1, &[]);
    let all = [&full, &incremental, &other];
    let parent = choose_parent(&all, "db", "7001", 1).expect("parent");
    assert_eq!(parent.backup_id, "20260102T000000Z");

    let promoted = choose_parent(&all, "db", "7001", 2).expect_err("other timeline");
    assert!(
        promoted.contains("timeline 1") && promoted.contains("timeline 2"),
        "{promoted}"
    );

    let foreign = choose_parent(&[&other], "db", "7001", 1).expect_err("other cluster");
    assert!(foreign.contains("9999"), "{foreign}");

    let none = choose_parent(&[], "db", "7001", 1).expect_err("nothing");
    assert!(none.contains("no physical backup"), "{none}");
}

#[test]
fn the_policy_starts_a_new_chain_when_it_is_long_or_old() {
    let full = physical("20260101T000000Z", "7001", 1, &[]);
    let first = physical("20260102T000000Z", "7001", 1, &["20260101T000000Z"]);
    let all = [&full, &first];
    let day = 86_400;
    let at =
        |days: i64| Timestamp::from_second(full.end_time.as_second() + days * day).expect("time");
    let every = |n| ChainPolicy {
        full_every: Some(n),
        ..ChainPolicy::default()
    };
    let after = |days: i64| ChainPolicy {
        full_after_seconds: Some(days * day),
        ..ChainPolicy::default()
    };
    assert_eq!(chain_due(&first, &all, every(3), at(1)), None);
    let due = chain_due(&first, &all, every(2), at(1)).expect("two is the limit");
    assert!(due.contains("holds 2 backups"), "{due}");
    assert_eq!(chain_due(&first, &all, after(7), at(6)), None);
    let due = chain_due(&first, &all, after(7), at(7)).expect("a week old");
    assert!(
        due.contains("full backup 20260101T000000Z is 7.0 days old"),
        "{due}"
    );
    assert_eq!(chain_due(&full, &all, ChainPolicy::default(), at(30)), None);
}
