//! PostgreSQL schemas for tests: one per test ([`Schema`]) or, under
//! `VETO_TEST_REGISTRY_STORE=postgres`, one per registry directory.

#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a test kit: a database step that fails fails the test there"
)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::now;

/// With `VETO_TEST_REGISTRY_STORE=postgres`, every registry the tests
/// start runs on PostgreSQL (`VETO_TEST_POSTGRES_URL`, one schema per
/// registry directory, kept across restarts in that directory) instead of
/// SQLite, so the same suite covers both stores.
const REGISTRY_STORE_VAR: &str = "VETO_TEST_REGISTRY_STORE";

/// The test database's URL.
const POSTGRES_URL_VAR: &str = "VETO_TEST_POSTGRES_URL";

/// Where a directory records its PostgreSQL schema.
const PG_SCHEMA_FILE: &str = "pg-schema";

/// Runs `sql` on the database at `base`, on a runtime of its own (callers
/// may be inside or outside one).
fn pg_execute(base: &str, sql: &str) {
    let (base, sql) = (base.to_owned(), sql.to_owned());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for PostgreSQL");
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connecting to {POSTGRES_URL_VAR} `{base}`: {e}"));
            tokio::spawn(conn);
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
        });
    })
    .join();
}

/// `<prefix>_<pid>_<now>_<n>`: a schema name no other test or run uses.
fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        now(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A URL for the database at `base` with `schema` as the search path.
pub fn schema_url(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

/// The `--store` URL for a registry in `dir` under
/// `VETO_TEST_REGISTRY_STORE=postgres`; `None` for the default store.
pub(crate) fn registry_store(dir: &Path) -> Option<String> {
    match std::env::var(REGISTRY_STORE_VAR).as_deref() {
        Ok("postgres") => {}
        Ok("sqlite") | Ok("") | Err(_) => return None,
        Ok(other) => panic!("{REGISTRY_STORE_VAR}=`{other}`: use `postgres` or `sqlite`"),
    }
    let base = std::env::var(POSTGRES_URL_VAR)
        .unwrap_or_else(|_| panic!("{REGISTRY_STORE_VAR}=postgres needs {POSTGRES_URL_VAR}"));
    let file = dir.join(PG_SCHEMA_FILE);
    let name = match std::fs::read_to_string(&file) {
        Ok(name) => name,
        Err(_) => {
            let name = unique_name("veto_r");
            pg_execute(&base, &format!("CREATE SCHEMA {name}"));
            std::fs::write(&file, &name).expect("recording the schema");
            name
        }
    };
    Some(schema_url(&base, &name))
}

/// Drops the schema the registries in `dir` used, if they used one.
pub(crate) fn drop_registry_schema(dir: &Path) {
    if let (Ok(name), Ok(base)) = (
        std::fs::read_to_string(dir.join(PG_SCHEMA_FILE)),
        std::env::var(POSTGRES_URL_VAR),
    ) {
        pg_execute(&base, &format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
    }
}

/// A fresh schema in the test database, dropped on drop.
#[derive(Debug)]
pub struct Schema {
    base: String,
    name: String,
}

impl Schema {
    /// Creates `veto_t_<pid>_<now>_<n>` in the database at `base`.
    pub async fn create(base: &str) -> Self {
        let name = unique_name("veto_t");
        pg_execute(base, &format!("CREATE SCHEMA {name}"));
        Self {
            base: base.to_owned(),
            name,
        }
    }

    /// The URL with this schema as the search path.
    pub fn url(&self) -> String {
        schema_url(&self.base, &self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        pg_execute(&self.base, &format!("DROP SCHEMA {} CASCADE", self.name));
    }
}
