//! Schema migrations, embedded in the binary from `migrations/<backend>/`, applied
//! in order at start-up and recorded in `schema_migrations`.

use super::db::{self, Pool};

use super::{Backend, FormatOptions, Result, StoreError};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "orphans",
        sql: include_str!("../../../migrations/sqlite/0002_orphans.sql"),
    },
    Migration {
        version: 3,
        name: "inode_flags",
        sql: include_str!("../../../migrations/sqlite/0003_inode_flags.sql"),
    },
    Migration {
        version: 4,
        name: "quarantine",
        sql: include_str!("../../../migrations/sqlite/0004_quarantine.sql"),
    },
    Migration {
        version: 5,
        name: "drain",
        sql: include_str!("../../../migrations/sqlite/0005_drain.sql"),
    },
    Migration {
        version: 6,
        name: "replica_added",
        sql: include_str!("../../../migrations/sqlite/0006_replica_added.sql"),
    },
    Migration {
        version: 7,
        name: "gc_queued",
        sql: include_str!("../../../migrations/sqlite/0007_gc_queued.sql"),
    },
    Migration {
        version: 8,
        name: "sessions",
        sql: include_str!("../../../migrations/sqlite/0008_sessions.sql"),
    },
    Migration {
        version: 9,
        name: "repair_queue",
        sql: include_str!("../../../migrations/sqlite/0009_repair_queue.sql"),
    },
    Migration {
        version: 10,
        name: "node_certs",
        sql: include_str!("../../../migrations/sqlite/0010_node_certs.sql"),
    },
    Migration {
        version: 11,
        name: "session_owners",
        sql: include_str!("../../../migrations/sqlite/0011_session_owners.sql"),
    },
    // SQLite only: PostgreSQL tables have no rowid.
    Migration {
        version: 12,
        name: "without_rowid",
        sql: include_str!("../../../migrations/sqlite/0012_without_rowid.sql"),
    },
    Migration {
        version: 13,
        name: "deleted_inodes",
        sql: include_str!("../../../migrations/sqlite/0013_deleted_inodes.sql"),
    },
];

const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "orphans",
        sql: include_str!("../../../migrations/postgres/0002_orphans.sql"),
    },
    Migration {
        version: 3,
        name: "inode_flags",
        sql: include_str!("../../../migrations/postgres/0003_inode_flags.sql"),
    },
    Migration {
        version: 4,
        name: "quarantine",
        sql: include_str!("../../../migrations/postgres/0004_quarantine.sql"),
    },
    Migration {
        version: 5,
        name: "drain",
        sql: include_str!("../../../migrations/postgres/0005_drain.sql"),
    },
    Migration {
        version: 6,
        name: "replica_added",
        sql: include_str!("../../../migrations/postgres/0006_replica_added.sql"),
    },
    Migration {
        version: 7,
        name: "gc_queued",
        sql: include_str!("../../../migrations/postgres/0007_gc_queued.sql"),
    },
    Migration {
        version: 8,
        name: "sessions",
        sql: include_str!("../../../migrations/postgres/0008_sessions.sql"),
    },
    Migration {
        version: 9,
        name: "repair_queue",
        sql: include_str!("../../../migrations/postgres/0009_repair_queue.sql"),
    },
    Migration {
        version: 10,
        name: "node_certs",
        sql: include_str!("../../../migrations/postgres/0010_node_certs.sql"),
    },
    Migration {
        version: 11,
        name: "session_owners",
        sql: include_str!("../../../migrations/postgres/0011_session_owners.sql"),
    },
    Migration {
        version: 12,
        name: "deleted_inodes",
        sql: include_str!("../../../migrations/postgres/0012_deleted_inodes.sql"),
    },
];

/// Applies every migration the store has not seen yet. On PostgreSQL an advisory
/// lock keeps two starting meta servers from migrating at once.
/// Then formats a new store (see `format_if_new`) and returns (chunk_size, replication).
pub(super) async fn run(
    pool: &Pool,
    backend: Backend,
    format: FormatOptions,
) -> Result<(u32, u32)> {
    // The lock lives on a connection of its own, held until the end (SQLite
    // has one connection and one process: nothing to lock).
    let mut lock = match backend {
        Backend::Postgres => {
            let mut conn = pool.acquire().await?;
            conn.execute_batch("SELECT pg_advisory_lock(7468001)")
                .await?;
            Some(conn)
        }
        Backend::Sqlite => None,
    };
    let result = match apply(pool, backend).await {
        Ok(()) => format_if_new(pool, format).await,
        Err(e) => Err(e),
    };
    if let Some(conn) = lock.as_mut() {
        conn.execute_batch("SELECT pg_advisory_unlock(7468001)")
            .await?;
    }
    result
}

async fn apply(pool: &Pool, backend: Backend) -> Result<()> {
    let mut conn = pool.acquire().await?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)",
    )
    .await?;
    let applied: Vec<i64> = db::query("SELECT version FROM schema_migrations")
        .fetch_all(&mut conn)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()?;
    let list = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    if let Some(newest) = applied.iter().max() {
        if list.iter().all(|m| m.version < *newest) {
            return Err(StoreError::Corrupt(format!(
                "schema version {newest} is newer than this dfs-meta knows"
            )));
        }
    }
    drop(conn);
    for m in list.iter().filter(|m| !applied.contains(&m.version)) {
        tracing::info!(version = m.version, name = m.name, "applying migration");
        let mut tx = pool.begin().await?;
        tx.execute_batch(m.sql)
            .await
            .map_err(|source| StoreError::Migration {
                version: m.version,
                source,
            })?;
        db::query("INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(m.name)
            .bind(super::now_ms())
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Writes the format settings and the root directory into a new store, or reads
/// the settings an existing store was created with. Returns (chunk_size, replication).
async fn format_if_new(pool: &Pool, format: FormatOptions) -> Result<(u32, u32)> {
    let mut tx = pool.begin().await?;
    let existing = db::query("SELECT key, value FROM meta_config")
        .fetch_all(&mut tx)
        .await?;
    if !existing.is_empty() {
        let mut chunk_size = None;
        let mut replication = None;
        for row in existing {
            let key: String = row.try_get(0)?;
            let value: String = row.try_get(1)?;
            match key.as_str() {
                "chunk_size" => chunk_size = value.parse().ok(),
                "replication" => replication = value.parse().ok(),
                _ => {}
            }
        }
        tx.commit().await?;
        return match (chunk_size, replication) {
            (Some(c), Some(r)) => Ok((c, r)),
            _ => Err(StoreError::Corrupt(
                "meta_config lacks chunk_size or replication".into(),
            )),
        };
    }
    for (key, value) in [
        ("chunk_size", format.chunk_size.to_string()),
        ("replication", format.replication.to_string()),
    ] {
        db::query("INSERT INTO meta_config (key, value) VALUES ($1, $2)")
            .bind(key)
            .bind(value)
            .execute(&mut tx)
            .await?;
    }
    for name in ["ino", "chunk", "node"] {
        let start: i64 = if name == "ino" { 1 } else { 0 };
        db::query("INSERT INTO counters (name, value) VALUES ($1, $2)")
            .bind(name)
            .bind(start)
            .execute(&mut tx)
            .await?;
    }
    let now = super::rows::Timespec::now();
    db::query(
        "INSERT INTO inodes (ino, kind, mode, uid, gid, size, nlink, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, version, rdev)
         VALUES ($1, $2, $3, 0, 0, 0, 2, $4, $5, $4, $5, $4, $5, 0, 0)",
    )
    .bind(dfs_proto::ROOT_INO as i64)
    .bind(super::FileKind::Directory as i64)
    .bind(0o755i64)
    .bind(now.sec)
    .bind(i64::from(now.nsec))
    .execute(&mut tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        chunk_size = format.chunk_size,
        replication = format.replication,
        "formatted new store"
    );
    Ok((format.chunk_size, format.replication))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_rowid_keeps_every_row_of_an_existing_store() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let at = SQLITE
            .iter()
            .position(|m| m.name == "without_rowid")
            .unwrap();
        let (old, new) = SQLITE.split_at(at);
        assert_eq!(new[0].name, "without_rowid");
        for m in old {
            c.execute_batch(m.sql).unwrap();
        }
        c.execute_batch(
            "INSERT INTO dentries VALUES (1, x'6131', 5), (1, x'6132', 6);
             INSERT INTO file_chunks VALUES (5, 0, 70, 4096), (5, 1, 71, 100);
             INSERT INTO replicas VALUES (70, 1, 9), (70, 2, 9);
             INSERT INTO gc_replicas VALUES (80, 3, 7);
             INSERT INTO session_requests VALUES (4, 11, 5);",
        )
        .unwrap();
        c.execute_batch(new[0].sql).unwrap();
        let dump = |sql: &str| -> Vec<String> {
            let mut stmt = c.prepare(sql).unwrap();
            let n = stmt.column_count();
            stmt.query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join(","))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        };
        assert_eq!(dump("SELECT ino FROM dentries ORDER BY name").len(), 2);
        assert_eq!(
            dump("SELECT parent, ino FROM dentries WHERE name = x'6132'"),
            ["Integer(1),Integer(6)"]
        );
        assert_eq!(
            dump("SELECT idx, chunk_id, valid_len FROM file_chunks ORDER BY idx"),
            [
                "Integer(0),Integer(70),Integer(4096)",
                "Integer(1),Integer(71),Integer(100)"
            ]
        );
        assert_eq!(
            dump("SELECT node_id, added_ms FROM replicas ORDER BY node_id"),
            ["Integer(1),Integer(9)", "Integer(2),Integer(9)"]
        );
        assert_eq!(
            dump("SELECT * FROM gc_replicas"),
            ["Integer(80),Integer(3),Integer(7)"]
        );
        assert_eq!(
            dump("SELECT * FROM session_requests"),
            ["Integer(4),Integer(11),Integer(5)"]
        );
        // The keys and the indexes still hold; the tables have no rowid now.
        assert!(c
            .execute("INSERT INTO file_chunks VALUES (6, 0, 70, 1)", [])
            .is_err());
        assert!(c
            .execute("INSERT INTO dentries VALUES (1, x'6131', 9)", [])
            .is_err());
        for index in ["dentries_by_ino", "replicas_by_node", "gc_replicas_by_node"] {
            assert_eq!(
                dump(&format!(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND name = '{index}'"
                ))
                .len(),
                1
            );
        }
        for table in [
            "dentries",
            "file_chunks",
            "replicas",
            "gc_replicas",
            "session_requests",
        ] {
            assert!(c.prepare(&format!("SELECT rowid FROM {table}")).is_err());
        }
    }
}
