//! The SQL both stores run, written once.
//!
//! SQLite and PostgreSQL differ here only in how a bound parameter is
//! written (`?` against `$1`), and sqlx's `QueryBuilder` writes each
//! database's own. So every statement is built with `push_bind`, and
//! [`sql_store!`] expands the one implementation for each database type:
//! the compiler checks both, and no statement can drift between them.
//! (A function generic over `sqlx::Database` would do the same with a
//! dozen trait bounds per method; the macro keeps the code readable.)
//!
//! Rows are judged here too ([`client_row`]): what leaves the store is a
//! typed client or a rejected row, never values a caller must check.

use super::{Client, ClientRow, InvalidRow, RejectedRow};
use crate::limiter::{ApiKey, Limits, LimitsError, Rate};

/// Rows per statement in snapshot writes: 3 parameters a row, well under
/// SQLite's 32,766 and PostgreSQL's 65,535 parameters per statement.
pub(super) const BATCH: usize = 1000;

/// Implements [`super::ClientStore`] for `$store`, whose `pool` field is a
/// `sqlx::Pool<$db>` and which has an `announce(&self, tx, client_id)`:
/// called inside each client write's transaction, so that what it sends
/// (PostgreSQL's `NOTIFY`) goes out only if the write commits.
macro_rules! sql_store {
    ($store:ty, $db:ty) => {
        impl $store {
            fn client_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<$crate::store::ClientRow, sqlx::Error> {
                use sqlx::Row;
                $crate::store::sql::client_row(
                    row.try_get("client_id")?,
                    row.try_get("capacity")?,
                    row.try_get("rate_per_sec")?,
                    row.try_get("rate")?,
                )
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::ClientStore for $store {
            async fn list(
                &self,
            ) -> Result<Vec<$crate::store::ClientRow>, $crate::store::StoreError> {
                let rows = sqlx::QueryBuilder::<$db>::new(
                    "SELECT client_id, capacity, rate_per_sec, rate FROM clients ORDER BY client_id",
                )
                .build()
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(Self::client_row)
                    .collect::<Result<_, sqlx::Error>>()?)
            }

            async fn list_page(
                &self,
                page: &$crate::store::Page<'_>,
            ) -> Result<Vec<$crate::store::ClientRow>, $crate::store::StoreError> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT client_id, capacity, rate_per_sec, rate FROM clients WHERE 1 = 1",
                );
                if let Some(after) = page.after {
                    q.push(" AND client_id > ").push_bind(after);
                }
                if let Some(search) = page.search {
                    q.push(" AND LOWER(client_id) LIKE ")
                        .push_bind($crate::store::sql::contains_pattern(search))
                        .push(" ESCAPE '\\'");
                }
                q.push(" ORDER BY client_id LIMIT ")
                    .push_bind(i64::from(page.limit));
                let rows = q.build().fetch_all(&self.pool).await?;
                Ok(rows
                    .iter()
                    .map(Self::client_row)
                    .collect::<Result<_, sqlx::Error>>()?)
            }

            async fn get(
                &self,
                id: &$crate::limiter::ApiKey,
            ) -> Result<Option<$crate::store::ClientRow>, $crate::store::StoreError> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT client_id, capacity, rate_per_sec, rate FROM clients WHERE client_id = ",
                );
                q.push_bind(id.as_str());
                let row = q.build().fetch_optional(&self.pool).await?;
                Ok(row.as_ref().map(Self::client_row).transpose()?)
            }

            async fn create(
                &self,
                c: &$crate::store::Client,
            ) -> Result<(), $crate::store::StoreError> {
                let now = $crate::store::now_ms();
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO clients \
                     (client_id, capacity, rate_per_sec, rate, created_at, updated_at) ",
                );
                q.push_values([c], |mut row, c| {
                    row.push_bind(c.id.as_str())
                        .push_bind(i64::from(c.limits.capacity()))
                        .push_bind(c.limits.rate_per_sec())
                        .push_bind(c.limits.rate().map(|r| r.to_string()))
                        .push_bind(now)
                        .push_bind(now);
                });
                let mut tx = self.pool.begin().await?;
                q.build().execute(&mut *tx).await.map_err(|e| {
                    if matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation()) {
                        $crate::store::StoreError::AlreadyExists(c.id.as_str().to_owned())
                    } else {
                        $crate::store::StoreError::from(e)
                    }
                })?;
                self.announce(&mut tx, c.id.as_str()).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn update(
                &self,
                c: &$crate::store::Client,
            ) -> Result<(), $crate::store::StoreError> {
                let mut q = sqlx::QueryBuilder::<$db>::new("UPDATE clients SET capacity = ");
                q.push_bind(i64::from(c.limits.capacity()))
                    .push(", rate_per_sec = ")
                    .push_bind(c.limits.rate_per_sec())
                    .push(", rate = ")
                    .push_bind(c.limits.rate().map(|r| r.to_string()))
                    .push(", updated_at = ")
                    .push_bind($crate::store::now_ms())
                    .push(" WHERE client_id = ")
                    .push_bind(c.id.as_str());
                let mut tx = self.pool.begin().await?;
                let done = q.build().execute(&mut *tx).await?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound(c.id.as_str().to_owned()));
                }
                self.announce(&mut tx, c.id.as_str()).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn delete(&self, id: &str) -> Result<(), $crate::store::StoreError> {
                let mut q = sqlx::QueryBuilder::<$db>::new("DELETE FROM clients WHERE client_id = ");
                q.push_bind(id);
                let mut tx = self.pool.begin().await?;
                let done = q.build().execute(&mut *tx).await?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound(id.to_owned()));
                }
                self.announce(&mut tx, id).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn save_bucket_states(
                &self,
                delta: &$crate::store::SnapshotDelta,
            ) -> Result<(), $crate::store::StoreError> {
                if delta.upsert.is_empty() && delta.delete.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await?;
                // Multi-row statements: one INSERT per row cost ~24 µs a row
                // on SQLite.
                for chunk in delta.upsert.chunks($crate::store::sql::BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO bucket_states (client_key, tokens, saved_at) ",
                    );
                    q.push_values(chunk, |mut row, s| {
                        row.push_bind(s.client_key.as_str())
                            .push_bind(s.tokens)
                            .push_bind(s.saved_at_ms);
                    });
                    q.push(
                        " ON CONFLICT (client_key) DO UPDATE \
                         SET tokens = excluded.tokens, saved_at = excluded.saved_at",
                    );
                    q.build().execute(&mut *tx).await?;
                }
                for chunk in delta.delete.chunks($crate::store::sql::BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "DELETE FROM bucket_states WHERE client_key IN (",
                    );
                    let mut keys = q.separated(", ");
                    for key in chunk {
                        keys.push_bind(key.as_str());
                    }
                    q.push(")");
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn load_bucket_states(
                &self,
            ) -> Result<Vec<$crate::store::BucketState>, $crate::store::StoreError> {
                let rows = sqlx::QueryBuilder::<$db>::new(
                    "SELECT client_key, tokens, saved_at FROM bucket_states",
                )
                .build()
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        use sqlx::Row;
                        Ok($crate::store::BucketState {
                            client_key: r.try_get("client_key")?,
                            tokens: r.try_get("tokens")?,
                            saved_at_ms: r.try_get("saved_at")?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err($crate::store::StoreError::from)
            }

            async fn migrate(&self) -> Result<(), $crate::store::StoreError> {
                self.run_migrations().await
            }
        }
    };
}
pub(super) use sql_store;

/// A `LIKE` pattern (escape character `\`) for ids that contain `text`,
/// compared in lower case on both sides (`LOWER(client_id)`), so the
/// search ignores the case of ASCII letters on SQLite and PostgreSQL alike.
pub(super) fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_ascii_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Judges a client row as read: the one place a row becomes a
/// [`Client`], so start-up, reload and the admin API see
/// every row by the same rule and none validates again.
///
/// A capacity outside `u32` is a decode error (the read fails), not a
/// rejected row: a [`RejectedRow`] keeps its values in
/// the types the admin API shows, and such a value has none.
///
/// A row with a `rate` (`1000/day`) takes its limits from it, exactly;
/// `rate_per_sec` beside it is that rate for readers that know only that
/// column, and is not read back.
pub(super) fn client_row(
    client_id: String,
    capacity: i64,
    rate_per_sec: f64,
    rate: Option<String>,
) -> Result<ClientRow, sqlx::Error> {
    let capacity = u32::try_from(capacity).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let reason = match ApiKey::new(&client_id) {
        Err(e) => InvalidRow::Key(e),
        Ok(id) => {
            let cap = u64::from(capacity);
            let limits = match rate.as_deref().map(str::parse::<Rate>) {
                None => Limits::new(cap, rate_per_sec),
                Some(Ok(written)) => Limits::with_rate(cap, written),
                Some(Err(source)) => Err(LimitsError::BadRate(source)),
            };
            match limits {
                Ok(limits) => return Ok(ClientRow::Client(Client { id, limits })),
                Err(source) => InvalidRow::Limits { id, source },
            }
        }
    };
    Ok(ClientRow::Rejected(RejectedRow {
        client_id,
        capacity,
        rate_per_sec,
        rate,
        reason,
    }))
}

#[cfg(test)]
mod tests {
    use super::{client_row, ClientRow, InvalidRow};
    use crate::limiter::{KeyError, Limits, LimitsError};

    #[test]
    fn a_valid_row_is_a_client() {
        let row = client_row("a".into(), 5, 0.5, None).expect("decodes");
        let ClientRow::Client(c) = row else {
            panic!("rejected: {row:?}");
        };
        assert_eq!(c.id.as_str(), "a");
        assert_eq!((c.limits.capacity(), c.limits.rate_per_sec()), (5, 0.5));
    }

    #[test]
    fn a_bad_row_is_rejected_with_its_values_and_reason() {
        let row = client_row("a b".into(), 5, 1.0, None).expect("decodes");
        let ClientRow::Rejected(r) = &row else {
            panic!("accepted: {row:?}");
        };
        assert_eq!(r.reason, InvalidRow::Key(KeyError::BadChar(' ')));
        assert_eq!(row.key(), None);

        let row = client_row("b".into(), 0, 1.0, None).expect("decodes");
        let ClientRow::Rejected(r) = &row else {
            panic!("accepted: {row:?}");
        };
        assert!(matches!(
            &r.reason,
            InvalidRow::Limits { id, source: LimitsError::ZeroCapacity(0) } if id.as_str() == "b"
        ));
        assert_eq!(
            (row.client_id(), row.capacity(), row.rate_per_sec()),
            ("b", 0, 1.0)
        );
        // Its id is still a key: a reload unpins it when the row goes.
        assert!(row.key().is_some());
    }

    #[test]
    fn a_row_with_a_rate_takes_its_limits_from_it() {
        let row =
            client_row("a".into(), 1000, 0.011_574, Some("1000/day".into())).expect("decodes");
        let ClientRow::Client(c) = &row else {
            panic!("rejected: {row:?}");
        };
        let written = "1000/day".parse().expect("rate");
        assert_eq!(c.limits, Limits::with_rate(1000, written).expect("valid"));
        assert_eq!(row.rate().as_deref(), Some("1000/day"));

        let row = client_row("b".into(), 5, 1.0, Some("5/week".into())).expect("decodes");
        let ClientRow::Rejected(r) = &row else {
            panic!("accepted: {row:?}");
        };
        assert!(matches!(
            &r.reason,
            InvalidRow::Limits {
                source: LimitsError::BadRate(_),
                ..
            }
        ));
        assert_eq!(row.rate().as_deref(), Some("5/week"));
    }

    #[test]
    fn search_text_is_matched_literally() {
        assert_eq!(super::contains_pattern("Ab"), "%ab%");
        assert_eq!(super::contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    #[test]
    fn a_capacity_outside_u32_fails_the_read() {
        assert!(matches!(
            client_row("a".into(), 1 << 40, 1.0, None),
            Err(sqlx::Error::Decode(_))
        ));
        assert!(client_row("a".into(), -1, 1.0, None).is_err());
    }
}
