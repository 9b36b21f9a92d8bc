//! The grid document's merge laws (docs/architecture.md, "Merge laws of the
//! grid document"), field by field: two replicas edit concurrently, merge
//! both ways, and must agree on what the law says.

use std::collections::{BTreeMap, BTreeSet};

use pesc_protocol::access::{Role, RoomList, User};
use pesc_protocol::doc::GridDoc;
use pesc_protocol::isolation::IsolationLevel;
use pesc_protocol::model::{Room, SharedFile};
use pesc_protocol::{BlobHash, NodeId};
use proptest::prelude::*;

fn actor(n: u8) -> automerge::ActorId {
    pesc_protocol::doc::actor_id(&NodeId::new(format!("node{n}")), [n; 8])
}

/// Two replicas of one grid with room `lab` (members u0 and u1).
fn pair() -> (GridDoc, GridDoc) {
    let mut a = GridDoc::genesis("g", actor(1)).unwrap();
    a.put_room(&Room {
        name: "lab".into(),
        public: false,
        admins: vec!["u0".into()],
        users: vec!["u1".into()],
    })
    .unwrap();
    a.commit();
    let bytes = a.save();
    let b = GridDoc::load_for("g", &bytes, actor(2)).unwrap();
    (a, b)
}

fn merged(mut a: GridDoc, mut b: GridDoc) -> (GridDoc, GridDoc) {
    a.commit();
    b.commit();
    let ab = a.save();
    let bb = b.save();
    let mut a2 = GridDoc::load_for("g", &ab, actor(3)).unwrap();
    let mut b2 = GridDoc::load_for("g", &bb, actor(4)).unwrap();
    let mut from_b = automerge::AutoCommit::load(&bb).unwrap();
    let mut from_a = automerge::AutoCommit::load(&ab).unwrap();
    a2.doc_mut().merge(&mut from_b).unwrap();
    b2.doc_mut().merge(&mut from_a).unwrap();
    (a2, b2)
}

fn lab(g: &GridDoc) -> Room {
    g.rooms()
        .unwrap()
        .into_iter()
        .find(|r| r.name == "lab")
        .unwrap()
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// One replica's edit of one field.
#[derive(Debug, Clone)]
enum Edit {
    /// A room member (user index, admins or users, present).
    Member(u8, bool, bool),
    /// A holder (blob index, node index, holds).
    Holder(u8, u8, bool),
    /// A node's placement (node index, room or none).
    Place(u8, Option<bool>),
    /// A user record (user index, disabled).
    User(u8, bool),
    /// A shared file (name index, size).
    File(u8, u64),
    MinIsolation(bool),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0u8..6, any::<bool>(), any::<bool>()).prop_map(|(u, a, p)| Edit::Member(u, a, p)),
        (0u8..3, 0u8..3, any::<bool>()).prop_map(|(b, n, h)| Edit::Holder(b, n, h)),
        (0u8..3, proptest::option::of(any::<bool>())).prop_map(|(n, r)| Edit::Place(n, r)),
        (0u8..3, any::<bool>()).prop_map(|(u, d)| Edit::User(u, d)),
        (0u8..3, 1u64..100).prop_map(|(f, s)| Edit::File(f, s)),
        any::<bool>().prop_map(Edit::MinIsolation),
    ]
}

fn apply(g: &mut GridDoc, e: &Edit) {
    match e {
        Edit::Member(u, admin, present) => {
            let list = if *admin {
                RoomList::Admins
            } else {
                RoomList::Users
            };
            g.set_room_member("lab", list, &format!("u{u}"), *present)
                .unwrap()
        }
        Edit::Holder(b, n, h) => g
            .set_holder(&BlobHash::of(&[*b]), &NodeId::new(format!("n{n}")), *h)
            .unwrap(),
        Edit::Place(n, r) => g
            .place_node(
                &NodeId::new(format!("n{n}")),
                r.map(|x| if x { "lab" } else { "other" }),
                false,
            )
            .unwrap(),
        Edit::User(u, disabled) => g
            .put_user(&User {
                name: format!("u{u}"),
                role: Role::User,
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
                    .into(),
                created_ms: 1,
                disabled: *disabled,
                tokens_after_ms: 0,
            })
            .unwrap(),
        Edit::File(f, size) => g
            .put_file(&SharedFile {
                name: format!("f{f}.csv"),
                hash: BlobHash::of(&[*f]),
                size: *size,
                owner: "u0".into(),
                created_ms: 1,
                rooms: Vec::new(),
            })
            .unwrap(),
        Edit::MinIsolation(s) => g
            .set_min_isolation(if *s {
                IsolationLevel::Sandbox
            } else {
                IsolationLevel::None
            })
            .unwrap(),
    }
}

/// Everything the laws speak of, as one value to compare replicas by.
fn state(g: &GridDoc) -> String {
    let holders: BTreeMap<u8, Vec<NodeId>> = (0u8..3)
        .map(|b| (b, g.holders(&BlobHash::of(&[b])).unwrap()))
        .collect();
    format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        g.rooms().unwrap(),
        holders,
        g.placements().unwrap(),
        g.users().unwrap(),
        g.files().unwrap(),
        g.min_isolation()
    )
}

#[test]
fn two_admins_adding_different_users_to_one_room_at_once_keep_both() {
    let (mut a, mut b) = pair();
    a.set_room_member("lab", RoomList::Users, "ana", true)
        .unwrap();
    b.set_room_member("lab", RoomList::Users, "bia", true)
        .unwrap();
    b.set_room_member("lab", RoomList::Admins, "caio", true)
        .unwrap();
    let (a, b) = merged(a, b);
    for g in [&a, &b] {
        let r = lab(g);
        assert_eq!(
            set(&r.users),
            set(&["u1".into(), "ana".into(), "bia".into()])
        );
        assert_eq!(set(&r.admins), set(&["u0".into(), "caio".into()]));
    }
}

#[test]
fn a_removal_on_one_replica_and_an_addition_on_the_other_both_stay() {
    let (mut a, mut b) = pair();
    a.set_room_member("lab", RoomList::Users, "u1", false)
        .unwrap();
    b.set_room_member("lab", RoomList::Users, "dora", true)
        .unwrap();
    let (a, _) = merged(a, b);
    assert_eq!(set(&lab(&a).users), set(&["dora".into()]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Concurrent edits of every field: both replicas converge, and each
    /// field follows its law. Room members and holders are sets edited key
    /// by key: a member edited on one replica only ends as that replica
    /// left it, whatever the other did to other members. Registers (users,
    /// files, placements, min_isolation) end at one of the written values.
    #[test]
    fn concurrent_edits_of_the_grid_converge_by_each_fields_law(
        ea in proptest::collection::vec(edit(), 0..12),
        eb in proptest::collection::vec(edit(), 0..12),
    ) {
        let (mut a, mut b) = pair();
        for e in &ea { apply(&mut a, e); }
        for e in &eb { apply(&mut b, e); }
        let (alone_a, alone_b) = (lab(&a), lab(&b));
        let touched = |edits: &[Edit]| -> BTreeSet<(u8, bool)> {
            edits.iter().filter_map(|e| match e {
                Edit::Member(u, admin, _) => Some((*u, *admin)),
                _ => None,
            }).collect()
        };
        let (ta, tb) = (touched(&ea), touched(&eb));
        let (ma, mb) = merged(a, b);
        prop_assert_eq!(state(&ma), state(&mb));
        let room = lab(&ma);
        for u in 0u8..6 {
            for admin in [false, true] {
                let name = format!("u{u}");
                let has = |r: &Room| if admin { r.admins.contains(&name) } else { r.users.contains(&name) };
                match (ta.contains(&(u, admin)), tb.contains(&(u, admin))) {
                    (true, false) => prop_assert_eq!(has(&room), has(&alone_a), "{} from a", name),
                    (false, true) => prop_assert_eq!(has(&room), has(&alone_b), "{} from b", name),
                    (true, true) => prop_assert!(has(&room) == has(&alone_a) || has(&room) == has(&alone_b)),
                    (false, false) => {
                        let base = (u == 0 && admin) || (u == 1 && !admin);
                        prop_assert_eq!(has(&room), base, "{} untouched", name);
                    }
                }
            }
        }
    }
}

#[test]
fn member_entries_a_peer_forges_are_skipped_and_recorded() {
    use automerge::ReadDoc;
    use automerge::transaction::Transactable;
    let (mut a, _) = pair();
    let rooms = match a.doc_mut().get(automerge::ROOT, "rooms").unwrap() {
        Some((automerge::Value::Object(_), id)) => id,
        other => panic!("no rooms map: {other:?}"),
    };
    let d = a.doc_mut();
    d.put(&rooms, "lab/users/no such name!", "1").unwrap();
    d.put(&rooms, "lab/users/eve", "yes").unwrap();
    d.put(&rooms, "lab/owners/eve", "1").unwrap();
    let r = lab(&a);
    assert_eq!(set(&r.users), set(&["u1".into()]));
    assert_eq!(set(&r.admins), set(&["u0".into()]));
    assert_eq!(a.skipped().list().1, 3, "{:?}", a.skipped().list().0);
}

/// Rebuilding a replica whole in memory changes nothing a reader or a peer
/// sees: the same entries, the same heads, and edits on either side after
/// it still merge.
#[test]
fn a_compacted_grid_reads_and_merges_as_before() {
    let (mut a, mut b) = pair();
    for i in 0..50u8 {
        a.set_room_member("lab", RoomList::Users, &format!("u{i}"), i % 3 != 0)
            .unwrap();
        a.commit();
    }
    let heads = a.doc_mut().get_heads();
    let before = lab(&a);
    a.compact().unwrap();
    assert_eq!(a.doc_mut().get_heads(), heads);
    assert_eq!(lab(&a), before);
    // Edits after the rebuild, on both sides, still meet.
    a.set_room_member("lab", RoomList::Admins, "ana", true)
        .unwrap();
    b.set_room_member("lab", RoomList::Users, "bob", true)
        .unwrap();
    let (a, b) = merged(a, b);
    for g in [&a, &b] {
        let r = lab(g);
        assert!(r.admins.contains(&"ana".to_string()), "{r:?}");
        assert!(r.users.contains(&"bob".to_string()), "{r:?}");
        assert!(r.users.contains(&"u1".to_string()), "{r:?}");
        assert!(!r.users.contains(&"u3".to_string()), "{r:?}");
    }
    // Its full save loads to the same document.
    let mut a = a;
    let again = GridDoc::load_for("g", &a.save(), actor(9)).unwrap();
    assert_eq!(lab(&again), lab(&a));
}
