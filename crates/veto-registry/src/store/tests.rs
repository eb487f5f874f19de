//! The planner on its own, and both stores against a model: whatever
//! sequence of revocations, re-revocations and prunes, nothing once revoked
//! stops being revoked before every request that covered it has expired.
//! PostgreSQL runs when `VETO_TEST_POSTGRES_URL` is set (a fresh schema per
//! case), and says it was skipped otherwise.

use std::collections::BTreeMap;

use proptest::prelude::*;
use veto_core::{
    Digest, Entry, EntryKind, Head, KeySet, Reason, RevocationSet, SigningKey, SrlSigner, SrlState,
    SrlVerifier,
};

use super::{
    fold_duplicates, plan, AuditFilter, Existing, GatewayRow, NewEntry, PgStore, ReportRow,
    SqliteStore, Store, Stored,
};

fn signer() -> SrlSigner {
    SrlSigner::new(SigningKey::generate().unwrap(), "veto")
}

fn entry(kind: EntryKind, id: &str, before: Option<u64>, expires_at: Option<u64>) -> NewEntry {
    NewEntry {
        entry: Entry {
            kind,
            id: id.into(),
            reason: Reason::Unspecified,
            revoked_at: 100,
            before,
            expires_at,
        },
        note: None,
    }
}

fn one(entries: Vec<NewEntry>) -> Vec<(Vec<NewEntry>, String)> {
    vec![(entries, "admin".into())]
}

#[test]
fn fold_duplicates_keeps_the_join() {
    let folded = fold_duplicates(&[
        entry(EntryKind::Agent, "worker", Some(10), None),
        entry(EntryKind::Agent, "worker", Some(20), Some(500)),
        entry(EntryKind::Warrant, "w", None, Some(300)),
        entry(EntryKind::Warrant, "w", None, Some(200)),
        entry(EntryKind::Key, "k", None, Some(300)),
        entry(EntryKind::Key, "k", None, None),
    ]);
    let got: Vec<_> = folded
        .iter()
        .map(|n| (n.entry.kind, n.entry.before, n.entry.expires_at))
        .collect();
    assert_eq!(
        got,
        vec![
            (EntryKind::Agent, Some(20), None),
            (EntryKind::Warrant, None, Some(300)),
            (EntryKind::Key, None, None),
        ]
    );
    assert_eq!(super::join_expiry(Some(3), None), None);
    assert_eq!(super::join_expiry(Some(3), Some(5)), Some(5));
}

#[test]
fn a_later_cutoff_keeps_the_permanent_life() {
    // The issue's scenario: permanent agent entry, re-revoked with a later
    // cutoff and an expiry. The cutoff moves (a new version) and the entry
    // stays permanent.
    let mut existing = Existing::new();
    existing.insert(
        (EntryKind::Agent, "worker".into()),
        Stored {
            ver: 1,
            before: Some(50),
            expires_at: None,
        },
    );
    let p = plan(
        &one(vec![entry(EntryKind::Agent, "worker", Some(90), Some(103))]),
        &existing,
        1,
        Head::ZERO,
        &signer(),
        100,
    );
    assert_eq!(p.versions.len(), 1);
    let (e, ver) = &p.entries[0];
    assert_eq!((e.before, e.expires_at, *ver), (Some(90), None, 2));
    assert_eq!(p.results[0].added[0].expires_at, None);
    assert!(p.results[0].entries[0].created);
    assert!(p.extend.is_empty());
}

#[test]
fn an_earlier_cutoff_with_a_longer_life_extends_without_a_version() {
    let mut existing = Existing::new();
    existing.insert(
        (EntryKind::Agent, "worker".into()),
        Stored {
            ver: 4,
            before: Some(90),
            expires_at: Some(103),
        },
    );
    existing.insert(
        (EntryKind::Warrant, "w".into()),
        Stored {
            ver: 3,
            before: None,
            expires_at: Some(104),
        },
    );
    let p = plan(
        &one(vec![
            entry(EntryKind::Agent, "worker", Some(50), None),
            entry(EntryKind::Warrant, "w", None, None),
        ]),
        &existing,
        4,
        Head::ZERO,
        &signer(),
        100,
    );
    assert!(p.versions.is_empty());
    assert!(p.entries.is_empty());
    assert_eq!(
        p.extend,
        vec![
            (EntryKind::Agent, "worker".to_owned(), None),
            (EntryKind::Warrant, "w".to_owned(), None),
        ]
    );
    let outcomes: Vec<_> = p.results[0]
        .entries
        .iter()
        .map(|o| (o.version, o.created))
        .collect();
    assert_eq!(outcomes, vec![(4, false), (3, false)]);
    let actions: Vec<_> = p.audit.iter().map(|a| a.action).collect();
    assert_eq!(actions, vec!["revoke_extend", "revoke_extend"]);
}

#[test]
fn a_shorter_or_equal_request_changes_nothing() {
    let mut existing = Existing::new();
    existing.insert(
        (EntryKind::Key, "k".into()),
        Stored {
            ver: 2,
            before: None,
            expires_at: Some(200),
        },
    );
    let p = plan(
        &one(vec![entry(EntryKind::Key, "k", None, Some(150))]),
        &existing,
        2,
        Head::ZERO,
        &signer(),
        100,
    );
    assert!(p.versions.is_empty() && p.entries.is_empty() && p.extend.is_empty());
    assert_eq!(p.audit[0].action, "revoke_existing");
}

#[test]
fn one_key_in_several_requests_of_a_group_is_written_once_with_the_join() {
    let requests = vec![
        (
            vec![entry(EntryKind::Agent, "worker", Some(10), None)],
            "a".to_owned(),
        ),
        (
            vec![entry(EntryKind::Agent, "worker", Some(20), Some(150))],
            "b".to_owned(),
        ),
        (
            vec![entry(EntryKind::Warrant, "w", None, Some(120))],
            "c".to_owned(),
        ),
        (
            vec![entry(EntryKind::Warrant, "w", None, None)],
            "d".to_owned(),
        ),
    ];
    let p = plan(&requests, &Existing::new(), 0, Head::ZERO, &signer(), 100);
    // worker twice (the cutoff moved), w once (only its life grew).
    assert_eq!(p.versions.len(), 3);
    let rows: Vec<_> = p
        .entries
        .iter()
        .map(|(e, v)| (e.id.as_str(), e.before, e.expires_at, *v))
        .collect();
    assert_eq!(
        rows,
        vec![("worker", Some(20), None, 2), ("w", None, None, 3)]
    );
    assert!(p.extend.is_empty());
    assert_eq!(p.results[3].entries[0].version, 3);
    assert!(!p.results[3].entries[0].created);
}

/// One entry asked for: kind, id index, cutoff, life in seconds from now.
type Asked = (EntryKind, u8, u64, Option<u64>);

/// One step of a property case.
#[derive(Clone, Debug)]
enum Op {
    /// One commit group: requests of (kind, id index, cutoff, life in
    /// seconds from now).
    Revoke(Vec<Vec<Asked>>),
    /// Time passes by this many seconds, then the store prunes.
    Prune(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        Just(EntryKind::Warrant),
        Just(EntryKind::Agent),
        Just(EntryKind::Key)
    ];
    let one = (kind, 0u8..3, 0u64..8, proptest::option::of(0u64..8));
    prop_oneof![
        3 => proptest::collection::vec(proptest::collection::vec(one, 1..4), 1..4).prop_map(Op::Revoke),
        2 => (0u64..6).prop_map(Op::Prune),
    ]
}

/// The model: per (kind, id), the join of everything asked for it while live.
type Model = BTreeMap<(EntryKind, String), (Option<u64>, Option<u64>)>;

async fn run(store: &Store, ops: &[Op]) {
    let key = SigningKey::generate().unwrap();
    let verifier =
        SrlVerifier::new(KeySet::new([key.public().clone()]), "veto").with_skew(u64::MAX / 4);
    let signer = SrlSigner::new(key, "veto");
    let mut now = 1_000u64;
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Revoke(group) => {
                let requests: Vec<(Vec<NewEntry>, String)> = group
                    .iter()
                    .map(|req| {
                        let entries = req
                            .iter()
                            .map(|&(kind, id, before, life)| {
                                let before = (kind == EntryKind::Agent).then_some(before);
                                entry(kind, &format!("id{id}"), before, life.map(|l| now + l))
                            })
                            .collect();
                        (entries, "admin".to_owned())
                    })
                    .collect();
                store
                    .commit(requests.clone(), signer.clone(), now)
                    .await
                    .unwrap();
                for (entries, _) in &requests {
                    for n in entries {
                        let e = &n.entry;
                        let joined = match model.get(&(e.kind, e.id.clone())) {
                            Some(&(b, x)) => (b.max(e.before), super::join_expiry(x, e.expires_at)),
                            None => (e.before, e.expires_at),
                        };
                        model.insert((e.kind, e.id.clone()), joined);
                    }
                }
            }
            Op::Prune(dt) => {
                now += dt;
                while store.prune(signer.clone(), now, 2).await.unwrap().is_some() {}
                model.retain(|_, (_, x)| x.is_none_or(|x| x > now));
            }
        }
        // The store holds exactly the model's join, live.
        let stored: Model = store
            .live()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, id, b, x)| ((k, id), (b, x)))
            .collect();
        assert_eq!(stored, model, "stored entries after {op:?} at {now}");
        // And the published chain, replayed from version 0, revokes exactly
        // what the model does, with the latest cutoff.
        let loaded = store.load().await.unwrap();
        let deltas = store
            .deltas(0, loaded.ver, usize::MAX, usize::MAX)
            .await
            .unwrap()
            .unwrap();
        let mut state = SrlState::at(0, Head::ZERO, RevocationSet::default());
        for (_, jws) in &deltas {
            state
                .apply_delta(&verifier.delta(jws, now).unwrap())
                .unwrap();
        }
        assert_eq!(state.ver(), loaded.ver);
        assert_eq!(state.set().len(), model.len(), "published set after {op:?}");
        for ((kind, id), (before, _)) in &model {
            assert_eq!(
                state.set().get(*kind, &Digest::of(*kind, id)),
                Some(before.unwrap_or(0)),
                "{kind} {id} published after {op:?}"
            );
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn temp_db() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "veto-store-model-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A PostgreSQL store in a schema of its own, and the future that drops it.
async fn pg_store(base: &str) -> (Store, impl std::future::Future<Output = ()>) {
    let (url, cleanup) = pg_schema(base).await;
    (
        Store::postgres(PgStore::connect(&url).await.unwrap()),
        cleanup,
    )
}

/// A schema of its own: the URL that uses it, and the future that drops it.
async fn pg_schema(base: &str) -> (String, impl std::future::Future<Output = ()>) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let (admin, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let schema = format!(
        "veto_model_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
    let cleanup = async move {
        admin
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    };
    (url, cleanup)
}

/// A database made by an earlier release (the `(kind, id)` B-tree on the
/// audit log) gets the hash index on `id` when a registry connects, built
/// without blocking writes; an invalid one (an interrupted build) is built
/// again; a new database has it from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_audit_log_gets_its_hash_index_on_new_and_old_databases() {
    let Ok(base) = std::env::var("VETO_TEST_POSTGRES_URL") else {
        eprintln!("skipped: VETO_TEST_POSTGRES_URL is not set");
        return;
    };
    let (url, cleanup) = pg_schema(&base).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let indexes = || async {
        let rows = client
            .query(
                "SELECT c.relname::text, x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                 WHERE x.indrelid = to_regclass('veto_audit') ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
            .collect::<Vec<_>>()
    };
    let expected = vec![
        ("veto_audit_id_hash".to_owned(), true),
        ("veto_audit_pkey".to_owned(), true),
    ];
    drop(PgStore::connect(&url).await.unwrap());
    assert_eq!(indexes().await, expected, "a new database");

    // As an earlier release left it, with rows.
    client
        .batch_execute(
            "DROP INDEX veto_audit_id_hash; CREATE INDEX veto_audit_id ON veto_audit (kind, id);
             INSERT INTO veto_audit (at, actor, action, kind, id)
             SELECT 1, 'admin', 'revoke', 'warrant', 'w-' || g FROM generate_series(1, 1000) g",
        )
        .await
        .unwrap();
    let store = Store::postgres(PgStore::connect(&url).await.unwrap());
    assert_eq!(indexes().await, expected, "an earlier release's database");
    let found = store
        .audit_log(AuditFilter {
            kind: None,
            id: Some("w-7".into()),
            since: None,
            until: None,
            actor: None,
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    drop(store);

    // An interrupted build.
    client
        .batch_execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass('veto_audit_id_hash')",
        )
        .await
        .unwrap();
    drop(PgStore::connect(&url).await.unwrap());
    assert_eq!(indexes().await, expected, "after an interrupted build");
    drop(client);
    cleanup.await;
}

/// A batch's lookup of its keys probes the primary key once per key even
/// where PostgreSQL's cost model prefers hashing the whole table: 60,000
/// analyzed rows and 3,000 keys plan a hash join over a sequential scan
/// without the write transaction's settings (on PostgreSQL 15; noted when
/// a server plans otherwise), so every batch would cost as much as the
/// table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batches_look_up_their_keys_by_key_whatever_the_table_size() {
    let Ok(base) = std::env::var("VETO_TEST_POSTGRES_URL") else {
        eprintln!("skipped: VETO_TEST_POSTGRES_URL is not set");
        return;
    };
    let (url, cleanup) = pg_schema(&base).await;
    drop(PgStore::connect(&url).await.unwrap());
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "INSERT INTO veto_entries (kind, id, reason, revoked_at, ver)
             SELECT 'warrant', md5(g::text), 'unspecified', 1, 1 FROM generate_series(1, 60000) g;
             ANALYZE veto_entries",
        )
        .await
        .unwrap();
    let kinds: Vec<&str> = vec!["warrant"; 3000];
    let ids: Vec<String> = (0..3000).map(|i| format!("new-{i}")).collect();
    let explain = format!("EXPLAIN {}", super::postgres::STORED_ROWS);
    let plan = |rows: Vec<tokio_postgres::Row>| -> String {
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let tx = client.transaction().await.unwrap();
    let unset = plan(tx.query(&explain, &[&kinds, &ids]).await.unwrap());
    if !unset.contains("Seq Scan on veto_entries") {
        // PostgreSQL 15 here plans a hash join over the whole table.
        eprintln!("note: without the settings this server no longer scans the table:\n{unset}");
    }
    tx.rollback().await.unwrap();
    let tx = super::postgres::begin_by_key(&mut client).await.unwrap();
    let set = plan(tx.query(&explain, &[&kinds, &ids]).await.unwrap());
    assert!(
        set.contains("Index Scan using veto_entries_pkey") && !set.contains("Seq Scan"),
        "{set}"
    );
    // Pruning's update of the same keys: by key too.
    let prune = plan(
        tx.query(
            &format!("EXPLAIN {}", super::postgres::MARK_PRUNED),
            &[&kinds, &ids, &7_i64],
        )
        .await
        .unwrap(),
    );
    assert!(
        prune.contains("Index Scan using veto_entries_pkey") && !prune.contains("Seq Scan"),
        "{prune}"
    );
    tx.rollback().await.unwrap();
    drop(client);
    cleanup.await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sqlite_never_narrows_a_revocation(ops in proptest::collection::vec(op(), 1..24)) {
        let dir = temp_db();
        let store = Store::sqlite(SqliteStore::open(&dir.join("veto.db")).unwrap());
        runtime().block_on(run(&store, &ops));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn postgres_never_narrows_a_revocation(ops in proptest::collection::vec(op(), 1..24)) {
        let Ok(base) = std::env::var("VETO_TEST_POSTGRES_URL") else {
            eprintln!("skipped: VETO_TEST_POSTGRES_URL is not set");
            return Ok(());
        };
        runtime().block_on(async {
            let (store, cleanup) = pg_store(&base).await;
            run(&store, &ops).await;
            drop(store);
            cleanup.await;
        });
    }
}

/// Both stores answer a byte-capped prefix in version order, never empty
/// while deltas are due.
async fn pages_by_bytes(store: &Store) {
    let signer = signer();
    for v in 0..10u64 {
        let entries = (0..=v)
            .map(|i| entry(EntryKind::Warrant, &format!("p{v}-{i}"), None, None))
            .collect();
        store
            .commit(one(entries), signer.clone(), 1_000)
            .await
            .unwrap();
    }
    let all = store
        .deltas(0, 10, 1000, usize::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.len(), 10);
    let sizes: Vec<usize> = all.iter().map(|(_, j)| j.len()).collect();
    for since in 0..10u64 {
        let rest = &sizes[since as usize..];
        for max_bytes in [
            1,
            rest[0],
            rest[0] + 1,
            rest.iter().take(3).sum::<usize>(),
            usize::MAX,
        ] {
            let page = store
                .deltas(since, 10, 1000, max_bytes)
                .await
                .unwrap()
                .unwrap();
            let vers: Vec<u64> = page.iter().map(|(v, _)| *v).collect();
            // The longest prefix within the budget, at least one delta.
            let mut want = 1;
            while want < rest.len() && rest[..=want].iter().sum::<usize>() <= max_bytes {
                want += 1;
            }
            assert_eq!(
                vers,
                (since + 1..=since + want as u64).collect::<Vec<_>>(),
                "since {since}, {max_bytes} bytes"
            );
        }
        // The count limit still applies.
        let page = store
            .deltas(since, 10, 1, usize::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.len(), 1);
    }
}

#[test]
fn sqlite_pages_deltas_by_bytes() {
    let dir = temp_db();
    let store = Store::sqlite(SqliteStore::open(&dir.join("veto.db")).unwrap());
    runtime().block_on(pages_by_bytes(&store));
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_pages_deltas_by_bytes() {
    let Ok(base) = std::env::var("VETO_TEST_POSTGRES_URL") else {
        eprintln!("skipped: VETO_TEST_POSTGRES_URL is not set");
        return;
    };
    runtime().block_on(async {
        let (store, cleanup) = pg_store(&base).await;
        pages_by_bytes(&store).await;
        drop(store);
        cleanup.await;
    });
}

/// PostgreSQL's own errors for a read-only database reach the client as
/// `store_read_only` (507): the error comes from a real server, refusing a
/// write in a read-only transaction (SQLSTATE 25006). A full disk (53100)
/// cannot be made on demand here; it is mapped the same way, by its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_only_errors_are_classified() {
    let Ok(base) = std::env::var("VETO_TEST_POSTGRES_URL") else {
        eprintln!("skipped: VETO_TEST_POSTGRES_URL is not set");
        return;
    };
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let e = client
        .batch_execute("BEGIN READ ONLY; CREATE TABLE veto_read_only_probe (a int)")
        .await
        .unwrap_err();
    let _ = client.batch_execute("ROLLBACK").await;
    let e = super::StoreError::from(e);
    assert_eq!(e.unwritable(), super::Unwritable::ReadOnly, "{e}");
    let e = client
        .batch_execute("SELECT * FROM veto_no_such_table_here")
        .await
        .unwrap_err();
    assert_eq!(
        super::StoreError::from(e).unwritable(),
        super::Unwritable::Other
    );
}

fn gateway(id: &str, name: &str, enrolled_at: u64) -> GatewayRow {
    GatewayRow {
        id: id.into(),
        name: name.into(),
        public_jwk: format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{id}"}}"#),
        enrolled_at,
        removed_at: None,
    }
}

fn report(id: &str, iat: u64, seq: u64, received_ms: u64, ver: u64) -> ReportRow {
    ReportRow {
        id: id.into(),
        iat,
        seq,
        received_ms,
        ver,
        report: format!(r#"{{"iat":{iat},"seq":{seq},"ver":{ver}}}"#),
    }
}

/// Both stores: enrolment, removal and re-enrolment, reports accepted only
/// in increasing (iat, seq) order, the applied history and its pruning,
/// and the audit records.
async fn fleet(store: &Store) {
    // Enrol; a live gateway is not enrolled twice.
    assert!(store
        .enrol_gateway(&gateway("g1", "edge-1", 100), "admin")
        .await
        .unwrap());
    assert!(store
        .enrol_gateway(&gateway("g2", "edge-2", 90), "admin")
        .await
        .unwrap());
    assert!(!store
        .enrol_gateway(&gateway("g1", "other", 150), "admin")
        .await
        .unwrap());
    assert_eq!(
        store.gateways().await.unwrap(),
        vec![gateway("g2", "edge-2", 90), gateway("g1", "edge-1", 100)]
    );

    // Reports: the first is accepted and applies its version.
    assert!(store
        .record_report(&report("g1", 1_000, 5, 1_000_100, 3))
        .await
        .unwrap());
    // Older or equal (iat, seq): refused, nothing written.
    for (iat, seq) in [(1_000, 5), (1_000, 4), (999, 9)] {
        assert!(
            !store
                .record_report(&report("g1", iat, seq, 1_000_200, 9))
                .await
                .unwrap(),
            "({iat}, {seq})"
        );
    }
    assert_eq!(
        store.reports().await.unwrap(),
        vec![report("g1", 1_000, 5, 1_000_100, 3)]
    );
    // Newer, same version: accepted, no new applied row.
    assert!(store
        .record_report(&report("g1", 1_000, 6, 1_000_300, 3))
        .await
        .unwrap());
    // A newer iat with a lower seq (a restarted process): accepted, and a
    // lower version is not applied history.
    assert!(store
        .record_report(&report("g1", 1_001, 0, 1_001_000, 2))
        .await
        .unwrap());
    assert_eq!(
        store.reports().await.unwrap(),
        vec![report("g1", 1_001, 0, 1_001_000, 2)]
    );
    assert_eq!(
        store.applied_since(0).await.unwrap(),
        vec![("g1".into(), 1_000_100)]
    );
    // The version grows (from the stored 2): applied.
    assert!(store
        .record_report(&report("g1", 1_002, 1, 1_002_000, 5))
        .await
        .unwrap());
    assert!(store
        .record_report(&report("g1", 1_003, 2, 1_003_000, 7))
        .await
        .unwrap());
    assert!(store
        .record_report(&report("g2", 1_000, 0, 1_000_500, 5))
        .await
        .unwrap());

    // Unknown gateways are refused.
    assert!(!store
        .record_report(&report("nope", 2_000, 0, 2_000_000, 9))
        .await
        .unwrap());

    // The earliest receipt of each version at or after the one asked.
    assert_eq!(
        store.applied_since(3).await.unwrap(),
        vec![("g1".into(), 1_000_100), ("g2".into(), 1_000_500)]
    );
    assert_eq!(
        store.applied_since(4).await.unwrap(),
        vec![("g1".into(), 1_002_000), ("g2".into(), 1_000_500)]
    );
    assert_eq!(
        store.applied_since(6).await.unwrap(),
        vec![("g1".into(), 1_003_000)]
    );
    assert!(store.applied_since(8).await.unwrap().is_empty());

    // Pruning keeps each gateway's newest applied row, however old.
    assert_eq!(store.prune_applied(1_002_500).await.unwrap(), 2);
    assert_eq!(store.prune_applied(u64::MAX / 4).await.unwrap(), 0);
    assert_eq!(
        store.applied_since(0).await.unwrap(),
        vec![("g1".into(), 1_003_000), ("g2".into(), 1_000_500)]
    );

    // Removal drops the report and the history, refuses later reports,
    // and happens once.
    assert!(store.remove_gateway("g1", 2_000, "admin").await.unwrap());
    assert!(!store.remove_gateway("g1", 2_001, "admin").await.unwrap());
    assert!(!store.remove_gateway("nope", 2_001, "admin").await.unwrap());
    assert!(!store
        .record_report(&report("g1", 3_000, 0, 3_000_000, 9))
        .await
        .unwrap());
    assert_eq!(
        store.reports().await.unwrap(),
        vec![report("g2", 1_000, 0, 1_000_500, 5)]
    );
    assert_eq!(
        store.applied_since(0).await.unwrap(),
        vec![("g2".into(), 1_000_500)]
    );
    let removed = GatewayRow {
        removed_at: Some(2_000),
        ..gateway("g1", "edge-1", 100)
    };
    assert_eq!(
        store.gateways().await.unwrap(),
        vec![gateway("g2", "edge-2", 90), removed]
    );

    // Re-enrolment takes the new name, key and time; reports start over.
    let again = GatewayRow {
        public_jwk: "{}".into(),
        ..gateway("g1", "edge-1b", 2_500)
    };
    assert!(store.enrol_gateway(&again, "ops").await.unwrap());
    assert!(!store.enrol_gateway(&again, "ops").await.unwrap());
    assert_eq!(
        store.gateways().await.unwrap(),
        vec![gateway("g2", "edge-2", 90), again]
    );
    assert!(store
        .record_report(&report("g1", 900, 0, 3_000_000, 1))
        .await
        .unwrap());
    assert_eq!(
        store.applied_since(0).await.unwrap(),
        vec![("g1".into(), 3_000_000), ("g2".into(), 1_000_500)]
    );

    // Every write that changed something is audited, and only those.
    let log = store
        .audit_log(AuditFilter {
            id: Some("g1".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let got: Vec<_> = log
        .iter()
        .map(|a| (a.at, a.actor.as_str(), a.action.as_str(), a.note.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            (100, "admin", "gateway_enrol", Some("edge-1")),
            (2_000, "admin", "gateway_remove", None),
            (2_500, "ops", "gateway_enrol", Some("edge-1b")),
        ]
    );
    assert!(log.iter().all(|a| a.id.as_deref() == Some("g1")));
    // The audit log filtered by actor.
    let by_ops = store
        .audit_log(AuditFilter {
            actor: Some("ops".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_ops.len(), 1);
    assert_eq!(by_ops[0].note.as_deref(), Some("edge-1b"));
}

#[test]
fn sqlite_fleet() {
    let dir = temp_db();
    let store = Store::sqlite(SqliteStore::open(&dir.join("veto.db")).unwrap());
    runtime().block_on(fleet(&store));
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_fleet() {
    let Ok(base) = std::env::var("VETO_TEST_POSTGRES_URL") else {
        eprintln!("skipped: VETO_TEST_POSTGRES_URL is not set");
        return;
    };
    runtime().block_on(async {
        let (store, cleanup) = pg_store(&base).await;
        fleet(&store).await;
        drop(store);
        cleanup.await;
    });
}
