//! Unit tests of the store: every operation of ops.rs and every error path, against real LMDB
//! environments in temporary directories.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

// ---- helpers ----------------------------------------------------------------------------------

/// The message of an error of the named variant; panics on any other outcome.
macro_rules! assert_err {
    ($e:expr, $variant:ident) => {
        match $e {
            Err(Error::$variant(message)) => message,
            Err(other) => panic!("expected {} error, got {:?}", stringify!($variant), other),
            Ok(_) => panic!("expected {} error, got Ok", stringify!($variant)),
        }
    };
}

const A: &str = "acme";
const B: &str = "globex";

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    (dir, s)
}

fn store_with(options: StoreOptions) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), options).unwrap();
    (dir, s)
}

fn retention(f: impl FnOnce(&mut Retention)) -> StoreOptions {
    let mut r = Retention::default();
    f(&mut r);
    StoreOptions {
        retention: r,
        ..StoreOptions::default()
    }
}

fn user(text: &str) -> NewTurn {
    NewTurn::new(Role::User, text)
}

fn assistant(text: &str) -> NewTurn {
    NewTurn::new(Role::Assistant, text)
}

fn turns(texts: &[&str]) -> Vec<NewTurn> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| if i % 2 == 0 { user(t) } else { assistant(t) })
        .collect()
}

fn response(status: ResponseStatus, output_count: u32) -> NewResponse {
    NewResponse {
        id: None,
        status,
        model: "test-model".into(),
        output_count,
        usage: Usage {
            prompt_tokens: 11,
            completion_tokens: 7,
            cached_tokens: 3,
        },
        error: None,
        metadata: None,
    }
}

fn completed() -> NewResponse {
    response(ResponseStatus::Completed, 1)
}

fn no_options() -> AppendOptions {
    AppendOptions::default()
}

fn thread(id: &str) -> Anchor {
    Anchor::Thread(id.to_owned())
}

fn after_response(id: &str) -> Anchor {
    Anchor::Response(id.to_owned())
}

/// Appends plain turns to a thread.
fn push(s: &Store, owner: &str, id: &str, texts: &[&str]) -> Appended {
    s.append(owner, &thread(id), &turns(texts), None, &no_options())
        .unwrap()
}

/// Appends turns after `anchor` under a completed response; returns the response id.
fn respond(s: &Store, owner: &str, anchor: &Anchor, texts: &[&str]) -> String {
    s.append(
        owner,
        anchor,
        &turns(texts),
        Some(&completed()),
        &no_options(),
    )
    .unwrap()
    .response
    .unwrap()
    .id
}

fn contents(s: &Store, owner: &str, anchor: &Anchor) -> Vec<String> {
    s.with_history(owner, anchor, |views| {
        Ok(views.iter().map(|v| v.content.to_owned()).collect())
    })
    .unwrap()
}

fn turn_count(s: &Store) -> u64 {
    s.stats().unwrap().turns
}

fn head_key(t: &ThreadRecord) -> TurnKey {
    ids::parse_turn_id(t.head.as_deref().unwrap()).unwrap()
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

// ---- open, format, persistence ----------------------------------------------------------------

#[test]
fn open_creates_a_versioned_store() {
    let (dir, s) = store();
    assert_eq!(s.format_version().unwrap(), FORMAT_VERSION);
    assert_eq!(s.path(), dir.path());
    assert_eq!(s.retention(), &Retention::default());
    let stats = s.stats().unwrap();
    assert_eq!((stats.threads, stats.responses, stats.turns), (0, 0, 0));
    assert!(stats.map_bytes >= DEFAULT_MAP_SIZE as u64);
    assert!(dir.path().join("data.mdb").exists());
    s.verify().unwrap();
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let s = Store::open(&nested, StoreOptions::default()).unwrap();
    assert_eq!(s.format_version().unwrap(), FORMAT_VERSION);
}

#[test]
fn open_on_a_file_is_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    assert_err!(
        Store::open(&file.join("store"), StoreOptions::default()),
        Storage
    );
}

#[test]
fn opening_a_store_twice_in_one_process_is_a_clear_error() {
    let (dir, s) = store();
    let message = assert_err!(Store::open(dir.path(), StoreOptions::default()), Storage);
    assert!(
        message.contains("already open in this process"),
        "{message}"
    );
    // The first handle is unharmed, and once it is closed the path opens again.
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    drop(s);
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.get_thread(A, "t").unwrap().id, "t");
}

#[test]
fn reopen_persists_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (t, r, keys) = {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        s.create_thread(A, Some("chat"), Some(r#"{"topic":"x"}"#), true, false)
            .unwrap();
        let appended = push(&s, A, "chat", &["hello", "hi there"]);
        let r = respond(&s, A, &Anchor::Root, &["q", "a"]);
        s.set_token_counts(42, &[(appended.turn_ids[0], 5)])
            .unwrap();
        (appended.thread.unwrap(), r, appended.turn_ids)
    };
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.get_thread(A, "chat").unwrap(), t);
    assert_eq!(contents(&s, A, &thread("chat")), ["hello", "hi there"]);
    assert_eq!(s.get_response(A, &r).unwrap().id, r);
    assert_eq!(contents(&s, A, &after_response(&r)), ["q", "a"]);
    assert_eq!(s.token_counts(42, &keys).unwrap(), vec![Some(5), None]);
    assert_eq!(turn_count(&s), 4);
    s.verify().unwrap();
}

/// Rewrites `meta` entries of a closed store with heed directly.
fn rewrite_meta(path: &Path, edit: impl FnOnce(&mut heed::RwTxn<'_>, Db)) {
    // SAFETY: the store is closed; nothing else maps this environment.
    let env = unsafe {
        EnvOpenOptions::new()
            .max_dbs(16)
            .map_size(1 << 20)
            .open(path)
    }
    .unwrap();
    let mut txn = env.write_txn().unwrap();
    let meta: Db = env.open_database(&txn, Some("meta")).unwrap().unwrap();
    edit(&mut txn, meta);
    txn.commit().unwrap();
    env.prepare_for_closing().wait();
}

#[test]
fn unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        s.create_thread(A, Some("t"), None, true, false).unwrap();
    }
    rewrite_meta(dir.path(), |txn, meta| {
        meta.put(txn, b"version", &(FORMAT_VERSION + 1).to_le_bytes())
            .unwrap();
    });
    let message = assert_err!(Store::open(dir.path(), StoreOptions::default()), Format);
    assert!(
        message.contains(&format!("version {}", FORMAT_VERSION + 1)),
        "{message}"
    );
    assert!(
        message.contains(&format!("reads version {FORMAT_VERSION}")),
        "{message}"
    );

    // A missing or malformed version is refused as well.
    rewrite_meta(dir.path(), |txn, meta| {
        meta.put(txn, b"version", b"1").unwrap();
    });
    let message = assert_err!(Store::open(dir.path(), StoreOptions::default()), Format);
    assert!(message.contains("unknown"), "{message}");
    rewrite_meta(dir.path(), |txn, meta| {
        meta.delete(txn, b"version").unwrap();
    });
    assert_err!(Store::open(dir.path(), StoreOptions::default()), Format);

    // Another program's data under the same database name.
    rewrite_meta(dir.path(), |txn, meta| {
        meta.put(txn, b"format", b"something-else").unwrap();
        meta.put(txn, b"version", &FORMAT_VERSION.to_le_bytes())
            .unwrap();
    });
    let message = assert_err!(Store::open(dir.path(), StoreOptions::default()), Format);
    assert!(message.contains("not a threadloom store"), "{message}");

    // The refusals changed nothing: restoring the header opens the old data.
    rewrite_meta(dir.path(), |txn, meta| {
        meta.put(txn, b"format", FORMAT_NAME).unwrap();
    });
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.get_thread(A, "t").unwrap().id, "t");
}

// ---- threads ----------------------------------------------------------------------------------

#[test]
fn create_and_get_thread() {
    let (_dir, s) = store();
    let before = now_ms();
    let t = s
        .create_thread(
            A,
            Some("user1:session-2.b_c"),
            Some(r#"{ "b": 2, "a": [1] }"#),
            true,
            false,
        )
        .unwrap();
    assert_eq!(t.id, "user1:session-2.b_c");
    assert_eq!(t.owner, A);
    assert_eq!(t.head, None);
    // Stored compactly (key order is serde_json's business, the content is not).
    assert!(!t.metadata.contains(' '), "{}", t.metadata);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&t.metadata).unwrap(),
        serde_json::json!({"a": [1], "b": 2})
    );
    assert_eq!(t.state, ThreadState::Open);
    assert!(t.visible);
    assert_eq!(t.message_count, 0);
    assert!(t.created_ms >= before && t.created_ms <= now_ms());
    assert_eq!(t.last_activity_ms, t.created_ms);
    assert_eq!(s.get_thread(A, &t.id).unwrap(), t);

    // Generated ids.
    let g = s.create_thread(A, None, None, false, false).unwrap();
    assert!(g.id.starts_with(ids::THREAD_PREFIX), "{}", g.id);
    ids::validate_thread_id(&g.id).unwrap();
    assert_eq!(g.metadata, "{}");
    assert!(!g.visible);
    assert_eq!(s.get_thread(A, &g.id).unwrap(), g);
    assert_ne!(
        s.create_thread(A, None, None, true, false).unwrap().id,
        g.id
    );
    assert_eq!(s.stats().unwrap().threads, 3);
    s.verify().unwrap();
}

#[test]
fn create_thread_errors_change_nothing() {
    let (_dir, s) = store();
    let t = s
        .create_thread(A, Some("t"), Some(r#"{"k":1}"#), true, false)
        .unwrap();

    let message = assert_err!(
        s.create_thread(A, Some("t"), None, true, false),
        StateConflict
    );
    assert!(message.contains("already exists"), "{message}");
    // exist_ok hands back the existing thread untouched (its metadata is not replaced).
    assert_eq!(
        s.create_thread(A, Some("t"), Some(r#"{"k":2}"#), false, true)
            .unwrap(),
        t
    );
    // The same id under another owner is another thread.
    assert_eq!(
        s.create_thread(B, Some("t"), None, true, false)
            .unwrap()
            .owner,
        B
    );

    for bad in ["", "has space", "slash/no", "é", &"x".repeat(129)] {
        let message = assert_err!(
            s.create_thread(A, Some(bad), None, true, false),
            InvalidInput
        );
        assert!(message.contains("invalid thread id"), "{message}");
    }
    for bad_owner in ["", "a\0b", &"o".repeat(129)] {
        assert_err!(
            s.create_thread(bad_owner, None, None, true, false),
            InvalidInput
        );
    }
    for bad in ["[1,2]", "\"text\"", "{", "null", "1"] {
        assert_err!(
            s.create_thread(A, Some("m"), Some(bad), true, false),
            InvalidInput
        );
    }
    let big = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES));
    let message = assert_err!(
        s.create_thread(A, Some("m"), Some(&big), true, false),
        LimitExceeded
    );
    assert!(message.contains("16384"), "{message}");
    // Exactly at the limit is fine.
    let fits = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES - 8));
    assert_eq!(
        s.create_thread(A, Some("fits"), Some(&fits), true, false)
            .unwrap()
            .metadata
            .len(),
        MAX_METADATA_BYTES
    );

    assert_eq!(s.stats().unwrap().threads, 3);
    assert_err!(s.get_thread(A, "m"), NotFound);
    assert_eq!(s.get_thread(A, "t").unwrap(), t);
}

#[test]
fn get_thread_errors() {
    let (_dir, s) = store();
    s.create_thread(A, Some("mine"), None, true, false).unwrap();
    let message = assert_err!(s.get_thread(A, "nope"), NotFound);
    assert!(message.message.contains("nope"), "{message:?}");
    assert_eq!((message.kind, message.id.as_str()), ("thread", "nope"));
    // Another tenant's thread reads exactly like a missing one.
    let message = assert_err!(s.get_thread(B, "mine"), NotFound);
    assert!(message.message.contains("not found"), "{message:?}");
    assert_err!(s.get_thread(A, "bad id"), InvalidInput);
    assert_err!(s.get_thread("", "mine"), InvalidInput);
}

#[test]
fn list_threads_newest_activity_first_with_cursors() {
    let (_dir, s) = store();
    let mut visible = Vec::new();
    for i in 0..5 {
        visible.push(
            s.create_thread(A, Some(&format!("v{i}")), None, true, false)
                .unwrap()
                .id,
        );
        sleep_ms(3);
    }
    for i in 0..2 {
        s.create_thread(A, Some(&format!("h{i}")), None, false, false)
            .unwrap();
        sleep_ms(3);
    }
    s.create_thread(B, Some("other"), None, true, false)
        .unwrap();
    s.create_thread(B, Some("other-hidden"), None, false, false)
        .unwrap();
    sleep_ms(3);
    // A new message makes the oldest thread the most recently active.
    push(&s, A, "v0", &["bump"]);

    let ids_of = |page: &ThreadPage| {
        page.threads
            .iter()
            .map(|t| t.id.clone())
            .collect::<Vec<_>>()
    };
    let all = s.list_threads(A, true, 100, None).unwrap();
    assert_eq!(ids_of(&all), ["v0", "v4", "v3", "v2", "v1"]);
    assert_eq!(all.next_cursor, None);
    assert!(all.threads.iter().all(|t| t.owner == A && t.visible));

    // Pages of two walk the same order without gaps or repeats.
    let mut walked = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = s.list_threads(A, true, 2, cursor.as_deref()).unwrap();
        assert!(page.threads.len() <= 2);
        walked.extend(ids_of(&page));
        pages += 1;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(walked, ids_of(&all));
    assert_eq!(pages, 3);

    // A page that ends exactly at the last thread has no cursor.
    let first = s.list_threads(A, true, 4, None).unwrap();
    assert!(first.next_cursor.is_some());
    let last = s
        .list_threads(A, true, 1, first.next_cursor.as_deref())
        .unwrap();
    assert_eq!(ids_of(&last), ["v1"]);
    assert_eq!(last.next_cursor, None);
    let exact = s.list_threads(A, true, 5, None).unwrap();
    assert_eq!(exact.threads.len(), 5);
    assert_eq!(exact.next_cursor, None);

    // Hidden threads are listed separately; owners never see each other's threads.
    assert_eq!(
        ids_of(&s.list_threads(A, false, 100, None).unwrap()),
        ["h1", "h0"]
    );
    assert_eq!(
        ids_of(&s.list_threads(B, true, 100, None).unwrap()),
        ["other"]
    );
    assert_eq!(
        ids_of(&s.list_threads(B, false, 100, None).unwrap()),
        ["other-hidden"]
    );
    assert!(s
        .list_threads("nobody", true, 10, None)
        .unwrap()
        .threads
        .is_empty());
    // A cursor from one owner's listing does not leak into another's.
    let a_cursor = s
        .list_threads(A, true, 1, None)
        .unwrap()
        .next_cursor
        .unwrap();
    for t in s
        .list_threads(B, true, 100, Some(&a_cursor))
        .unwrap()
        .threads
    {
        assert_eq!(t.owner, B);
    }

    // Deleted threads leave the listing.
    s.delete_thread(A, "v4").unwrap();
    assert_eq!(
        ids_of(&s.list_threads(A, true, 100, None).unwrap()),
        ["v0", "v3", "v2", "v1"]
    );
    // The cursor stays valid after the thread it names is gone.
    let page = s.list_threads(A, true, 1, None).unwrap();
    s.delete_thread(A, "v0").unwrap();
    assert_eq!(
        ids_of(
            &s.list_threads(A, true, 100, page.next_cursor.as_deref())
                .unwrap()
        ),
        ["v3", "v2", "v1"]
    );
}

#[test]
fn list_threads_errors() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    assert_err!(s.list_threads(A, true, 0, None), InvalidInput);
    assert_err!(s.list_threads(A, true, 1001, None), InvalidInput);
    assert_eq!(
        s.list_threads(A, true, 1000, None).unwrap().threads.len(),
        1
    );
    for bad in ["zz", "0", "00", "0011223344556677", "not hex at all"] {
        let message = assert_err!(s.list_threads(A, true, 10, Some(bad)), InvalidInput);
        assert!(message.contains("cursor"), "{message}");
    }
    assert_err!(s.list_threads("", true, 10, None), InvalidInput);
}

#[test]
fn update_thread_metadata() {
    let (_dir, s) = store();
    let t = s
        .create_thread(A, Some("t"), Some(r#"{"a":1}"#), true, false)
        .unwrap();
    let u = s.update_thread(A, "t", Some(r#"{"b": 2}"#), None).unwrap();
    assert_eq!(u.metadata, r#"{"b":2}"#);
    assert_eq!(u.state, ThreadState::Open);
    assert_eq!(
        (u.created_ms, u.message_count, &u.head),
        (t.created_ms, t.message_count, &t.head)
    );
    assert_eq!(s.get_thread(A, "t").unwrap(), u);
    // Nothing to change is a no-op.
    assert_eq!(s.update_thread(A, "t", None, None).unwrap(), u);

    // Bad metadata, unknown threads and other owners change nothing.
    assert_err!(s.update_thread(A, "t", Some("[]"), None), InvalidInput);
    let big = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES));
    assert_err!(s.update_thread(A, "t", Some(&big), None), LimitExceeded);
    assert_err!(s.update_thread(A, "missing", Some("{}"), None), NotFound);
    assert_err!(
        s.update_thread(B, "t", Some("{}"), Some(ThreadState::Archived)),
        NotFound
    );
    assert_err!(s.update_thread(A, "bad id", Some("{}"), None), InvalidInput);
    assert_eq!(s.get_thread(A, "t").unwrap(), u);
}

#[test]
fn update_thread_every_state_transition() {
    use ThreadState::*;
    let (_dir, s) = store();
    let all = [Open, Locked, Archived];
    for (i, from) in all.into_iter().enumerate() {
        for (j, to) in all.into_iter().enumerate() {
            let id = format!("t{i}{j}");
            s.create_thread(A, Some(&id), None, true, false).unwrap();
            if from != Open {
                s.update_thread(A, &id, None, Some(from)).unwrap();
            }
            let legal = matches!(
                (from, to),
                (Open, Open)
                    | (Open, Locked)
                    | (Open, Archived)
                    | (Locked, Locked)
                    | (Locked, Open)
                    | (Locked, Archived)
            );
            let outcome = s.update_thread(A, &id, Some(r#"{"changed":true}"#), Some(to));
            if legal {
                let t = outcome.unwrap();
                assert_eq!(t.state, to, "{from:?} -> {to:?}");
                assert_eq!(t.metadata, r#"{"changed":true}"#);
            } else {
                let message = assert_err!(outcome, StateConflict);
                assert!(
                    message.contains(from.as_str()) && message.contains(to.as_str()),
                    "{message}"
                );
                let t = s.get_thread(A, &id).unwrap();
                assert_eq!(t.state, from, "a refused transition changed the state");
                assert_eq!(
                    t.metadata, "{}",
                    "a refused transition changed the metadata"
                );
            }
        }
    }
}

#[test]
fn archived_threads_refuse_metadata_changes() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), Some(r#"{"v":1}"#), true, false)
        .unwrap();
    // Archiving and changing metadata in one call is allowed (the change happens before).
    let t = s
        .update_thread(A, "t", Some(r#"{"v":2}"#), Some(ThreadState::Archived))
        .unwrap();
    assert_eq!(
        (t.state, t.metadata.as_str()),
        (ThreadState::Archived, r#"{"v":2}"#)
    );
    let message = assert_err!(
        s.update_thread(A, "t", Some(r#"{"v":3}"#), None),
        StateConflict
    );
    assert!(message.contains("archived"), "{message}");
    assert_eq!(s.get_thread(A, "t").unwrap(), t);
    // Locked threads may still change metadata.
    s.create_thread(A, Some("l"), None, true, false).unwrap();
    s.update_thread(A, "l", None, Some(ThreadState::Locked))
        .unwrap();
    assert_eq!(
        s.update_thread(A, "l", Some(r#"{"x":1}"#), None)
            .unwrap()
            .metadata,
        r#"{"x":1}"#
    );
}

#[test]
fn delete_thread_frees_only_unreachable_turns() {
    let (_dir, s) = store();
    // A thread whose turns nothing else reaches: all of them go.
    s.create_thread(A, Some("alone"), None, true, false)
        .unwrap();
    let alone = push(&s, A, "alone", &["1", "2", "3"]);
    s.set_token_counts(7, &[(alone.turn_ids[0], 3), (alone.turn_ids[2], 9)])
        .unwrap();
    // An empty thread deletes too.
    s.create_thread(A, Some("empty"), None, true, false)
        .unwrap();
    s.delete_thread(A, "empty").unwrap();
    assert_eq!(turn_count(&s), 3);
    s.delete_thread(A, "alone").unwrap();
    assert_eq!(turn_count(&s), 0);
    assert_eq!(
        s.token_counts(7, &alone.turn_ids).unwrap(),
        vec![None, None, None]
    );
    assert_err!(s.get_thread(A, "alone"), NotFound);
    s.verify().unwrap();

    // A thread that shares turns with responses: [u1 a1] then [u2 a2] under response ra (still
    // in the thread), and a branch [b1] after a1 under response rb.
    s.create_thread(A, Some("shared"), None, true, false)
        .unwrap();
    let first = push(&s, A, "shared", &["u1", "a1"]);
    let ra = s
        .append(
            A,
            &thread("shared"),
            &turns(&["u2", "a2"]),
            Some(&completed()),
            &no_options(),
        )
        .unwrap();
    let ra = ra.response.unwrap();
    assert_eq!(ra.thread_id.as_deref(), Some("shared"));
    let rb = respond(&s, A, &Anchor::Turn(first.turn_ids[1]), &["b1"]);
    s.push_check(5);

    s.delete_thread(A, "shared").unwrap();
    s.push_check(5);
    assert_err!(s.get_thread(A, "shared"), NotFound);
    assert_eq!(
        contents(&s, A, &after_response(&ra.id)),
        ["u1", "a1", "u2", "a2"]
    );
    assert_eq!(contents(&s, A, &after_response(&rb)), ["u1", "a1", "b1"]);

    // Dropping ra frees u2 and a2; a1 still leads to b1.
    s.delete_response(A, &ra.id).unwrap();
    s.push_check(3);
    assert_eq!(contents(&s, A, &after_response(&rb)), ["u1", "a1", "b1"]);
    s.delete_response(A, &rb).unwrap();
    s.push_check(0);

    // A thread whose head a live response also names keeps that response's turns alive.
    s.create_thread(A, Some("t2"), None, true, false).unwrap();
    let r = s
        .append(
            A,
            &thread("t2"),
            &turns(&["x", "y"]),
            Some(&completed()),
            &no_options(),
        )
        .unwrap()
        .response
        .unwrap();
    push(&s, A, "t2", &["z"]);
    s.push_check(3);
    s.delete_thread(A, "t2").unwrap();
    s.push_check(2);
    assert_eq!(contents(&s, A, &after_response(&r.id)), ["x", "y"]);
}

impl Store {
    /// Test helper: the store holds `turns` turns and its reference counts are consistent.
    fn push_check(&self, turns: u64) {
        assert_eq!(self.stats().unwrap().turns, turns);
        self.verify().unwrap();
    }
}

#[test]
fn delete_thread_errors() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    push(&s, A, "t", &["keep"]);
    assert_err!(s.delete_thread(A, "missing"), NotFound);
    assert_err!(s.delete_thread(B, "t"), NotFound);
    assert_err!(s.delete_thread(A, "bad id"), InvalidInput);
    assert_eq!(s.get_thread(A, "t").unwrap().message_count, 1);
    s.delete_thread(A, "t").unwrap();
    assert_err!(s.delete_thread(A, "t"), NotFound);
    // The id is free again.
    assert_eq!(
        s.create_thread(A, Some("t"), None, true, false)
            .unwrap()
            .message_count,
        0
    );
}

// ---- appends ----------------------------------------------------------------------------------

#[test]
fn append_to_a_thread_moves_its_head() {
    let (_dir, s) = store();
    let t0 = s.create_thread(A, Some("t"), None, true, false).unwrap();
    sleep_ms(3);
    let mut reasoning = assistant("4");
    reasoning.reasoning = Some("2 + 2".into());
    let tool = NewTurn::new(Role::Tool, "{\"ok\":true}");
    let system = NewTurn::new(Role::System, "be brief");
    let out = s
        .append(
            A,
            &thread("t"),
            &[system, user("2+2?"), reasoning, tool],
            None,
            &no_options(),
        )
        .unwrap();
    assert_eq!(out.turn_ids.len(), 4);
    assert_eq!(out.response, None);
    let t = out.thread.unwrap();
    assert_eq!(t.head, Some(ids::turn_id_string(&out.turn_ids[3])));
    assert_eq!(t.message_count, 4);
    assert!(t.last_activity_ms > t0.last_activity_ms);
    assert_eq!(t.created_ms, t0.created_ms);
    assert_eq!(s.get_thread(A, "t").unwrap(), t);

    s.with_history(A, &thread("t"), |views| {
        let roles: Vec<_> = views.iter().map(|v| v.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::Tool]
        );
        assert_eq!(views[2].reasoning, Some("2 + 2"));
        assert_eq!(views[1].reasoning, None);
        for (i, v) in views.iter().enumerate() {
            assert_eq!(v.id, out.turn_ids[i]);
            assert_eq!(v.depth, i as u32 + 1);
            assert_eq!(v.owner, A);
            assert_eq!(v.parent, i.checked_sub(1).map(|p| out.turn_ids[p]));
        }
        Ok(())
    })
    .unwrap();

    let again = push(&s, A, "t", &["more"]);
    assert_eq!(again.thread.unwrap().message_count, 5);
    assert_eq!(contents(&s, A, &thread("t")).len(), 5);
    s.verify().unwrap();
}

#[test]
fn append_validation_errors_store_nothing() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let before = s.get_thread(A, "t").unwrap();

    let message = assert_err!(
        s.append(A, &thread("t"), &[], None, &no_options()),
        InvalidInput
    );
    assert!(message.contains("empty"), "{message}");
    // Root and turn anchors need a response to hold the new turns.
    let message = assert_err!(
        s.append(A, &Anchor::Root, &turns(&["x"]), None, &no_options()),
        InvalidInput
    );
    assert!(message.contains("response"), "{message}");
    let r = respond(&s, A, &Anchor::Root, &["q", "a"]);
    let last = ids::parse_turn_id(&s.get_response(A, &r).unwrap().last_turn).unwrap();
    assert_err!(
        s.append(A, &Anchor::Turn(last), &turns(&["x"]), None, &no_options()),
        InvalidInput
    );
    assert_err!(
        s.append(A, &after_response(&r), &turns(&["x"]), None, &no_options()),
        InvalidInput
    );
    // More outputs than turns.
    let message = assert_err!(
        s.append(
            A,
            &thread("t"),
            &turns(&["x"]),
            Some(&response(ResponseStatus::Completed, 2)),
            &no_options()
        ),
        InvalidInput
    );
    assert!(message.contains("output_count"), "{message}");
    // Bad response metadata.
    let mut bad = completed();
    bad.metadata = Some("[]".into());
    assert_err!(
        s.append(A, &thread("t"), &turns(&["x"]), Some(&bad), &no_options()),
        InvalidInput
    );
    // Bad owner.
    assert_err!(
        s.append("", &thread("t"), &turns(&["x"]), None, &no_options()),
        InvalidInput
    );
    // Unknown or foreign anchors.
    assert_err!(
        s.append(A, &thread("nope"), &turns(&["x"]), None, &no_options()),
        NotFound
    );
    assert_err!(
        s.append(B, &thread("t"), &turns(&["x"]), None, &no_options()),
        NotFound
    );
    assert_err!(
        s.append(A, &thread("bad id"), &turns(&["x"]), None, &no_options()),
        InvalidInput
    );
    assert_eq!(s.get_thread(A, "t").unwrap(), before);
    assert_eq!(turn_count(&s), 2);
    assert_eq!(s.stats().unwrap().responses, 1);
    s.verify().unwrap();
}

#[test]
fn oversize_turns_are_refused() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let huge = NewTurn::new(Role::User, "x".repeat(MAX_TURN_BYTES + 1));
    let message = assert_err!(
        s.append(A, &thread("t"), &[user("fine"), huge], None, &no_options()),
        LimitExceeded
    );
    assert!(message.contains(&MAX_TURN_BYTES.to_string()), "{message}");
    // Content and reasoning count together.
    let mut split = NewTurn::new(Role::Assistant, "y".repeat(MAX_TURN_BYTES / 2 + 1));
    split.reasoning = Some("z".repeat(MAX_TURN_BYTES / 2));
    assert_err!(
        s.append(A, &thread("t"), &[split], None, &no_options()),
        LimitExceeded
    );
    assert_eq!(turn_count(&s), 0);
    assert_eq!(s.get_thread(A, "t").unwrap().message_count, 0);
}

#[test]
fn locked_and_archived_threads_refuse_appends() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    push(&s, A, "t", &["one"]);
    s.update_thread(A, "t", None, Some(ThreadState::Locked))
        .unwrap();
    let before = s.get_thread(A, "t").unwrap();
    let message = assert_err!(
        s.append(A, &thread("t"), &turns(&["two"]), None, &no_options()),
        StateConflict
    );
    assert!(message.contains("locked"), "{message}");
    assert_err!(
        s.append(
            A,
            &thread("t"),
            &turns(&["two"]),
            Some(&completed()),
            &no_options()
        ),
        StateConflict
    );
    assert_eq!(s.get_thread(A, "t").unwrap(), before);
    assert_eq!(turn_count(&s), 1);
    assert_eq!(s.stats().unwrap().responses, 0);

    // Unlocked, it takes messages again.
    s.update_thread(A, "t", None, Some(ThreadState::Open))
        .unwrap();
    push(&s, A, "t", &["two"]);
    s.update_thread(A, "t", None, Some(ThreadState::Archived))
        .unwrap();
    let message = assert_err!(
        s.append(A, &thread("t"), &turns(&["three"]), None, &no_options()),
        StateConflict
    );
    assert!(message.contains("archived"), "{message}");
    assert_eq!(contents(&s, A, &thread("t")), ["one", "two"]);
    // Its turns may still be branched from by turn id (a new conversation, not the thread).
    let head = head_key(&s.get_thread(A, "t").unwrap());
    let r = respond(&s, A, &Anchor::Turn(head), &["three"]);
    assert_eq!(
        contents(&s, A, &after_response(&r)),
        ["one", "two", "three"]
    );
    assert_eq!(s.get_thread(A, "t").unwrap().message_count, 2);
}

#[test]
fn expected_head_guards_concurrent_edits() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let expect = |head: Option<TurnKey>| AppendOptions {
        expected_head: Some(head),
        ..AppendOptions::default()
    };
    // An empty thread's head is none.
    let first = s
        .append(A, &thread("t"), &turns(&["1"]), None, &expect(None))
        .unwrap();
    let h1 = first.turn_ids[0];
    let message = assert_err!(
        s.append(A, &thread("t"), &turns(&["x"]), None, &expect(None)),
        StateConflict
    );
    assert!(message.contains("head"), "{message}");
    let second = s
        .append(A, &thread("t"), &turns(&["2"]), None, &expect(Some(h1)))
        .unwrap();
    // The old head is stale now.
    assert_err!(
        s.append(A, &thread("t"), &turns(&["x"]), None, &expect(Some(h1))),
        StateConflict
    );
    s.append(
        A,
        &thread("t"),
        &turns(&["3"]),
        None,
        &expect(Some(second.turn_ids[0])),
    )
    .unwrap();
    assert_eq!(contents(&s, A, &thread("t")), ["1", "2", "3"]);
    assert_eq!(turn_count(&s), 3);
}

#[test]
fn responses_record_inputs_and_outputs() {
    let (_dir, s) = store();
    let before = now_ms();
    let mut new = response(ResponseStatus::Incomplete, 2);
    new.metadata = Some(r#"{ "trace": "abc" }"#.into());
    new.error = Some("length".into());
    let out = s
        .append(
            A,
            &Anchor::Root,
            &turns(&["sys?", "q", "a1", "a2"]),
            Some(&new),
            &no_options(),
        )
        .unwrap();
    assert_eq!(out.thread, None);
    let r = out.response.unwrap();
    assert!(r.id.starts_with(ids::RESPONSE_PREFIX), "{}", r.id);
    ids::validate_response_id(&r.id).unwrap();
    assert_eq!(r.owner, A);
    assert_eq!(r.status, ResponseStatus::Incomplete);
    assert_eq!(r.model, "test-model");
    assert_eq!(r.last_turn, ids::turn_id_string(&out.turn_ids[3]));
    assert_eq!(r.parent_turn, None);
    assert_eq!((r.input_count, r.output_count), (2, 2));
    assert_eq!(r.thread_id, None);
    assert_eq!(r.previous_response_id, None);
    assert_eq!(r.usage.prompt_tokens, 11);
    assert_eq!(r.error.as_deref(), Some("length"));
    assert_eq!(r.metadata, r#"{"trace":"abc"}"#);
    assert!(r.created_ms >= before);
    assert_eq!(s.get_response(A, &r.id).unwrap(), r);

    // Continuing from a response records the link and the parent turn.
    let next = s
        .append(
            A,
            &after_response(&r.id),
            &turns(&["q2", "a3"]),
            Some(&completed()),
            &no_options(),
        )
        .unwrap();
    let n = next.response.unwrap();
    assert_eq!(n.previous_response_id.as_deref(), Some(r.id.as_str()));
    assert_eq!(n.parent_turn.as_deref(), Some(r.last_turn.as_str()));
    assert_eq!((n.input_count, n.output_count), (1, 1));
    assert_eq!(
        contents(&s, A, &after_response(&n.id)),
        ["sys?", "q", "a1", "a2", "q2", "a3"]
    );
    // Zero outputs (inputs only) are allowed.
    let inputs_only = s
        .append(
            A,
            &after_response(&n.id),
            &turns(&["q3"]),
            Some(&response(ResponseStatus::Completed, 0)),
            &no_options(),
        )
        .unwrap()
        .response
        .unwrap();
    assert_eq!((inputs_only.input_count, inputs_only.output_count), (1, 0));
    s.verify().unwrap();
}

#[test]
fn response_anchors_check_status_owner_and_window() {
    let (_dir, s) = store_with(retention(|r| r.anchor_window_ms = 0));
    let mut failed = response(ResponseStatus::Failed, 1);
    failed.error = Some("boom".into());
    let f = s
        .append(
            A,
            &Anchor::Root,
            &turns(&["q", "partial"]),
            Some(&failed),
            &no_options(),
        )
        .unwrap()
        .response
        .unwrap();
    // Failed responses are kept for inspection...
    assert_eq!(
        s.get_response(A, &f.id).unwrap().status,
        ResponseStatus::Failed
    );
    assert_eq!(contents(&s, A, &after_response(&f.id)), ["q", "partial"]);
    // ...but are no anchor.
    let message = assert_err!(
        s.append(
            A,
            &after_response(&f.id),
            &turns(&["x"]),
            Some(&completed()),
            &no_options()
        ),
        StateConflict
    );
    assert!(message.contains("failed"), "{message}");

    let inc = s
        .append(
            A,
            &Anchor::Root,
            &turns(&["q", "cut"]),
            Some(&response(ResponseStatus::Incomplete, 1)),
            &no_options(),
        )
        .unwrap()
        .response
        .unwrap();
    let ok = s.append(
        A,
        &after_response(&inc.id),
        &turns(&["go on"]),
        Some(&completed()),
        &no_options(),
    );
    assert!(ok.is_ok());

    // Other tenants, unknown and malformed ids.
    assert_err!(
        s.append(
            B,
            &after_response(&inc.id),
            &turns(&["x"]),
            Some(&completed()),
            &no_options()
        ),
        NotFound
    );
    let unknown = ids::new_response_id();
    assert_err!(
        s.append(
            A,
            &after_response(&unknown),
            &turns(&["x"]),
            Some(&completed()),
            &no_options()
        ),
        NotFound
    );
    assert_err!(
        s.append(
            A,
            &after_response("resp_nope"),
            &turns(&["x"]),
            Some(&completed()),
            &no_options()
        ),
        InvalidInput
    );

    // The anchor window (zero here) only applies when the caller asks for it.
    sleep_ms(5);
    let windowed = AppendOptions {
        anchor_window: true,
        ..AppendOptions::default()
    };
    let message = assert_err!(
        s.append(
            A,
            &after_response(&inc.id),
            &turns(&["late"]),
            Some(&completed()),
            &windowed
        ),
        NotFound
    );
    assert!(message.message.contains("window"), "{message:?}");
    s.append(
        A,
        &after_response(&inc.id),
        &turns(&["late"]),
        Some(&completed()),
        &no_options(),
    )
    .unwrap();
    // A failed response outside the window is still refused for its status.
    assert_err!(
        s.append(
            A,
            &after_response(&f.id),
            &turns(&["x"]),
            Some(&completed()),
            &windowed
        ),
        StateConflict
    );
    assert_eq!(turn_count(&s), 6);
    s.verify().unwrap();
}

#[test]
fn turn_anchors_branch_and_check_owner() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let base = push(&s, A, "t", &["u1", "a1", "u2", "a2"]);
    let a1 = base.turn_ids[1];
    let r1 = respond(&s, A, &Anchor::Turn(a1), &["u2'", "a2'"]);
    let r2 = respond(&s, A, &Anchor::Turn(a1), &["u2''"]);
    assert_eq!(contents(&s, A, &thread("t")), ["u1", "a1", "u2", "a2"]);
    assert_eq!(
        contents(&s, A, &after_response(&r1)),
        ["u1", "a1", "u2'", "a2'"]
    );
    assert_eq!(contents(&s, A, &after_response(&r2)), ["u1", "a1", "u2''"]);
    let r = s.get_response(A, &r1).unwrap();
    assert_eq!(r.parent_turn, Some(ids::turn_id_string(&a1)));
    assert_eq!(r.previous_response_id, None);
    // Nothing was copied: 4 + 2 + 1 turns.
    s.push_check(7);

    // Another owner's turn reads as missing; so does an unknown one.
    let message = assert_err!(
        s.append(
            B,
            &Anchor::Turn(a1),
            &turns(&["x"]),
            Some(&completed()),
            &no_options()
        ),
        NotFound
    );
    assert!(
        message.message.contains(&ids::turn_id_string(&a1)),
        "{message:?}"
    );
    assert_err!(
        s.append(
            A,
            &Anchor::Turn(ids::random_bits()),
            &turns(&["x"]),
            Some(&completed()),
            &no_options()
        ),
        NotFound
    );
    assert_err!(s.with_history(B, &Anchor::Turn(a1), |_| Ok(())), NotFound);
    s.push_check(7);
}

#[test]
fn the_message_limit_is_atomic() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let many: Vec<NewTurn> = (0..MAX_THREAD_MESSAGES - 1)
        .map(|i| user(&i.to_string()))
        .collect();
    let big = s
        .append(A, &thread("t"), &many, None, &no_options())
        .unwrap();
    let last = s
        .append(
            A,
            &thread("t"),
            &turns(&["last"]),
            Some(&completed()),
            &no_options(),
        )
        .unwrap();
    let full = last.thread.unwrap();
    assert_eq!(full.message_count, MAX_THREAD_MESSAGES);
    let r = last.response.unwrap().id;
    let stored = turn_count(&s);
    assert_eq!(stored, MAX_THREAD_MESSAGES as u64);

    let message = assert_err!(
        s.append(A, &thread("t"), &turns(&["over"]), None, &no_options()),
        LimitExceeded
    );
    assert!(message.contains("10000"), "{message}");
    assert_err!(
        s.append(
            A,
            &after_response(&r),
            &turns(&["over"]),
            Some(&completed()),
            &no_options()
        ),
        LimitExceeded
    );
    assert_err!(
        s.append(
            A,
            &Anchor::Turn(head_key(&full)),
            &turns(&["over"]),
            Some(&completed()),
            &no_options()
        ),
        LimitExceeded
    );
    // A branch from turn 9,998 may add two turns but not three.
    let t9998 = big.turn_ids[9_997];
    assert_err!(
        s.append(
            A,
            &Anchor::Turn(t9998),
            &turns(&["a", "b", "c"]),
            Some(&completed()),
            &no_options()
        ),
        LimitExceeded
    );
    assert_eq!(turn_count(&s), stored);
    assert_eq!(s.get_thread(A, "t").unwrap(), full);
    let branch = respond(&s, A, &Anchor::Turn(t9998), &["a", "b"]);
    assert_eq!(
        s.with_history(A, &after_response(&branch), |v| Ok(v.len()))
            .unwrap(),
        MAX_THREAD_MESSAGES as usize
    );

    // One call over the limit on a fresh thread stores nothing either.
    s.create_thread(A, Some("fresh"), None, true, false)
        .unwrap();
    let too_many: Vec<NewTurn> = (0..=MAX_THREAD_MESSAGES).map(|_| user("x")).collect();
    assert_err!(
        s.append(A, &thread("fresh"), &too_many, None, &no_options()),
        LimitExceeded
    );
    assert_err!(
        s.append(
            A,
            &Anchor::Root,
            &too_many,
            Some(&completed()),
            &no_options()
        ),
        LimitExceeded
    );
    assert_eq!(turn_count(&s), stored + 2);
    assert_eq!(s.get_thread(A, "fresh").unwrap().message_count, 0);
    s.verify().unwrap();
}

// ---- history ----------------------------------------------------------------------------------

#[test]
fn history_views_and_records_agree() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let mut ids_in_order = Vec::new();
    for i in 0..20 {
        let mut turn = if i % 2 == 0 {
            user(&format!("question {i} ✓"))
        } else {
            assistant(&format!("answer {i}"))
        };
        if i % 4 == 1 {
            turn.reasoning = Some(format!("thinking {i}"));
        }
        ids_in_order.extend(
            s.append(A, &thread("t"), &[turn], None, &no_options())
                .unwrap()
                .turn_ids,
        );
    }
    let owned = |v: &TurnView<'_>| {
        (
            v.id,
            v.parent,
            v.role,
            v.depth,
            v.created_ms,
            v.owner.to_owned(),
            v.content.to_owned(),
            v.reasoning.map(str::to_owned),
        )
    };
    let from_views = s
        .with_history(A, &thread("t"), |views| {
            Ok(views.iter().map(owned).collect::<Vec<_>>())
        })
        .unwrap();
    let buffer = s.history_records(A, &thread("t")).unwrap();
    assert_eq!(buffer.len(), 20);
    assert!(!buffer.is_empty());
    let from_records: Vec<_> = (0..buffer.len())
        .map(|i| owned(&buffer.view(i).unwrap()))
        .collect();
    assert_eq!(from_views, from_records);
    assert_eq!(
        from_views.iter().map(|v| v.0).collect::<Vec<_>>(),
        ids_in_order
    );
    assert_eq!(from_views[0].6, "question 0 ✓");
    assert_eq!(from_views[1].7.as_deref(), Some("thinking 1"));
    assert_eq!(from_views[2].7, None);
    assert!(from_views.windows(2).all(|w| w[0].4 <= w[1].4));

    // The views borrow the map: their text points into the mapping of data.mdb, not a copy.
    #[cfg(target_os = "linux")]
    {
        let data = std::fs::canonicalize(s.path().join("data.mdb")).unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let regions: Vec<(usize, usize)> = maps
            .lines()
            .filter(|l| l.ends_with(data.to_str().unwrap()))
            .map(|l| {
                let range = l.split_whitespace().next().unwrap();
                let (lo, hi) = range.split_once('-').unwrap();
                (
                    usize::from_str_radix(lo, 16).unwrap(),
                    usize::from_str_radix(hi, 16).unwrap(),
                )
            })
            .collect();
        assert!(!regions.is_empty(), "data.mdb is not mapped");
        s.with_history(A, &thread("t"), |views| {
            for v in views {
                for text in [Some(v.content), Some(v.owner), v.reasoning]
                    .into_iter()
                    .flatten()
                {
                    let at = text.as_ptr() as usize;
                    assert!(
                        regions
                            .iter()
                            .any(|&(lo, hi)| lo <= at && at + text.len() <= hi),
                        "turn text at {at:#x} lies outside the memory map"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    }

    // Histories from a turn in the middle stop there.
    let mid = ids_in_order[9];
    let partial = s.history_records(A, &Anchor::Turn(mid)).unwrap();
    assert_eq!(partial.len(), 10);
    assert_eq!(partial.view(9).unwrap().id, mid);

    // Empty histories.
    s.create_thread(A, Some("empty"), None, true, false)
        .unwrap();
    assert!(contents(&s, A, &thread("empty")).is_empty());
    assert!(s.history_records(A, &thread("empty")).unwrap().is_empty());
    assert!(contents(&s, A, &Anchor::Root).is_empty());
    assert!(s.history_records(A, &Anchor::Root).unwrap().is_empty());

    // Errors.
    assert_err!(s.with_history(A, &thread("missing"), |_| Ok(())), NotFound);
    assert_err!(s.history_records(B, &thread("t")), NotFound);
    assert_err!(s.history_records(B, &Anchor::Turn(mid)), NotFound);
    assert_err!(
        s.history_records(A, &after_response(&ids::new_response_id())),
        NotFound
    );
    assert_err!(
        s.history_records(A, &after_response("resp_bad")),
        InvalidInput
    );
    assert_err!(s.history_records("", &Anchor::Turn(mid)), InvalidInput);
    // The callback's own error comes back unchanged.
    assert_err!(
        s.with_history(A, &thread("t"), |_| Err::<(), _>(Error::InvalidInput(
            "mine".into()
        ))),
        InvalidInput
    );
}

#[test]
fn branches_share_their_prefix() {
    let (_dir, s) = store();
    let r1 = respond(&s, A, &Anchor::Root, &["sys", "hi"]);
    let r2 = respond(&s, A, &after_response(&r1), &["tell a joke", "joke A"]);
    // Regenerate from r1: a sibling branch.
    let r3 = respond(&s, A, &after_response(&r1), &["tell a joke", "joke B"]);
    let r4 = respond(&s, A, &after_response(&r2), &["another", "joke C"]);
    assert_eq!(
        contents(&s, A, &after_response(&r3)),
        ["sys", "hi", "tell a joke", "joke B"]
    );
    assert_eq!(
        contents(&s, A, &after_response(&r4)),
        ["sys", "hi", "tell a joke", "joke A", "another", "joke C"]
    );
    let b3 = s.history_records(A, &after_response(&r3)).unwrap();
    let b4 = s.history_records(A, &after_response(&r4)).unwrap();
    for i in 0..2 {
        assert_eq!(b3.view(i).unwrap().id, b4.view(i).unwrap().id);
    }
    assert_ne!(b3.view(2).unwrap().id, b4.view(2).unwrap().id);
    s.push_check(8);
    // Deleting the middle response keeps r4's chain.
    s.delete_response(A, &r2).unwrap();
    s.push_check(8);
    s.delete_response(A, &r4).unwrap();
    s.push_check(4);
}

// ---- responses --------------------------------------------------------------------------------

#[test]
fn get_and_delete_responses() {
    let (_dir, s) = store();
    let r = respond(&s, A, &Anchor::Root, &["q", "a"]);
    assert_eq!(s.get_response(A, &r).unwrap().id, r);
    let message = assert_err!(s.get_response(B, &r), NotFound);
    assert!(message.message.contains(&r), "{message:?}");
    assert_err!(s.get_response(A, &ids::new_response_id()), NotFound);
    assert_err!(s.get_response(A, "resp_short"), InvalidInput);
    assert_err!(s.get_response(A, "thread_abc"), InvalidInput);
    assert_err!(s.get_response("", &r), InvalidInput);

    assert_err!(s.delete_response(B, &r), NotFound);
    assert_err!(s.delete_response(A, "nonsense"), InvalidInput);
    s.push_check(2);
    s.delete_response(A, &r).unwrap();
    assert_err!(s.get_response(A, &r), NotFound);
    assert_err!(s.delete_response(A, &r), NotFound);
    assert_err!(s.history_records(A, &after_response(&r)), NotFound);
    s.push_check(0);
    assert_eq!(s.stats().unwrap().responses, 0);
}

#[test]
fn deleting_a_response_keeps_its_threads_turns() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let r = s
        .append(
            A,
            &thread("t"),
            &turns(&["q", "a"]),
            Some(&completed()),
            &no_options(),
        )
        .unwrap()
        .response
        .unwrap();
    s.delete_response(A, &r.id).unwrap();
    s.push_check(2);
    assert_eq!(contents(&s, A, &thread("t")), ["q", "a"]);
    s.delete_thread(A, "t").unwrap();
    s.push_check(0);
}

// ---- token counts -----------------------------------------------------------------------------

#[test]
fn token_counts_are_cached_per_fingerprint() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let keys = push(&s, A, "t", &["a", "b", "c"]).turn_ids;
    let ghost = ids::random_bits();
    s.set_token_counts(1, &[(keys[0], 10), (keys[1], 20), (ghost, 99)])
        .unwrap();
    s.set_token_counts(2, &[(keys[0], 11)]).unwrap();
    assert_eq!(
        s.token_counts(1, &keys).unwrap(),
        vec![Some(10), Some(20), None]
    );
    assert_eq!(
        s.token_counts(2, &keys).unwrap(),
        vec![Some(11), None, None]
    );
    // Turns that do not exist were skipped, not stored.
    assert_eq!(s.token_counts(1, &[ghost]).unwrap(), vec![None]);
    assert_eq!(s.token_counts(3, &[]).unwrap(), vec![]);
    // Overwrites replace.
    s.set_token_counts(1, &[(keys[0], 12)]).unwrap();
    assert_eq!(s.token_counts(1, &keys[..1]).unwrap(), vec![Some(12)]);
    // Fingerprints at the ends of the key range stay apart.
    s.set_token_counts(0, &[(keys[2], 1)]).unwrap();
    s.set_token_counts(u64::MAX, &[(keys[2], 2)]).unwrap();
    assert_eq!(s.token_counts(0, &keys[2..]).unwrap(), vec![Some(1)]);
    assert_eq!(s.token_counts(u64::MAX, &keys[2..]).unwrap(), vec![Some(2)]);

    // Deleting the turns deletes their counts, and only theirs.
    s.create_thread(A, Some("other"), None, true, false)
        .unwrap();
    let other = push(&s, A, "other", &["x"]).turn_ids;
    s.set_token_counts(1, &[(other[0], 5)]).unwrap();
    s.delete_thread(A, "t").unwrap();
    for fp in [0, 1, 2, u64::MAX] {
        assert_eq!(s.token_counts(fp, &keys).unwrap(), vec![None, None, None]);
    }
    assert_eq!(s.token_counts(1, &other).unwrap(), vec![Some(5)]);
}

#[test]
fn token_counts_go_when_a_sweep_frees_their_turns() {
    let (_dir, s) = store_with(retention(|r| r.response_ttl_ms = 30));
    let r = respond(&s, A, &Anchor::Root, &["q", "a"]);
    let keys: Vec<TurnKey> = {
        let b = s.history_records(A, &after_response(&r)).unwrap();
        (0..b.len()).map(|i| b.spans[i].0).collect()
    };
    s.set_token_counts(9, &[(keys[0], 1), (keys[1], 2)])
        .unwrap();
    sleep_ms(60);
    let swept = s.sweep().unwrap();
    assert_eq!(
        swept,
        SweepStats {
            threads: 0,
            responses: 1,
            turns: 2
        }
    );
    assert_eq!(s.token_counts(9, &keys).unwrap(), vec![None, None]);
    s.push_check(0);
}

// ---- retention --------------------------------------------------------------------------------

#[test]
fn inactive_threads_expire_and_are_swept() {
    let (_dir, s) = store_with(retention(|r| r.thread_inactivity_ms = 1_000));
    s.create_thread(A, Some("idle"), None, true, false).unwrap();
    push(&s, A, "idle", &["1", "2"]);
    s.create_thread(A, Some("busy"), None, true, false).unwrap();
    push(&s, A, "busy", &["1"]);
    // A response made in the idle thread outlives it.
    let r = s
        .append(
            A,
            &thread("idle"),
            &turns(&["3"]),
            Some(&completed()),
            &no_options(),
        )
        .unwrap()
        .response
        .unwrap();
    s.create_thread(A, Some("idle2"), None, true, false)
        .unwrap();
    push(&s, A, "idle2", &["x"]);
    sleep_ms(600);
    push(&s, A, "busy", &["2"]);
    sleep_ms(600);
    // Expired threads read as missing at once, before any sweep.
    assert_err!(s.get_thread(A, "idle"), NotFound);
    assert_err!(
        s.append(A, &thread("idle"), &turns(&["x"]), None, &no_options()),
        NotFound
    );
    assert_err!(s.history_records(A, &thread("idle")), NotFound);
    assert_err!(s.update_thread(A, "idle", Some("{}"), None), NotFound);
    assert_err!(s.delete_thread(A, "idle"), NotFound);
    let listed: Vec<_> = s
        .list_threads(A, true, 10, None)
        .unwrap()
        .threads
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, ["busy"]);
    assert_eq!(s.get_thread(A, "busy").unwrap().message_count, 2);

    // Reusing an expired id reclaims the old thread first.
    s.push_check(6);
    let fresh = s
        .create_thread(A, Some("idle2"), None, true, false)
        .unwrap();
    assert_eq!((fresh.message_count, fresh.head.as_ref()), (0, None));
    s.push_check(5);

    let swept = s.sweep().unwrap();
    assert_eq!(swept.threads, 1);
    assert_eq!(swept.responses, 0);
    // idle's turns live on under the response.
    assert_eq!(swept.turns, 0);
    assert_eq!(contents(&s, A, &after_response(&r.id)), ["1", "2", "3"]);
    s.push_check(5);
    assert_eq!(s.stats().unwrap().threads, 2);
    s.delete_response(A, &r.id).unwrap();
    s.push_check(2);
    // A second sweep finds nothing.
    assert_eq!(s.sweep().unwrap(), SweepStats::default());
}

#[test]
fn old_threads_expire_even_when_active() {
    let (_dir, s) = store_with(retention(|r| r.thread_max_age_ms = 1_000));
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    for _ in 0..3 {
        push(&s, A, "t", &["ping"]);
        sleep_ms(150);
    }
    push(&s, A, "t", &["late"]);
    assert_eq!(s.get_thread(A, "t").unwrap().message_count, 4);
    sleep_ms(600);
    // Active 600 ms ago, well inside the inactivity limit, yet older than its maximum age.
    assert_err!(s.get_thread(A, "t"), NotFound);
    assert_eq!(
        s.sweep().unwrap(),
        SweepStats {
            threads: 1,
            responses: 0,
            turns: 4
        }
    );
    s.push_check(0);
}

#[test]
fn responses_expire_and_are_swept() {
    let (_dir, s) = store_with(retention(|r| r.response_ttl_ms = 500));
    let old = respond(&s, A, &Anchor::Root, &["q", "a"]);
    let old_last = ids::parse_turn_id(&s.get_response(A, &old).unwrap().last_turn).unwrap();
    sleep_ms(600);
    // A turn id outlives its expired response as an anchor while the turn exists.
    let young = respond(&s, A, &Anchor::Turn(old_last), &["q2", "a2"]);
    assert_err!(s.get_response(A, &old), NotFound);
    assert_err!(
        s.append(
            A,
            &after_response(&old),
            &turns(&["x"]),
            Some(&completed()),
            &no_options()
        ),
        NotFound
    );
    assert_err!(s.delete_response(A, &old), NotFound);
    assert_err!(s.history_records(A, &after_response(&old)), NotFound);
    // young continued by turn id, so it holds old's turns.
    let swept = s.sweep().unwrap();
    assert_eq!(
        swept,
        SweepStats {
            threads: 0,
            responses: 1,
            turns: 0
        }
    );
    assert_eq!(
        contents(&s, A, &after_response(&young)),
        ["q", "a", "q2", "a2"]
    );
    s.push_check(4);
    sleep_ms(600);
    assert_eq!(
        s.sweep().unwrap(),
        SweepStats {
            threads: 0,
            responses: 1,
            turns: 4
        }
    );
    s.push_check(0);
}

#[test]
fn sweep_works_in_batches() {
    let (_dir, s) = store_with(retention(|r| {
        r.thread_inactivity_ms = 1_000;
        r.response_ttl_ms = 1_000;
    }));
    // More than one sweep batch (512) of each, written in few transactions through one thread
    // of 600 turns and 600 responses branching off it.
    for i in 0..600 {
        s.create_thread(A, Some(&format!("t{i}")), None, i % 2 == 0, false)
            .unwrap();
    }
    let r0 = respond(&s, A, &Anchor::Root, &["root"]);
    let root = ids::parse_turn_id(&s.get_response(A, &r0).unwrap().last_turn).unwrap();
    for _ in 0..599 {
        respond(&s, A, &Anchor::Turn(root), &["leaf"]);
    }
    sleep_ms(1_100);
    s.create_thread(A, Some("alive"), None, true, false)
        .unwrap();
    push(&s, A, "alive", &["still here"]);
    let swept = s.sweep().unwrap();
    assert_eq!(
        swept,
        SweepStats {
            threads: 600,
            responses: 600,
            turns: 600
        }
    );
    assert_eq!(s.stats().unwrap().threads, 1);
    s.push_check(1);
}

// ---- map growth -------------------------------------------------------------------------------

fn tiny_map(max: usize) -> StoreOptions {
    StoreOptions {
        map_size: 64 * 1024,
        max_map_size: max,
        retention: Retention::default(),
    }
}

#[test]
fn the_map_grows_on_demand() {
    let (dir, s) = store_with(tiny_map(DEFAULT_MAX_MAP_SIZE));
    let start = s.stats().unwrap().map_bytes;
    assert!(start <= 128 * 1024, "{start}");
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let chunk = "x".repeat(256 * 1024);
    for i in 0..8 {
        push(&s, A, "t", &[&format!("{i}{chunk}")]);
    }
    let big = "y".repeat(4 * 1024 * 1024);
    let r = respond(&s, A, &thread_head(&s, "t"), &[&big]);
    let stats = s.stats().unwrap();
    assert!(stats.map_bytes >= 6 * 1024 * 1024, "{stats:?}");
    assert!(stats.file_bytes > 4 * 1024 * 1024, "{stats:?}");
    let history = contents(&s, A, &after_response(&r));
    assert_eq!(history.len(), 9);
    assert!(history[3].starts_with('3') && history[3].len() == chunk.len() + 1);
    assert_eq!(history[8], big);
    s.verify().unwrap();
    drop(s);
    // A reopen with the tiny map size still reads everything.
    let s = Store::open(dir.path(), tiny_map(DEFAULT_MAX_MAP_SIZE)).unwrap();
    assert_eq!(contents(&s, A, &after_response(&r))[8], big);
    push(&s, A, "t", &[&chunk]);
    s.verify().unwrap();
}

fn thread_head(s: &Store, id: &str) -> Anchor {
    Anchor::Turn(head_key(&s.get_thread(A, id).unwrap()))
}

#[test]
fn a_full_store_refuses_writes_cleanly() {
    let (_dir, s) = store_with(tiny_map(256 * 1024));
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    push(&s, A, "t", &["small"]);
    let before = s.get_thread(A, "t").unwrap();
    let big = "z".repeat(1024 * 1024);
    let message = assert_err!(
        s.append(A, &thread("t"), &turns(&[&big]), None, &no_options()),
        StoreFull
    );
    assert!(message.contains("262144"), "{message}");
    assert_eq!(s.get_thread(A, "t").unwrap(), before);
    assert_eq!(turn_count(&s), 1);
    assert!(s.stats().unwrap().map_bytes <= 256 * 1024);
    // Small writes still fit.
    push(&s, A, "t", &["still fine"]);
    assert_eq!(contents(&s, A, &thread("t")), ["small", "still fine"]);
    s.verify().unwrap();
}

#[test]
fn a_tiny_map_size_still_opens() {
    let (_dir, s) = store_with(StoreOptions {
        map_size: 1,
        max_map_size: 1,
        retention: Retention::default(),
    });
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    push(&s, A, "t", &["hello"]);
}

// ---- concurrency ------------------------------------------------------------------------------

#[test]
fn concurrent_appends_to_one_thread_lose_nothing_and_respect_the_limit() {
    let (_dir, s) = store();
    let s = Arc::new(s);
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let prefill = MAX_THREAD_MESSAGES - 100;
    let many: Vec<NewTurn> = (0..prefill).map(|_| user("prefill")).collect();
    s.append(A, &thread("t"), &many, None, &no_options())
        .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let s = Arc::clone(&s);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut last = 0;
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) || reads == 0 {
                let n = s
                    .with_history(A, &thread("t"), |views| {
                        for (i, v) in views.iter().enumerate() {
                            assert_eq!(v.depth as usize, i + 1);
                        }
                        Ok(views.len())
                    })
                    .unwrap();
                assert!(n >= last, "a reader saw the history shrink");
                assert!(n <= MAX_THREAD_MESSAGES as usize);
                last = n;
                reads += 1;
            }
        })
    };
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    let batch = turns(&[
                        &format!("w{w}-{i}-a"),
                        &format!("w{w}-{i}-b"),
                        &format!("w{w}-{i}-c"),
                    ]);
                    match s.append(A, &thread("t"), &batch, None, &AppendOptions::default()) {
                        Ok(out) => acked.push(out.turn_ids),
                        Err(Error::LimitExceeded(_)) => break,
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<Vec<TurnKey>> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap();

    // 100 free slots take 33 batches of three.
    assert_eq!(acked.len(), 33);
    let t = s.get_thread(A, "t").unwrap();
    assert_eq!(t.message_count, prefill + 99);
    let history: Vec<TurnKey> = s
        .with_history(A, &thread("t"), |v| Ok(v.iter().map(|v| v.id).collect()))
        .unwrap();
    assert_eq!(history.len(), t.message_count as usize);
    let positions: std::collections::HashMap<TurnKey, usize> =
        history.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    assert_eq!(positions.len(), history.len(), "a turn appears twice");
    for batch in &acked {
        // Every acknowledged batch is present, contiguous and in order.
        let at = positions[&batch[0]];
        assert!(at >= prefill as usize);
        for (j, k) in batch.iter().enumerate() {
            assert_eq!(positions[k], at + j);
        }
    }
    let acked_turns: HashSet<TurnKey> = acked.iter().flatten().copied().collect();
    assert_eq!(acked_turns.len(), 99);
    assert_eq!(turn_count(&s), history.len() as u64);
    s.verify().unwrap();
}

#[test]
fn concurrent_writers_and_readers_while_the_map_grows() {
    let (_dir, s) = store_with(tiny_map(DEFAULT_MAX_MAP_SIZE));
    let s = Arc::new(s);
    for w in 0..4 {
        s.create_thread(A, Some(&format!("t{w}")), None, true, false)
            .unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let s = Arc::clone(&s);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    for w in 0..4 {
                        let id = format!("t{w}");
                        let n = s
                            .with_history(A, &thread(&id), |views| {
                                for v in views {
                                    assert!(v.content.starts_with(&id));
                                }
                                Ok(views.len())
                            })
                            .unwrap();
                        assert!(n <= 24);
                        s.list_threads(A, true, 10, None).unwrap();
                    }
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let id = format!("t{w}");
                let body = format!("{id}{}", "w".repeat(64 * 1024));
                for _ in 0..24 {
                    push(&s, A, &id, &[&body]);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    for w in 0..4 {
        assert_eq!(s.get_thread(A, &format!("t{w}")).unwrap().message_count, 24);
    }
    assert!(s.stats().unwrap().map_bytes >= 6 * 1024 * 1024);
    s.push_check(96);
}

// ---- group commit ------------------------------------------------------------------------------

/// Holds the store's writers: a write that blocks until released, so that the writes queued
/// meanwhile run together as the next batch.
struct Gate {
    release: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

fn gate(s: &Arc<Store>) -> Gate {
    let started = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let handle = {
        let s = Arc::clone(s);
        let (started, release) = (Arc::clone(&started), Arc::clone(&release));
        std::thread::spawn(move || {
            s.write(move |_, _| {
                started.store(true, Ordering::SeqCst);
                while !release.load(Ordering::SeqCst) {
                    sleep_ms(1);
                }
                Ok(())
            })
            .unwrap();
        })
    };
    while !started.load(Ordering::SeqCst) {
        sleep_ms(1);
    }
    Gate {
        release,
        handle: Some(handle),
    }
}

impl Gate {
    /// Lets the writers go and waits for the gate's own write.
    fn open(mut self) {
        self.release.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.release.store(true, Ordering::SeqCst);
    }
}

/// Starts `job` on a thread of its own and waits until its write is queued, so that writes
/// queued one after another behind a gate run in that order.
fn queue<R: Send + 'static>(
    s: &Arc<Store>,
    job: impl FnOnce(&Store) -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let before = s.commits.queued();
    let handle = {
        let s = Arc::clone(s);
        std::thread::spawn(move || job(&s))
    };
    while s.commits.queued() == before {
        sleep_ms(1);
    }
    handle
}

fn queue_push(s: &Arc<Store>, id: &str, text: &str) -> std::thread::JoinHandle<Result<Appended>> {
    let (id, text) = (id.to_owned(), text.to_owned());
    queue(s, move |s| {
        s.append(A, &thread(&id), &turns(&[&text]), None, &no_options())
    })
}

#[test]
fn queued_writes_share_one_batch_and_fail_alone() {
    let (_dir, s) = store();
    let s = Arc::new(s);
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    s.create_thread(A, Some("locked"), None, true, false)
        .unwrap();
    s.update_thread(A, "locked", None, Some(ThreadState::Locked))
        .unwrap();
    let junk = [0xAB; 16];
    let batches = s.commits.batches();

    let g = gate(&s);
    let first = queue_push(&s, "t", "one");
    // A write that changes the store and then fails: none of its changes may stay.
    let failing = queue(&s, move |s| {
        s.write(move |s, txn| {
            s.turns.put(txn, &junk, b"junk")?;
            s.create_thread_in(txn, "ghost")?;
            Err::<(), _>(Error::StateConflict("this write fails".into()))
        })
    });
    let refused = queue_push(&s, "locked", "refused");
    let second = queue_push(&s, "t", "two");
    let missing = queue_push(&s, "missing", "nowhere");
    let third = queue_push(&s, "t", "three");
    assert_eq!(s.commits.queued(), 6);
    g.open();

    let first = first.join().unwrap().unwrap();
    let second = second.join().unwrap().unwrap();
    let third = third.join().unwrap().unwrap();
    assert_err!(failing.join().unwrap(), StateConflict);
    assert_err!(refused.join().unwrap(), StateConflict);
    assert_err!(missing.join().unwrap(), NotFound);
    // The gate's batch and one batch of all six writes.
    assert_eq!(s.commits.batches(), batches + 2);
    // Later writes of the batch saw the earlier ones.
    assert_eq!(first.thread.unwrap().message_count, 1);
    assert_eq!(second.thread.unwrap().message_count, 2);
    assert_eq!(third.thread.as_ref().unwrap().message_count, 3);
    assert_eq!(contents(&s, A, &thread("t")), ["one", "two", "three"]);
    assert_eq!(
        s.get_thread(A, "t").unwrap().head,
        Some(ids::turn_id_string(&third.turn_ids[0]))
    );
    // The failed write left nothing behind.
    assert!(s
        .read(|txn| Ok(s.turns.get(txn, &junk)?.is_none()))
        .unwrap());
    assert_err!(s.get_thread(A, "ghost"), NotFound);
    assert_eq!(s.get_thread(A, "locked").unwrap().message_count, 0);
    s.push_check(3);
}

impl Store {
    /// Test helper: creates an empty thread inside a caller's transaction.
    fn create_thread_in(&self, txn: &mut heed::RwTxn<'_>, id: &str) -> Result<()> {
        let now = now_ms();
        let t = ThreadRecord {
            id: id.to_owned(),
            owner: A.to_owned(),
            head: None,
            metadata: "{}".to_owned(),
            state: ThreadState::Open,
            visible: true,
            created_ms: now,
            last_activity_ms: now,
            message_count: 0,
        };
        self.threads
            .put(txn, &keys::thread(A, id), &records::to_json(&t)?)?;
        Ok(())
    }
}

#[test]
fn the_message_limit_holds_inside_a_batch() {
    let (_dir, s) = store();
    let s = Arc::new(s);
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let many: Vec<NewTurn> = (0..MAX_THREAD_MESSAGES - 2).map(|_| user("x")).collect();
    s.append(A, &thread("t"), &many, None, &no_options())
        .unwrap();
    let g = gate(&s);
    let writes: Vec<_> = (0..5)
        .map(|i| queue_push(&s, "t", &format!("last {i}")))
        .collect();
    g.open();
    let results: Vec<_> = writes.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    for r in &results[2..] {
        assert!(matches!(r, Err(Error::LimitExceeded(_))), "{r:?}");
    }
    let t = s.get_thread(A, "t").unwrap();
    assert_eq!(t.message_count, MAX_THREAD_MESSAGES);
    let history = contents(&s, A, &thread("t"));
    assert_eq!(history.len(), MAX_THREAD_MESSAGES as usize);
    assert_eq!(history[history.len() - 2..], ["last 0", "last 1"]);
    s.push_check(MAX_THREAD_MESSAGES as u64);
}

#[test]
fn a_panicking_write_fails_alone() {
    let (_dir, s) = store();
    let s = Arc::new(s);
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let g = gate(&s);
    let before = queue_push(&s, "t", "before");
    let panics = queue(&s, |s| {
        s.write(|s, txn| {
            s.create_thread_in(txn, "ghost")?;
            if true {
                panic!("a bug in a write");
            }
            Ok(())
        })
    });
    let after = queue_push(&s, "t", "after");
    g.open();
    before.join().unwrap().unwrap();
    after.join().unwrap().unwrap();
    let payload = panics.join().unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"a bug in a write"));
    assert_eq!(contents(&s, A, &thread("t")), ["before", "after"]);
    assert_err!(s.get_thread(A, "ghost"), NotFound);
    // The store still takes writes.
    push(&s, A, "t", &["later"]);
    s.push_check(3);
}

#[test]
fn a_batch_that_fills_the_map_grows_it_and_runs_again() {
    let (_dir, s) = store_with(tiny_map(DEFAULT_MAX_MAP_SIZE));
    let s = Arc::new(s);
    for w in 0..4 {
        s.create_thread(A, Some(&format!("t{w}")), None, true, false)
            .unwrap();
    }
    let start = s.stats().unwrap().map_bytes;
    let g = gate(&s);
    let body = "m".repeat(96 * 1024);
    let writes: Vec<_> = (0..8)
        .map(|i| queue_push(&s, &format!("t{}", i % 4), &format!("{i}{body}")))
        .collect();
    g.open();
    for w in writes {
        w.join().unwrap().unwrap();
    }
    assert!(s.stats().unwrap().map_bytes >= 8 * start);
    for w in 0..4 {
        let history = contents(&s, A, &thread(&format!("t{w}")));
        assert_eq!(history.len(), 2);
        assert!(history[0].starts_with(&w.to_string()));
        assert!(history[1].starts_with(&(w + 4).to_string()));
    }
    s.push_check(8);
}

#[test]
fn a_batch_too_big_for_the_largest_map_commits_what_fits() {
    let (_dir, s) = store_with(tiny_map(256 * 1024));
    let s = Arc::new(s);
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let g = gate(&s);
    let body = "f".repeat(100 * 1024);
    let writes: Vec<_> = (0..4).map(|_| queue_push(&s, "t", &body)).collect();
    g.open();
    let results: Vec<_> = writes.into_iter().map(|w| w.join().unwrap()).collect();
    let stored = results.iter().filter(|r| r.is_ok()).count();
    assert!(stored >= 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        let Err(Error::StoreFull(message)) = r else {
            panic!("{r:?}")
        };
        assert!(message.contains("262144"), "{message}");
    }
    assert!(stored < 4, "four 100 KiB turns cannot fit in 256 KiB");
    assert_eq!(s.get_thread(A, "t").unwrap().message_count as usize, stored);
    assert_eq!(contents(&s, A, &thread("t")).len(), stored);
    s.push_check(stored as u64);
    // Small writes still fit.
    push(&s, A, "t", &["small"]);
}

#[test]
fn many_threads_append_at_once_to_shared_and_own_threads() {
    let (_dir, s) = store();
    let s = Arc::new(s);
    const WRITERS: usize = 16;
    const APPENDS: usize = 40;
    s.create_thread(A, Some("shared"), None, true, false)
        .unwrap();
    for w in 0..WRITERS {
        s.create_thread(A, Some(&format!("own{w}")), None, true, false)
            .unwrap();
    }
    let batches = s.commits.batches();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..APPENDS {
                    let id = if i % 2 == 0 {
                        "shared".to_owned()
                    } else {
                        format!("own{w}")
                    };
                    let text = format!("{id}/{w}/{i}");
                    let out = s
                        .append(A, &thread(&id), &turns(&[&text]), None, &no_options())
                        .unwrap();
                    // The write is committed when append returns: a fresh read sees it.
                    let seen = s.get_thread(A, &id).unwrap();
                    assert!(seen.message_count >= out.thread.unwrap().message_count);
                    acked.push((id, text, out.turn_ids[0]));
                }
                acked
            })
        })
        .collect();
    let acked: Vec<_> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(acked.len(), WRITERS * APPENDS);
    let shared = contents(&s, A, &thread("shared"));
    assert_eq!(shared.len(), WRITERS * APPENDS / 2);
    let unique: HashSet<&String> = shared.iter().collect();
    assert_eq!(unique.len(), shared.len(), "a turn appears twice");
    for w in 0..WRITERS {
        let own = contents(&s, A, &thread(&format!("own{w}")));
        let expected: Vec<String> = (0..APPENDS)
            .filter(|i| i % 2 == 1)
            .map(|i| format!("own{w}/{w}/{i}"))
            .collect();
        assert_eq!(own, expected);
        // One writer's appends to the shared thread keep their order.
        let mine: Vec<&String> = shared
            .iter()
            .filter(|t| t.starts_with(&format!("shared/{w}/")))
            .collect();
        assert_eq!(mine.len(), APPENDS / 2);
        for pair in mine.windows(2) {
            let n = |t: &str| t.rsplit('/').next().unwrap().parse::<usize>().unwrap();
            assert!(n(pair[0]) < n(pair[1]));
        }
    }
    let keys: HashSet<TurnKey> = acked.iter().map(|(_, _, k)| *k).collect();
    assert_eq!(keys.len(), acked.len());
    let used = s.commits.batches() - batches;
    assert!(used <= (WRITERS * APPENDS) as u64, "{used} batches");
    s.push_check((WRITERS * APPENDS) as u64);
}

// ---- turn keys ----------------------------------------------------------------------------------

fn key_time(key: &TurnKey) -> u128 {
    u128::from_be_bytes(*key) >> 80
}

#[test]
fn turn_keys_grow_along_every_conversation() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let before = now_ms() as u128;
    let out = s
        .append(
            A,
            &thread("t"),
            &turns(&["a", "b", "c", "d"]),
            None,
            &no_options(),
        )
        .unwrap();
    let after = now_ms() as u128;
    let keys = &out.turn_ids;
    assert!(key_time(&keys[0]) >= before && key_time(&keys[0]) <= after);
    for pair in keys.windows(2) {
        assert!(pair[0] < pair[1]);
        assert!(key_time(&pair[1]) > key_time(&pair[0]));
    }
    // The low 80 bits are random: no two turns share them, even within one millisecond.
    let low: HashSet<u128> = keys
        .iter()
        .map(|k| u128::from_be_bytes(*k) & ((1 << 80) - 1))
        .collect();
    assert_eq!(low.len(), keys.len());
    // A branch from an older turn also sorts above its parent.
    let r = respond(&s, A, &Anchor::Turn(keys[1]), &["branch"]);
    let branch = ids::parse_turn_id(&s.get_response(A, &r).unwrap().last_turn).unwrap();
    assert!(branch > keys[1]);
    assert_eq!(contents(&s, A, &after_response(&r)), ["a", "b", "branch"]);
}

#[test]
fn new_turn_keys_follow_the_clock_and_the_parent() {
    let parent = ops::new_turn_key(5_000, None);
    assert_eq!(key_time(&parent), 5_000);
    // A clock behind the parent still gives a key above it.
    let child = ops::new_turn_key(1_000, Some(&parent));
    assert_eq!(key_time(&child), 5_001);
    assert!(child > parent);
    let later = ops::new_turn_key(9_000, Some(&child));
    assert_eq!(key_time(&later), 9_000);
    // The time field saturates instead of wrapping.
    let max = ops::new_turn_key(i64::MAX, None);
    assert_eq!(key_time(&max), (1 << 48) - 1);
    assert_eq!(key_time(&ops::new_turn_key(0, Some(&max))), (1 << 48) - 1);
}

#[test]
fn histories_read_right_however_their_turns_interleave() {
    let (_dir, s) = store();
    for w in 0..3 {
        s.create_thread(A, Some(&format!("t{w}")), None, true, false)
            .unwrap();
    }
    // t0's turns sit next to each other, t1's have a few turns of t2 between them, and some of
    // t2's parents are far away (hundreds of entries below).
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); 3];
    for round in 0..30 {
        let text = format!("t0 {round}");
        push(&s, A, "t0", &[&text]);
        expected[0].push(text);
        for k in 0..(round % 24) {
            let text = format!("t2 {round} {k}");
            push(&s, A, "t2", &[&text]);
            expected[2].push(text);
        }
        let text = format!("t1 {round}");
        push(&s, A, "t1", &[&text]);
        expected[1].push(text);
    }
    let many: Vec<String> = (0..300).map(|i| format!("bulk {i}")).collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    push(&s, A, "t2", &many_refs);
    expected[2].extend(many);
    push(&s, A, "t0", &["t0 last"]);
    expected[0].push("t0 last".to_owned());
    for (w, want) in expected.iter().enumerate() {
        let id = format!("t{w}");
        assert_eq!(&contents(&s, A, &thread(&id)), want);
        let records = s.history_records(A, &thread(&id)).unwrap();
        let texts: Vec<&str> = (0..records.len())
            .map(|i| records.view(i).unwrap().content)
            .collect();
        assert_eq!(&texts, want);
    }
    s.verify().unwrap();
}

// ---- several processes ------------------------------------------------------------------------

const CHILD_STORE: &str = "THREADLOOM_TEST_CHILD_STORE";

/// Not a test of its own: the child half of `a_map_grown_by_another_process_is_adopted`.
#[test]
#[ignore]
fn child_process_grows_the_store() {
    let Ok(path) = std::env::var(CHILD_STORE) else {
        return;
    };
    let s = Store::open(Path::new(&path), tiny_map(DEFAULT_MAX_MAP_SIZE)).unwrap();
    let body = "c".repeat(512 * 1024);
    for _ in 0..16 {
        push(&s, A, "shared", &[&body]);
    }
}

#[test]
fn a_map_grown_by_another_process_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), tiny_map(DEFAULT_MAX_MAP_SIZE)).unwrap();
    s.create_thread(A, Some("shared"), None, true, false)
        .unwrap();
    push(&s, A, "shared", &["parent"]);
    let before = s.stats().unwrap().map_bytes;

    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::child_process_grows_the_store",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_STORE, dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    // The file is now far past this process's map: reads and writes adopt the new size.
    let t = s.get_thread(A, "shared").unwrap();
    assert_eq!(t.message_count, 17);
    assert_eq!(contents(&s, A, &thread("shared")).len(), 17);
    push(&s, A, "shared", &["parent again"]);
    assert!(s.stats().unwrap().map_bytes > before);
    s.push_check(18);
}

#[test]
fn a_response_id_minted_before_append_is_used_once() {
    let (_dir, s) = store();
    let id = ids::new_response_id();
    let mut r = completed();
    r.id = Some(id.clone());
    let first = s
        .append(A, &Anchor::Root, &[user("hi")], Some(&r), &no_options())
        .unwrap();
    assert_eq!(first.response.as_ref().unwrap().id, id);
    assert_eq!(
        s.get_response(A, &id).unwrap().last_turn,
        ids::turn_id_string(&first.turn_ids[0])
    );
    // The same id again is refused, and nothing of the second append is stored.
    let before = s.stats().unwrap();
    let again = s.append(A, &Anchor::Root, &[user("again")], Some(&r), &no_options());
    assert!(matches!(again, Err(Error::StateConflict(_))), "{again:?}");
    assert_eq!(s.stats().unwrap().turns, before.turns);
    r.id = Some("resp_nope".into());
    let bad = s.append(A, &Anchor::Root, &[user("x")], Some(&r), &no_options());
    assert!(matches!(bad, Err(Error::InvalidInput(_))), "{bad:?}");
}

#[test]
fn a_deleted_thread_id_is_not_revived_by_create_if_missing() {
    let (_dir, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    push(&s, A, "t", &["hello"]);
    s.delete_thread(A, "t").unwrap();
    let again = s.create_thread(A, Some("t"), None, true, true);
    assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");
    // Another owner's id space is its own.
    s.create_thread(B, Some("t"), None, true, true).unwrap();
    // An explicit create reuses the id, after which create-if-missing finds it.
    let t = s.create_thread(A, Some("t"), None, true, false).unwrap();
    assert_eq!((t.message_count, t.head), (0, None));
    let same = s.create_thread(A, Some("t"), None, true, true).unwrap();
    assert_eq!(same.created_ms, t.created_ms);
    // An empty thread had no history to lose: its id stays free.
    s.delete_thread(A, "t").unwrap();
    s.create_thread(A, Some("t"), None, true, true).unwrap();
    s.verify().unwrap();
}

// ---- rebase_thread: moving a thread's head ----------------------------------------------------

/// A thread "t" holding u1 a1 (response one) u2 a2 (response two); returns the responses and
/// the four turn keys.
fn rebase_fixture(s: &Store) -> (String, String, Vec<TurnKey>) {
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let one = s
        .append(
            A,
            &thread("t"),
            &turns(&["u1", "a1"]),
            Some(&completed()),
            &no_options(),
        )
        .unwrap();
    let two = s
        .append(
            A,
            &thread("t"),
            &turns(&["u2", "a2"]),
            Some(&completed()),
            &no_options(),
        )
        .unwrap();
    let keys = [one.turn_ids, two.turn_ids].concat();
    (one.response.unwrap().id, two.response.unwrap().id, keys)
}

#[test]
fn rebase_drops_a_middle_turn_and_keeps_what_responses_reached() {
    let (_d, s) = store();
    let (one, two, keys) = rebase_fixture(&s);
    // Drop a1: u2 and a2 are written again after u1.
    let t = s
        .rebase_thread(
            A,
            "t",
            Some(keys[0]),
            &turns(&["u2", "a2"]),
            Some(Some(keys[3])),
        )
        .unwrap();
    assert_eq!(t.message_count, 3);
    assert_eq!(contents(&s, A, &thread("t")), ["u1", "u2", "a2"]);
    assert_ne!(head_key(&t), keys[3]);
    // The responses keep the turns they reached.
    assert_eq!(contents(&s, A, &after_response(&one)), ["u1", "a1"]);
    assert_eq!(
        contents(&s, A, &after_response(&two)),
        ["u1", "a1", "u2", "a2"]
    );
    assert_eq!(turn_count(&s), 6);
    s.verify().unwrap();
    // Once the responses go, so do the turns only they reached.
    s.delete_response(A, &two).unwrap();
    s.delete_response(A, &one).unwrap();
    assert_eq!(turn_count(&s), 3);
    s.verify().unwrap();
}

#[test]
fn rebase_without_turns_moves_the_head_back_and_can_empty_the_thread() {
    let (_d, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let keys = push(&s, A, "t", &["u1", "a1"]).turn_ids;
    // Pop the newest turn: nothing else reached it, so it is gone.
    let t = s.rebase_thread(A, "t", Some(keys[0]), &[], None).unwrap();
    assert_eq!((t.message_count, head_key(&t)), (1, keys[0]));
    assert_eq!(contents(&s, A, &thread("t")), ["u1"]);
    assert_eq!(turn_count(&s), 1);
    let t = s.rebase_thread(A, "t", None, &[], None).unwrap();
    assert_eq!((t.message_count, t.head.as_deref()), (0, None));
    assert_eq!(turn_count(&s), 0);
    s.verify().unwrap();
    // The empty thread takes appends again; a new root path too.
    let t = s
        .rebase_thread(A, "t", None, &turns(&["x", "y"]), Some(None))
        .unwrap();
    assert_eq!(t.message_count, 2);
    assert_eq!(contents(&s, A, &thread("t")), ["x", "y"]);
    s.verify().unwrap();
}

#[test]
fn rebase_is_refused_like_an_append() {
    let (_d, s) = store();
    let (_, _, keys) = rebase_fixture(&s);
    let before = contents(&s, A, &thread("t"));
    let msg = assert_err!(
        s.rebase_thread(A, "t", Some(keys[0]), &[], Some(Some(keys[1]))),
        StateConflict
    );
    assert!(msg.contains("moved on"), "{msg}");
    assert_err!(s.rebase_thread(B, "t", Some(keys[0]), &[], None), NotFound);
    s.create_thread(B, Some("b"), None, true, false).unwrap();
    // Another owner's turn is no base.
    assert_err!(s.rebase_thread(B, "b", Some(keys[0]), &[], None), NotFound);
    s.update_thread(A, "t", None, Some(ThreadState::Locked))
        .unwrap();
    let msg = assert_err!(
        s.rebase_thread(A, "t", Some(keys[0]), &[], None),
        StateConflict
    );
    assert!(msg.contains("locked"), "{msg}");
    s.update_thread(A, "t", None, Some(ThreadState::Archived))
        .unwrap();
    assert_err!(
        s.rebase_thread(A, "t", Some(keys[0]), &[], None),
        StateConflict
    );
    let mut bad = user("x");
    bad.tool = Some("[1]".into());
    assert_err!(s.rebase_thread(A, "t", None, &[bad], None), InvalidInput);
    assert_eq!(contents(&s, A, &thread("t")), before);
    s.verify().unwrap();
}

#[test]
fn tool_data_is_stored_with_its_turn() {
    let (_d, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let call = r#"{"type":"function_call","call_id":"c1","name":"f","arguments":"{}"}"#;
    let mut asked = assistant("");
    asked.tool = Some(call.into());
    let mut answered = NewTurn::new(Role::Tool, "42");
    answered.tool = Some(r#"{"type":"function_call_output","call_id":"c1"}"#.into());
    s.append(
        A,
        &thread("t"),
        &[user("q"), asked, answered],
        None,
        &no_options(),
    )
    .unwrap();
    let tools = s
        .with_history(A, &thread("t"), |views| {
            Ok(views
                .iter()
                .map(|v| v.tool.map(str::to_owned))
                .collect::<Vec<_>>())
        })
        .unwrap();
    assert_eq!(tools[0], None);
    assert_eq!(tools[1].as_deref(), Some(call));
    assert!(tools[2]
        .as_deref()
        .unwrap()
        .contains("function_call_output"));
    let mut bad = user("x");
    bad.tool = Some("{".into());
    let msg = assert_err!(
        s.append(A, &thread("t"), &[bad], None, &no_options()),
        InvalidInput
    );
    assert!(msg.contains("turns[0].tool"), "{msg}");
    s.verify().unwrap();
}

#[test]
fn summaries_are_kept_per_owner_and_survive_a_reopen() {
    let (dir, s) = store();
    s.put_summary("alice", "cut:msg_1", "Ada lives in Oslo.")
        .unwrap();
    assert_eq!(
        s.get_summary("alice", "cut:msg_1").unwrap().as_deref(),
        Some("Ada lives in Oslo.")
    );
    assert_eq!(s.get_summary("bob", "cut:msg_1").unwrap(), None);
    assert_eq!(s.get_summary("alice", "cut:msg_2").unwrap(), None);
    s.put_summary("alice", "cut:msg_1", "replaced").unwrap();
    assert!(s.put_summary("alice", "", "x").is_err());
    assert!(s.put_summary("alice", "a\0b", "x").is_err());
    assert!(s.put_summary("alice", &"k".repeat(300), "x").is_err());
    drop(s);
    let again = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(
        again.get_summary("alice", "cut:msg_1").unwrap().as_deref(),
        Some("replaced")
    );
}

#[test]
fn a_thread_append_records_the_head_response_it_continues() {
    let (_d, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let first = respond(&s, A, &thread("t"), &["q", "a"]);
    let continuing = |previous: &str| AppendOptions {
        previous_response_id: Some(previous.to_owned()),
        ..AppendOptions::default()
    };
    let out = s
        .append(
            A,
            &thread("t"),
            &turns(&["q2", "a2"]),
            Some(&completed()),
            &continuing(&first),
        )
        .unwrap();
    let second = out.response.unwrap();
    assert_eq!(second.previous_response_id.as_deref(), Some(first.as_str()));
    assert_eq!(second.thread_id.as_deref(), Some("t"));
    // The head moved on: continuing `first` again in the thread is refused, nothing written.
    let before = turn_count(&s);
    let err = s
        .append(
            A,
            &thread("t"),
            &turns(&["q3"]),
            Some(&completed()),
            &continuing(&first),
        )
        .unwrap_err();
    assert!(matches!(err, Error::StateConflict(_)), "{err:?}");
    assert_eq!(turn_count(&s), before);
}

#[test]
fn settle_pending_removes_the_record_in_the_append() {
    let (_d, s) = store();
    let id = ids::new_response_id();
    s.put_pending(A, &id, b"{}".to_vec()).unwrap();
    let mut r = completed();
    r.id = Some(id.clone());
    let settle = AppendOptions {
        settle_pending: true,
        ..AppendOptions::default()
    };
    s.append(A, &Anchor::Root, &turns(&["q", "a"]), Some(&r), &settle)
        .unwrap();
    assert_eq!(s.get_pending(A, &id).unwrap(), None);
}

// ---- the children index -------------------------------------------------------------------------

fn last_turn(s: &Store, owner: &str, response: &str) -> TurnKey {
    ids::parse_turn_id(&s.get_response(owner, response).unwrap().last_turn).unwrap()
}

#[test]
fn children_index_holds_every_continuation_made_by_append() {
    let (_d, s) = store();
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let first = push(&s, A, "t", &["u1", "a1"]).turn_ids;
    let second = push(&s, A, "t", &["u2", "a2"]).turn_ids;
    // A branch through the Responses route: after the first reply's turn, not the head.
    let older = respond(&s, A, &Anchor::Turn(first[1]), &["u2b", "a2b"]);
    let branch = ids::parse_turn_id(&s.get_response(A, &older).unwrap().last_turn).unwrap();
    let kids = s.children(A, &first[1]).unwrap();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&second[0]));
    // Keys order by creation time only to the millisecond: the other one is the branch's.
    let branch_first = *kids.iter().find(|k| **k != second[0]).unwrap();
    assert_eq!(s.children(A, &branch_first).unwrap(), [branch]);
    assert_eq!(s.children(A, &first[0]).unwrap(), [first[1]]);
    assert!(s.children(A, &second[1]).unwrap().is_empty());
    // Per owner: another tenant sees no continuations of A's turns.
    assert!(s.children(B, &first[1]).unwrap().is_empty());
    s.verify().unwrap();
    // A response continuing the branch's reply continues the index too.
    let further = respond(&s, A, &after_response(&older), &["u3", "a3"]);
    assert_eq!(s.children(A, &branch).unwrap().len(), 1);
    assert_eq!(last_turn(&s, A, &further), {
        let u3 = s.children(A, &branch).unwrap()[0];
        s.children(A, &u3).unwrap()[0]
    });
    s.verify().unwrap();
}

#[test]
fn children_index_follows_rebase_and_deletes() {
    let (_d, s) = store();
    let (one, two, keys) = rebase_fixture(&s);
    s.rebase_thread(
        A,
        "t",
        Some(keys[0]),
        &turns(&["u2", "a2"]),
        Some(Some(keys[3])),
    )
    .unwrap();
    // u1 now has two continuations: a1 (kept by the responses) and the rebased u2.
    assert_eq!(s.children(A, &keys[0]).unwrap().len(), 2);
    s.verify().unwrap();
    s.delete_response(A, &two).unwrap();
    s.delete_response(A, &one).unwrap();
    // a1 and what followed it are gone, and so are their entries.
    assert_eq!(s.children(A, &keys[0]).unwrap().len(), 1);
    assert!(s.children(A, &keys[1]).unwrap().is_empty());
    s.verify().unwrap();
    s.delete_thread(A, "t").unwrap();
    assert!(s.children(A, &keys[0]).unwrap().is_empty());
    s.verify().unwrap();
}

#[test]
fn children_index_entries_go_with_swept_turns() {
    let (_d, s) = store_with(retention(|r| r.response_ttl_ms = 1_000));
    let r0 = respond(&s, A, &Anchor::Root, &["root"]);
    let root = last_turn(&s, A, &r0);
    s.create_thread(A, Some("t"), None, true, false).unwrap();
    let kept = s
        .append(A, &thread("t"), &turns(&["u"]), None, &no_options())
        .unwrap()
        .turn_ids;
    for _ in 0..3 {
        respond(&s, A, &Anchor::Turn(root), &["leaf"]);
    }
    assert_eq!(s.children(A, &root).unwrap().len(), 3);
    sleep_ms(1_100);
    s.sweep().unwrap();
    assert!(s.children(A, &root).unwrap().is_empty());
    assert_eq!(kept.len(), 1);
    s.verify().unwrap();
}

#[test]
fn children_index_is_built_for_a_store_written_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (root, leaf) = {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let r = respond(&s, A, &Anchor::Root, &["u", "a"]);
        let leaf = last_turn(&s, A, &r);
        let root = s.children(A, &leaf).unwrap();
        assert!(root.is_empty());
        // Forget the index as an older store never had it.
        s.write(|s, txn| {
            s.children.clear(txn)?;
            s.meta.delete(txn, b"children_indexed")?;
            Ok(())
        })
        .unwrap();
        let first = s
            .history_records(A, &after_response(&r))
            .unwrap()
            .view(0)
            .unwrap()
            .id;
        (first, leaf)
    };
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.children(A, &root).unwrap(), [leaf]);
    s.verify().unwrap();
}
