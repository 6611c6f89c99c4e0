//! Fresh planner statistics on PostgreSQL.
//!
//! PostgreSQL plans statements from table statistics that autovacuum renews
//! about once a minute at best. A table that grew fast meanwhile (a new
//! cluster's first thousands of files) keeps plans made for a nearly empty
//! table: sequential scans and hash joins where an index lookup is right.
//! Those grow slower with every row (a chunk map read took 3.4 ms instead
//! of 0.17 ms at 3,000 files), and at SERIALIZABLE a sequential scan locks
//! the whole table for conflict detection, so concurrent writes rerun. The
//! leader therefore analyzes each table once a tenth of it (and at least
//! 500 rows) changed since its last analysis. SQLite's planner uses the
//! indexes without statistics: nothing to do there.

use super::db;
use super::{Backend, Result, Store};

impl Store {
    /// Analyzes the store's tables whose statistics are stale; returns how many.
    pub async fn refresh_statistics(&self) -> Result<usize> {
        if self.backend != Backend::Postgres {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let stale = db::query(
            "SELECT relname FROM pg_stat_user_tables
             WHERE schemaname = current_schema() AND n_mod_since_analyze > 500 + n_live_tup / 10",
        )
        .fetch_all(&mut conn)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()?;
        for table in &stale {
            // A name from the catalog, quoted as an identifier.
            let sql = format!("ANALYZE \"{}\"", table.replace('"', "\"\""));
            db::query(&sql).execute(&mut conn).await?;
        }
        Ok(stale.len())
    }
}
