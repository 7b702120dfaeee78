//! PostgreSQL, for the tests of the shared store.

/// A fresh, empty PostgreSQL database for one test.
pub struct PgDatabase {
    /// Its URL.
    pub url: String,
    server: String,
    name: String,
}

/// Creates a database on the server of `TOLLGATE_TEST_DATABASE_URL`; `None`,
/// with the reason printed, when the variable is not set (CI sets it).
pub async fn pg_database() -> Option<PgDatabase> {
    use sqlx::Connection;
    let Ok(server) = std::env::var("TOLLGATE_TEST_DATABASE_URL") else {
        eprintln!("skipped: TOLLGATE_TEST_DATABASE_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)");
        return None;
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "tollgate_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .expect("TOLLGATE_TEST_DATABASE_URL names a reachable PostgreSQL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut conn)
        .await
        .expect("drop a leftover test database");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let base = server.split('?').next().unwrap_or(&server);
    let (prefix, _) = base.rsplit_once('/').expect("URL with a database path");
    Some(PgDatabase {
        url: format!("{prefix}/{name}"),
        server,
        name,
    })
}

impl PgDatabase {
    /// Drops the database and creates it again, empty, under the same
    /// name: what an operator restoring from scratch does.
    pub async fn recreate(&self) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.server)
            .await
            .expect("connect to the test server");
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await
            .expect("drop the test database");
        sqlx::query(&format!("CREATE DATABASE {}", self.name))
            .execute(&mut conn)
            .await
            .expect("create the test database again");
    }

    /// Drops the database (connections still open to it are closed).
    pub async fn drop_db(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.server).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}
