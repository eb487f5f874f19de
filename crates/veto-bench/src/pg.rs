//! A fresh PostgreSQL schema per run, so runs never see each other's state.

use anyhow::Context as _;

/// A schema created for this run; call [`Schema::drop_schema`] at the end.
pub(crate) struct Schema {
    base: String,
    /// The schema's name.
    pub name: String,
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

impl Schema {
    /// Creates `veto_bench_<pid>_<nanos>` in the database at `base`.
    pub(crate) async fn create(base: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("veto_bench_{}_{nanos}", std::process::id());
        connect(base)
            .await?
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .with_context(|| format!("CREATE SCHEMA {name}"))?;
        Ok(Self {
            base: base.to_owned(),
            name,
        })
    }

    /// The base URL with `search_path` set to this schema.
    pub(crate) fn url(&self) -> String {
        veto_testkit::schema_url(&self.base, &self.name)
    }

    /// Drops the schema and everything in it.
    pub(crate) async fn drop_schema(self) -> anyhow::Result<()> {
        connect(&self.base)
            .await?
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .with_context(|| format!("DROP SCHEMA {}", self.name))?;
        Ok(())
    }
}
