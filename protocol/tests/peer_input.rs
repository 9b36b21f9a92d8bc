//! What a peer writes into a document is checked before use: one malformed
//! entry is skipped and recorded, never empties a map or a request, and a
//! spec no user could submit makes its request unreadable (never allocates
//! or writes where it should not).

mod common;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use common::*;
use pesc_protocol::NodeId;
use pesc_protocol::access::{Role, User};
use pesc_protocol::doc::{GridDoc, RequestDoc, check_readable};
use pesc_protocol::model::{Attempt, AttemptState};

fn user(name: &str) -> User {
    User {
        name: name.into(),
        role: Role::User,
        password_hash: "$argon2id$x".into(),
        created_ms: 1,
        disabled: false,
        tokens_after_ms: 0,
    }
}

/// The map object `name` at the root of `doc`.
fn root_map(doc: &AutoCommit, name: &str) -> automerge::ObjId {
    match doc.get(ROOT, name).unwrap() {
        Some((automerge::Value::Object(ObjType::Map), id)) => id,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn a_malformed_grid_entry_is_skipped_and_the_rest_still_reads() {
    let mut g = GridDoc::genesis("g", actor("a", 0)).unwrap();
    g.put_user(&user("alice")).unwrap();
    g.put_user(&user("carol")).unwrap();
    let mut p = spec(1, "alice", 1, 0, 1).process;
    g.put_process(&p).unwrap();
    let doc = g.doc_mut();
    let users = root_map(doc, "users");
    doc.put(&users, "mallory", "{not json").unwrap();
    // A record under another name's key: would let "bob" log in as admin.
    let mut admin = user("admin");
    admin.role = Role::Admin;
    doc.put(&users, "bob", serde_json::to_string(&admin).unwrap())
        .unwrap();
    doc.put(&users, "num", 7).unwrap();
    // A process whose file name is absolute: would be written on the host.
    p.file_name = "/etc/cron.d/pwned".into();
    let procs = root_map(doc, "processes");
    doc.put(&procs, p.id.as_str(), serde_json::to_string(&p).unwrap())
        .unwrap();
    let mut names: Vec<String> = g.users().unwrap().into_iter().map(|u| u.name).collect();
    names.sort();
    assert_eq!(names, ["alice", "carol"]);
    assert!(g.user("bob").unwrap().is_none());
    assert!(g.user("alice").unwrap().is_some());
    assert!(g.processes().unwrap().is_empty());
    assert!(g.process(&p.id).unwrap().is_none());
    let (skipped, total) = g.skipped().list();
    assert_eq!(total, 4, "{skipped:?}");
    let entries: Vec<&str> = skipped.iter().map(|(e, _)| e.as_str()).collect();
    for e in ["users/mallory", "users/bob", "users/num"] {
        assert!(entries.contains(&e), "{e} not in {entries:?}");
    }
    assert!(
        skipped
            .iter()
            .any(|(e, why)| e.starts_with("processes/") && why.contains("plain file name")),
        "{skipped:?}"
    );
    // A peer overwriting whole maps at the root hides nothing, now or
    // after a reload.
    let doc = g.doc_mut();
    doc.put(ROOT, "users", "gone").unwrap();
    doc.put_object(ROOT, "rooms", ObjType::Map).unwrap();
    let bytes = g.save();
    for g in [g, GridDoc::load(&bytes, actor("b", 0)).unwrap()] {
        assert_eq!(g.users().unwrap().len(), 2);
        assert!(g.rooms().unwrap().iter().any(|r| r.name == "General"));
    }
    assert!(GridDoc::load_for("another", &bytes, actor("b", 0)).is_err());
}

#[test]
fn a_spec_no_user_could_submit_makes_its_request_unreadable() {
    for (what, edit) in [
        (
            "repetitions",
            Box::new(|s: &mut pesc_protocol::model::RequestSpec| s.repetitions = u32::MAX)
                as Box<dyn Fn(&mut _)>,
        ),
        (
            "file name",
            Box::new(|s: &mut pesc_protocol::model::RequestSpec| {
                s.process.file_name = "/root/.bashrc".into()
            }),
        ),
        (
            "entry",
            Box::new(|s: &mut pesc_protocol::model::RequestSpec| {
                s.process.entry = "../../bin/sh".into()
            }),
        ),
    ] {
        // Made by a peer as a whole: the creation change carries the spec.
        let mut s = spec(2, "ana", 3, 0, 1);
        edit(&mut s);
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "schema", 1u64).unwrap();
        doc.put(ROOT, "kind", "request").unwrap();
        doc.put(ROOT, "spec", serde_json::to_string(&s).unwrap())
            .unwrap();
        doc.put_object(ROOT, "cancel", ObjType::Map).unwrap();
        doc.put_object(ROOT, "attempts", ObjType::Map).unwrap();
        let bytes = doc.save();
        let err = RequestDoc::load(&bytes, actor("b", 0))
            .err()
            .unwrap_or_else(|| panic!("a spec with a bad {what} loaded"));
        assert!(err.to_string().contains("spec"), "{what}: {err}");
    }
}

#[test]
fn malformed_attempts_are_skipped_and_the_request_keeps_its_runs() {
    let mut d = RequestDoc::create(spec(3, "ana", 3, 0, 1), actor("a", 0)).unwrap();
    let n = NodeId::new("a");
    let mut ok = Attempt::claim(0, 0, n.clone(), 1);
    ok.state = AttemptState::Succeeded;
    ok.exit_code = Some(0);
    ok.finished_ms = Some(2);
    d.put_attempt(&ok).unwrap();
    d.commit();
    let doc = d.doc_mut();
    let attempts = root_map(doc, "attempts");
    // Epoch u32::MAX: the next epoch would overflow.
    let top = doc
        .put_object(&attempts, format!("1.{}.x", u32::MAX), ObjType::Map)
        .unwrap();
    doc.put(&top, "state", "running").unwrap();
    // An unknown state, a rank out of range, a key that is no attempt key.
    let bogus = doc.put_object(&attempts, "2.0.x", ObjType::Map).unwrap();
    doc.put(&bogus, "state", "exploded").unwrap();
    let far = doc.put_object(&attempts, "99.0.x", ObjType::Map).unwrap();
    doc.put(&far, "state", "running").unwrap();
    let junk = doc.put_object(&attempts, "junk", ObjType::Map).unwrap();
    doc.put(&junk, "state", "running").unwrap();
    d.rematerialize().unwrap();
    assert_eq!(d.skipped().len(), 4, "{:?}", d.skipped());
    assert_eq!(
        d.run(0, |_| true).state,
        pesc_protocol::model::RunState::Succeeded
    );
    let v = d.run(1, |_| true);
    assert_eq!(v.state, pesc_protocol::model::RunState::Queued);
    // The saved document, loaded elsewhere, reads the same.
    let bytes = d.save();
    let e = RequestDoc::load(&bytes, actor("b", 0)).unwrap();
    assert_eq!(e.skipped().len(), 4);
    assert_eq!(e.unfinished_ranks().count(), 2);
    // A peer overwriting the spec, the attempts or the cancel map at the
    // root changes nothing: they are the ones the creation made.
    let mut e = e;
    let doc = e.doc_mut();
    let mut big = e_spec_with(doc);
    big.repetitions = 9;
    let doc = e.doc_mut();
    doc.put(ROOT, "spec", serde_json::to_string(&big).unwrap())
        .unwrap();
    doc.put(ROOT, "attempts", "gone").unwrap();
    doc.put_object(ROOT, "cancel", ObjType::Map).unwrap();
    let c = doc.put_object(ROOT, "cancel2", ObjType::Map).unwrap();
    doc.put(&c, "x", 1).unwrap();
    e.rematerialize().unwrap();
    assert_eq!(e.spec().repetitions, 3);
    assert_eq!(
        e.run(0, |_| true).state,
        pesc_protocol::model::RunState::Succeeded
    );
    let bytes = e.save();
    let f = RequestDoc::load(&bytes, actor("c", 0)).unwrap();
    assert_eq!(f.spec().repetitions, 3);
    assert!(!f.is_cancelled());
    assert_eq!(
        f.run(0, |_| true).state,
        pesc_protocol::model::RunState::Succeeded
    );
}

/// The spec as the document's root shows it now.
fn e_spec_with(doc: &mut AutoCommit) -> pesc_protocol::model::RequestSpec {
    match doc.get(ROOT, "spec").unwrap() {
        Some((automerge::Value::Scalar(s), _)) => {
            serde_json::from_str(s.as_str().unwrap()).unwrap()
        }
        other => panic!("{other:?}"),
    }
}

/// A scalar at `obj`/`key`, as text.
fn text_at(doc: &AutoCommit, obj: &automerge::ObjId, key: &str) -> Option<String> {
    match doc.get(obj, key).unwrap() {
        Some((automerge::Value::Scalar(s), _)) => Some(s.to_string()),
        _ => None,
    }
}

#[test]
fn a_document_from_a_newer_pesc_is_read_and_keeps_what_this_node_does_not_know() {
    // A newer PESC made the request: a higher schema, a root field and an
    // attempt field this version does not know.
    let mut d = RequestDoc::create(spec(4, "ana", 2, 0, 1), actor("new", 0)).unwrap();
    let mut done = Attempt::claim(0, 0, NodeId::new("new"), 1);
    done.state = AttemptState::Succeeded;
    done.exit_code = Some(0);
    done.finished_ms = Some(2);
    d.put_attempt(&done).unwrap();
    let doc = d.doc_mut();
    doc.put(ROOT, "schema", 2u64).unwrap();
    doc.put(ROOT, "future_root", "kept").unwrap();
    let attempts = root_map(doc, "attempts");
    let key = doc.keys(&attempts).next().unwrap();
    let a = match doc.get(&attempts, &key).unwrap() {
        Some((_, id)) => id,
        None => unreachable!(),
    };
    doc.put(&a, "future_field", "kept too").unwrap();
    d.commit();
    let bytes = d.save();

    // This node reads it, runs rank 1 and writes its own attempt.
    let mut old = RequestDoc::load(&bytes, actor("old", 0)).unwrap();
    assert_eq!(
        old.run(0, |_| true).state,
        pesc_protocol::model::RunState::Succeeded
    );
    let mut mine = Attempt::claim(1, 0, NodeId::new("old"), 3);
    mine.state = AttemptState::Succeeded;
    mine.exit_code = Some(0);
    mine.finished_ms = Some(4);
    old.put_attempt(&mine).unwrap();
    old.commit();
    assert!(old.is_finished());

    // What it did not know is still there, for the nodes that do.
    let mut again = RequestDoc::load(&old.save(), actor("new", 1)).unwrap();
    let doc = again.doc_mut();
    assert_eq!(
        text_at(doc, &ROOT, "future_root").as_deref(),
        Some("\"kept\"")
    );
    let attempts = root_map(doc, "attempts");
    let a = match doc.get(&attempts, &key).unwrap() {
        Some((_, id)) => id,
        None => unreachable!(),
    };
    assert_eq!(
        text_at(doc, &a, "future_field").as_deref(),
        Some("\"kept too\"")
    );
}

#[test]
fn a_document_that_needs_a_newer_reader_is_refused_saying_to_upgrade() {
    let mut d = RequestDoc::create(spec(5, "ana", 2, 0, 1), actor("new", 0)).unwrap();
    d.doc_mut().put(ROOT, "schema", 3u64).unwrap();
    d.doc_mut().put(ROOT, "min_reader", 2u64).unwrap();
    d.commit();
    let err = RequestDoc::load(&d.save(), actor("old", 0))
        .err()
        .expect("refused");
    assert!(matches!(err, pesc_protocol::Error::TooNew(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("newer PESC") && msg.contains("upgrade"),
        "{msg}"
    );
    assert!(
        msg.contains("schema 3") && msg.contains("reads schema 1"),
        "{msg}"
    );

    // The grid's document too: it loads (the node keeps it and its grid,
    // rather than starting afresh), and the same rule says it is not safe
    // to use; removing `min_reader` makes it usable again.
    let mut g = GridDoc::genesis("g", actor("new", 0)).unwrap();
    g.doc_mut().put(ROOT, "min_reader", 2u64).unwrap();
    let mut old = GridDoc::load_for("g", &g.save(), actor("old", 0)).unwrap();
    let err = check_readable(old.doc_mut(), "grid's document").expect_err("refused");
    assert!(matches!(err, pesc_protocol::Error::TooNew(_)), "{err:?}");
    old.doc_mut().delete(ROOT, "min_reader").unwrap();
    assert!(check_readable(old.doc_mut(), "grid's document").is_ok());

    // A higher schema alone (new fields only) is read.
    let mut g = GridDoc::genesis("g", actor("new", 0)).unwrap();
    g.doc_mut().put(ROOT, "schema", 2u64).unwrap();
    let mut g = GridDoc::load_for("g", &g.save(), actor("old", 0)).unwrap();
    assert!(check_readable(g.doc_mut(), "grid's document").is_ok());
}
