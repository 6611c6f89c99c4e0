//! The store's one door to SQL: `query(sql).bind(..).execute/fetch_*(conn)`
//! with `$n` parameters, over SQLite or PostgreSQL.
//!
//! SQLite runs through rusqlite on the caller's own thread, holding the one
//! connection: a statement costs microseconds. (sqlx's SQLite driver sends
//! every statement to a worker thread and back; with a dozen statements per
//! transaction those thread hops were most of a metadata call's time.)
//! PostgreSQL runs through sqlx, whose calls are network round trips: there a
//! write whose outcome the caller does not need may be `defer`red, and the
//! deferred writes go to the server together, as one statement, before the
//! next statement or the commit (see `DbConn::defer`).

use std::sync::Arc;

use prometheus::IntCounter;
use sqlx::postgres::{PgPool, PgRow, Postgres};
use sqlx::{Column, Connection, Row as _, TypeInfo};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::checkpoint::Checkpointer;

mod ahead;
mod merge;

/// One SQL value, as both engines store the store's columns.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL of an integer column (PostgreSQL types its parameters).
    Null,
    NullText,
    NullBlob,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
    /// Arrays, PostgreSQL only: a merge of deferred writes (`merge.rs`).
    Ints(Vec<Option<i64>>),
    Texts(Vec<Option<String>>),
    Blobs(Vec<Option<Vec<u8>>>),
}

/// The NULL of a parameter's type.
pub trait NullOf {
    const NULL: Value;
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(i64::from(v))
            }
        }
        impl NullOf for $t {
            const NULL: Value = Value::Null;
        }
    )*};
}
int_value!(i64, i32, u32, i16, u16, u8, bool);

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}

impl NullOf for String {
    const NULL: Value = Value::NullText;
}

impl NullOf for &str {
    const NULL: Value = Value::NullText;
}

impl NullOf for Vec<u8> {
    const NULL: Value = Value::NullBlob;
}

impl NullOf for &[u8] {
    const NULL: Value = Value::NullBlob;
}

impl<T: Into<Value> + NullOf> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(T::NULL, Into::into)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Pg(#[from] sqlx::Error),
    #[error("column {column}: {problem}")]
    Decode {
        column: String,
        problem: &'static str,
    },
    #[error("the query returned no rows")]
    NoRows,
    #[error("cannot start the store's {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// A value a column may be read as.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<i64> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Option<bool> {
        i64::from_value(v).map(|i| i != 0)
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Option<String> {
        match v {
            Value::Text(s) => Some(s.clone()),
            Value::Blob(b) => String::from_utf8(b.clone()).ok(),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Vec<u8>> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            Value::Text(s) => Some(s.clone().into_bytes()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Option<T>> {
        match v {
            Value::Null | Value::NullText | Value::NullBlob => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// A column by position or by name.
pub trait ColumnIndex {
    fn position(&self, row: &Row) -> Option<usize>;
    fn describe(&self) -> String;
}

impl ColumnIndex for usize {
    fn position(&self, row: &Row) -> Option<usize> {
        (*self < row.values.len()).then_some(*self)
    }
    fn describe(&self) -> String {
        self.to_string()
    }
}

impl ColumnIndex for &str {
    fn position(&self, row: &Row) -> Option<usize> {
        row.columns.iter().position(|c| c == self)
    }
    fn describe(&self) -> String {
        (*self).to_string()
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row {
    columns: Arc<Vec<String>>,
    values: Vec<Value>,
}

impl Row {
    pub fn try_get<T: FromValue, I: ColumnIndex>(&self, index: I) -> Result<T, DbError> {
        let at = index.position(self).ok_or_else(|| DbError::Decode {
            column: index.describe(),
            problem: "no such column",
        })?;
        T::from_value(&self.values[at]).ok_or_else(|| DbError::Decode {
            column: index.describe(),
            problem: "unexpected type",
        })
    }
}

/// What an `execute` did.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    rows: u64,
}

impl Done {
    pub fn rows_affected(&self) -> u64 {
        self.rows
    }
}

/// Where connections come from, and the count of statements they sent.
#[derive(Clone)]
pub struct Pool {
    engine: Engine,
    /// Statements sent to the database (a round trip each on PostgreSQL;
    /// deferred writes sent together count once; a BEGIN sent ahead counts
    /// when its transaction is used, though not on that call's path).
    statements: IntCounter,
}

#[derive(Clone)]
enum Engine {
    /// The one SQLite connection (one writer anyway, and never SQLITE_BUSY),
    /// and the checkpoints beside it.
    Sqlite(Arc<Mutex<rusqlite::Connection>>, Arc<Checkpointer>),
    /// The pool, and a transaction begun ahead (`ahead.rs`).
    Pg(PgPool, Arc<ahead::Ahead>),
}

enum Inner {
    Sqlite(OwnedMutexGuard<rusqlite::Connection>),
    Pg(sqlx::pool::PoolConnection<Postgres>),
    PgTx(sqlx::Transaction<'static, Postgres>),
    /// A connection of its own, outside the pool (the leader's lock).
    PgOwn(Box<sqlx::PgConnection>),
}

/// A connection, in a transaction or not. An uncommitted transaction rolls
/// back when dropped.
pub struct DbConn {
    /// None only once `commit` took it.
    inner: Option<Inner>,
    sqlite_tx: bool,
    /// Deferred writes not yet sent (PostgreSQL only).
    pending: Deferred,
    statements: IntCounter,
    /// Told of each SQLite commit.
    checkpointer: Option<Arc<Checkpointer>>,
    /// A PostgreSQL transaction's pool: once it commits, the next
    /// transaction is begun ahead (`ahead.rs`).
    begins_next: Option<(Arc<ahead::Ahead>, PgPool)>,
}

/// Writes waiting to go to PostgreSQL in one round trip.
#[derive(Default)]
struct Deferred {
    statements: Vec<(String, Vec<Value>)>,
    /// The table each statement writes, and its key when the statement
    /// touches only the rows of that key in every table it names
    /// (`Query::defer_row`).
    written: Vec<(String, Option<i64>)>,
}

impl Deferred {
    /// Whether `sql` names a table a pending statement writes: then it must
    /// wait until they ran, since statements sent together do not see each
    /// other's changes. `key`: `sql` touches only the rows of that key in
    /// every table it names, so it waits only for a pending write of all
    /// rows or of the same key.
    fn touches(&self, sql: &str, key: Option<i64>) -> bool {
        words(sql).any(|w| {
            self.written.iter().any(|(t, pending)| {
                t.eq_ignore_ascii_case(w)
                    && match (key, pending) {
                        (Some(k), Some(p)) => k == *p,
                        _ => true,
                    }
            })
        })
    }

    /// The pending statements as one: data-modifying CTEs run in order of
    /// writing, each with its parameters renumbered after the ones before.
    fn combined(&mut self) -> Option<(String, Vec<Value>)> {
        self.written.clear();
        let mut statements = merge::merged(std::mem::take(&mut self.statements));
        if statements.len() <= 1 {
            return statements.pop();
        }
        let mut sql = String::from("WITH ");
        let mut args = Vec::new();
        for (i, (text, values)) in statements.into_iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("w{i} AS ("));
            sql.push_str(&renumber(&text, args.len()));
            sql.push(')');
            args.extend(values);
        }
        sql.push_str(" SELECT 1");
        Some((sql, args))
    }
}

/// A `Query::defer_row` key for a row its table names by more than one
/// column (an entry by directory and name, a request record by session and
/// number). Rows that differ get different keys but for a hash collision,
/// which only sends two writes apart that could have gone together. Every
/// keyed write of such a table keys its row this way.
pub fn row_key(parts: &impl std::hash::Hash) -> i64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish() as i64
}

/// `$from, $from+1, ...`: `n` numbered placeholders.
pub fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The condition "`column` is one of `ids`" with its parameters numbered
/// from `$1`, for `conn`'s engine: on PostgreSQL one array (one statement
/// text, prepared and planned once, for any number of ids), on SQLite a
/// list of numbered parameters.
pub fn one_of(conn: &DbConn, column: &str, ids: &[i64]) -> (String, Vec<Value>) {
    match conn.sqlite() {
        Some(_) => (
            format!("{column} IN ({})", placeholders(1, ids.len())),
            ids.iter().map(|&i| Value::Int(i)).collect(),
        ),
        None => (
            format!("{column} = ANY($1::bigint[])"),
            vec![Value::Ints(ids.iter().map(|&i| Some(i)).collect())],
        ),
    }
}

/// The identifier words of an SQL text.
fn words(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// The table an INSERT, UPDATE or DELETE writes.
fn written_table(sql: &str) -> Option<String> {
    let mut w = words(sql);
    let table = match w.next()?.to_ascii_uppercase().as_str() {
        "INSERT" | "DELETE" => w.nth(1)?,
        "UPDATE" => w.next()?,
        _ => return None,
    };
    Some(table.to_ascii_lowercase())
}

/// `$n` parameters outside quotes shifted to `$(n + by)`.
fn renumber(sql: &str, by: usize) -> String {
    map_params(sql, |n| format!("${}", n + by))
}

/// The highest `$n` parameter outside quotes (0 if none).
fn max_param(sql: &str) -> usize {
    let mut max = 0;
    map_params(sql, |n| {
        max = max.max(n);
        String::new()
    });
    max
}

/// `sql` with each `$n` parameter outside quotes replaced by `to(n)`.
fn map_params(sql: &str, mut to: impl FnMut(usize) -> String) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '$' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n * 10 + d as usize;
                chars.next();
            }
            out.push_str(&to(n));
            continue;
        }
        out.push(c);
    }
    out
}

impl Pool {
    /// The one SQLite connection, checkpointed by `checkpointer`; statements
    /// counted in `statements`.
    pub fn sqlite(
        conn: rusqlite::Connection,
        checkpointer: Checkpointer,
        statements: IntCounter,
    ) -> Pool {
        Pool {
            engine: Engine::Sqlite(Arc::new(Mutex::new(conn)), Arc::new(checkpointer)),
            statements,
        }
    }

    /// The SQLite checkpointer (None on PostgreSQL).
    pub fn checkpointer(&self) -> Option<&Checkpointer> {
        match &self.engine {
            Engine::Sqlite(_, c) => Some(c),
            Engine::Pg(..) => None,
        }
    }

    /// A PostgreSQL pool; statements counted in `statements`.
    pub fn pg(pool: PgPool, statements: IntCounter) -> Pool {
        Pool {
            engine: Engine::Pg(pool, Default::default()),
            statements,
        }
    }

    fn conn(&self, inner: Inner, sqlite_tx: bool) -> DbConn {
        DbConn {
            sqlite_tx,
            pending: Deferred::default(),
            statements: self.statements.clone(),
            checkpointer: match &self.engine {
                Engine::Sqlite(_, c) if sqlite_tx => Some(c.clone()),
                _ => None,
            },
            begins_next: match (&self.engine, &inner) {
                (Engine::Pg(p, ahead), Inner::PgTx(_)) => Some((ahead.clone(), p.clone())),
                _ => None,
            },
            inner: Some(inner),
        }
    }

    pub async fn acquire(&self) -> Result<DbConn, DbError> {
        let inner = match &self.engine {
            Engine::Sqlite(c, _) => Inner::Sqlite(c.clone().lock_owned().await),
            Engine::Pg(p, _) => Inner::Pg(p.acquire().await?),
        };
        Ok(self.conn(inner, false))
    }

    /// A transaction; on PostgreSQL at SERIALIZABLE isolation.
    pub async fn begin(&self) -> Result<DbConn, DbError> {
        self.statements.inc();
        match &self.engine {
            Engine::Sqlite(c, _) => {
                let guard = c.clone().lock_owned().await;
                guard.execute_batch("BEGIN IMMEDIATE")?;
                Ok(self.conn(Inner::Sqlite(guard), true))
            }
            Engine::Pg(p, ahead) => {
                let tx = ahead.begin(p).await?;
                Ok(self.conn(Inner::PgTx(tx), false))
            }
        }
    }

    /// A PostgreSQL connection that never goes back to the pool (None on SQLite).
    pub async fn detached(&self) -> Result<Option<DbConn>, DbError> {
        match &self.engine {
            Engine::Sqlite(..) => Ok(None),
            Engine::Pg(p, _) => {
                let conn = p.acquire().await?.detach();
                Ok(Some(self.conn(Inner::PgOwn(Box::new(conn)), false)))
            }
        }
    }

    pub async fn close(&self) {
        if let Engine::Pg(p, ahead) = &self.engine {
            ahead.close();
            p.close().await;
        }
    }
}

impl DbConn {
    /// Sends the deferred writes, if any.
    async fn flush(&mut self) -> Result<(), DbError> {
        let Some((sql, args)) = self.pending.combined() else {
            return Ok(());
        };
        self.statements.inc();
        let q = Query { sql: &sql, args }.pg_query();
        if let Some(pg) = self.pg() {
            q.execute(pg).await?;
        }
        Ok(())
    }

    pub async fn commit(mut self) -> Result<(), DbError> {
        self.flush().await?;
        if self.sqlite_tx || matches!(self.inner, Some(Inner::PgTx(_))) {
            self.statements.inc();
        }
        match self.inner.take() {
            Some(Inner::Sqlite(guard)) => {
                self.sqlite_tx = false;
                let result = guard.execute_batch("COMMIT");
                if result.is_err() {
                    let _ = guard.execute_batch("ROLLBACK");
                }
                result?;
                if let Some(c) = &self.checkpointer {
                    c.committed();
                }
            }
            Some(Inner::PgTx(tx)) => {
                tx.commit().await?;
                // Begun now, off this call's path (its reply goes out
                // meanwhile), not at the next call's begin.
                if let Some((ahead, pool)) = &self.begins_next {
                    ahead.begin_next(pool);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs SQL text with no parameters, possibly several statements
    /// (migrations, pragmas).
    pub async fn execute_batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.statements.inc();
        if let Some(Inner::Sqlite(c)) = &self.inner {
            c.execute_batch(sql)?;
            return Ok(());
        }
        self.flush().await?;
        if let Some(pg) = self.pg() {
            sqlx::raw_sql(sql).execute(pg).await?;
        }
        Ok(())
    }

    pub async fn ping(&mut self) -> Result<(), DbError> {
        self.statements.inc();
        if let Some(Inner::Sqlite(c)) = &self.inner {
            c.query_row("SELECT 1", [], |_| Ok(()))?;
            return Ok(());
        }
        if let Some(pg) = self.pg() {
            pg.ping().await?;
        }
        Ok(())
    }

    /// The SQLite connection, when that is what this is.
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.inner {
            Some(Inner::Sqlite(c)) => Some(c),
            _ => None,
        }
    }

    fn pg(&mut self) -> Option<&mut sqlx::PgConnection> {
        match self.inner.as_mut()? {
            Inner::Sqlite(_) => None,
            Inner::Pg(c) => Some(&mut **c),
            Inner::PgTx(t) => Some(&mut **t),
            Inner::PgOwn(c) => Some(&mut **c),
        }
    }
}

impl Drop for DbConn {
    fn drop(&mut self) {
        if self.sqlite_tx {
            if let Some(Inner::Sqlite(c)) = &self.inner {
                let _ = c.execute_batch("ROLLBACK");
            }
        }
    }
}

/// A statement and its parameters.
pub struct Query<'q> {
    sql: &'q str,
    args: Vec<Value>,
}

pub fn query(sql: &str) -> Query<'_> {
    Query {
        sql,
        args: Vec::new(),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null | Value::NullText | Value::NullBlob => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
            Value::Ints(_) | Value::Texts(_) | Value::Blobs(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "SQLite takes no arrays".into(),
                ))
            }
        }))
    }
}

fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        // The store keeps no floating point; a REAL is read as its integer part.
        ValueRef::Real(f) => Value::Int(f as i64),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn from_pg(row: &PgRow) -> Result<Row, DbError> {
    let columns: Vec<String> = row.columns().iter().map(|c| c.name().to_string()).collect();
    let mut values = Vec::with_capacity(columns.len());
    for (i, col) in row.columns().iter().enumerate() {
        let decode = DbError::Pg;
        let v = match col.type_info().name() {
            "INT8" => row.try_get::<Option<i64>, _>(i).map_err(decode)?.into(),
            "INT4" => row.try_get::<Option<i32>, _>(i).map_err(decode)?.into(),
            "INT2" => row.try_get::<Option<i16>, _>(i).map_err(decode)?.into(),
            "BOOL" => row.try_get::<Option<bool>, _>(i).map_err(decode)?.into(),
            "BYTEA" => row.try_get::<Option<Vec<u8>>, _>(i).map_err(decode)?.into(),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => {
                row.try_get::<Option<String>, _>(i).map_err(decode)?.into()
            }
            "VOID" => Value::Null,
            _ => {
                return Err(DbError::Decode {
                    column: col.name().to_string(),
                    problem: "a PostgreSQL type the store does not use",
                })
            }
        };
        values.push(v);
    }
    Ok(Row {
        columns: Arc::new(columns),
        values,
    })
}

impl<'q> Query<'q> {
    pub fn bind(mut self, v: impl Into<Value>) -> Self {
        self.args.push(v.into());
        self
    }

    fn pg_query(self) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        let mut q = sqlx::query(self.sql);
        for v in self.args {
            q = match v {
                Value::Null => q.bind(None::<i64>),
                Value::NullText => q.bind(None::<String>),
                Value::NullBlob => q.bind(None::<Vec<u8>>),
                Value::Int(i) => q.bind(i),
                Value::Text(s) => q.bind(s),
                Value::Blob(b) => q.bind(b),
                Value::Ints(v) => q.bind(v),
                Value::Texts(v) => q.bind(v),
                Value::Blobs(v) => q.bind(v),
            };
        }
        q
    }

    /// Runs the statement on SQLite, handing each row to `each`; returns the
    /// rows it changed.
    fn run_sqlite(
        &self,
        c: &rusqlite::Connection,
        mut each: impl FnMut(Row) -> bool,
    ) -> Result<u64, DbError> {
        // SQLite reads `$n` as a parameter named "$n" (numbered in order of
        // first use), so each is bound by its name: no rewrite of the SQL.
        let mut stmt = c.prepare_cached(self.sql)?;
        for i in 1..=stmt.parameter_count() {
            let name = stmt.parameter_name(i).unwrap_or_default();
            let arg = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1))
                .and_then(|n| self.args.get(n))
                .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_string()))?;
            stmt.raw_bind_parameter(i, arg)?;
        }
        let readonly = stmt.readonly();
        let columns: Arc<Vec<String>> = Arc::new(
            stmt.column_names()
                .into_iter()
                .map(str::to_string)
                .collect(),
        );
        let n = columns.len();
        let mut rows = stmt.raw_query();
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                values.push(from_sqlite(r.get_ref(i)?));
            }
            if !each(Row {
                columns: columns.clone(),
                values,
            }) {
                break;
            }
        }
        drop(rows);
        Ok(if readonly { 0 } else { c.changes() })
    }

    pub async fn execute(self, conn: &mut DbConn) -> Result<Done, DbError> {
        conn.statements.inc();
        if let Some(c) = conn.sqlite() {
            let rows = self.run_sqlite(c, |_| true)?;
            return Ok(Done { rows });
        }
        conn.flush().await?;
        let q = self.pg_query();
        let pg = conn.pg().ok_or(DbError::NoRows)?;
        let done = q.execute(pg).await?;
        Ok(Done {
            rows: done.rows_affected(),
        })
    }

    pub async fn fetch_all(self, conn: &mut DbConn) -> Result<Vec<Row>, DbError> {
        conn.statements.inc();
        if let Some(c) = conn.sqlite() {
            let mut out = Vec::new();
            self.run_sqlite(c, |r| {
                out.push(r);
                true
            })?;
            return Ok(out);
        }
        conn.flush().await?;
        let q = self.pg_query();
        let pg = conn.pg().ok_or(DbError::NoRows)?;
        q.fetch_all(pg).await?.iter().map(from_pg).collect()
    }

    pub async fn fetch_optional(self, conn: &mut DbConn) -> Result<Option<Row>, DbError> {
        conn.statements.inc();
        if let Some(c) = conn.sqlite() {
            let mut out = None;
            self.run_sqlite(c, |r| {
                out = Some(r);
                false
            })?;
            return Ok(out);
        }
        conn.flush().await?;
        let q = self.pg_query();
        let pg = conn.pg().ok_or(DbError::NoRows)?;
        q.fetch_optional(pg)
            .await?
            .as_ref()
            .map(from_pg)
            .transpose()
    }

    /// Runs a write whose outcome the caller does not need. On PostgreSQL it
    /// waits and goes to the server with the other deferred writes, before
    /// the connection's next statement or commit, all as one statement (one
    /// round trip). Order and effect are those of running each in turn: a
    /// write that names a table a waiting one writes first sends those.
    /// Its error, if any, comes from that later call. On SQLite, and outside
    /// a transaction (nothing would send it if the connection were dropped),
    /// it runs now.
    pub async fn defer(self, conn: &mut DbConn) -> Result<(), DbError> {
        self.defer_as(conn, None).await
    }

    /// `defer` for a write that touches only the rows of key `key` in
    /// every table it names, reads included (`WHERE ino = $1`, an INSERT of
    /// such a row, the chunks of file `ino`): it goes with waiting writes of
    /// other keys' rows. Each table's rows have one kind of key: an inode
    /// number for the rows of that inode (its row, its chunks, their
    /// replicas...), `row_key` for entries and request records.
    pub async fn defer_row(self, conn: &mut DbConn, key: i64) -> Result<(), DbError> {
        self.defer_as(conn, Some(key)).await
    }

    async fn defer_as(self, conn: &mut DbConn, key: Option<i64>) -> Result<(), DbError> {
        let in_pg_tx = matches!(conn.inner, Some(Inner::PgTx(_)));
        let Some(table) = in_pg_tx.then(|| written_table(self.sql)).flatten() else {
            return self.execute(conn).await.map(|_| ());
        };
        if conn.pending.touches(self.sql, key) {
            conn.flush().await?;
        }
        conn.pending
            .statements
            .push((self.sql.to_string(), self.args));
        conn.pending.written.push((table, key));
        Ok(())
    }

    pub async fn fetch_one(self, conn: &mut DbConn) -> Result<Row, DbError> {
        self.fetch_optional(conn).await?.ok_or(DbError::NoRows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn deferred_writes_combine_in_order_with_renumbered_parameters() {
        let mut d = Deferred::default();
        assert!(d.combined().is_none());
        d.statements.push((
            "DELETE FROM a WHERE x = $1 AND y = '$1'".into(),
            vec![Value::Int(1)],
        ));
        d.statements.push((
            "UPDATE b SET v = $2 WHERE k = $1".into(),
            vec![Value::Int(2), Value::Int(3)],
        ));
        d.written = vec![("a".into(), None), ("b".into(), None)];
        let (sql, args) = d.combined().unwrap();
        assert_eq!(
            sql,
            "WITH w0 AS (DELETE FROM a WHERE x = $1 AND y = '$1'), \
             w1 AS (UPDATE b SET v = $3 WHERE k = $2) SELECT 1"
        );
        assert_eq!(args, vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
        assert!(d.statements.is_empty() && d.written.is_empty());
        // One statement goes as it is.
        d.statements.push(("DELETE FROM a".into(), vec![]));
        assert_eq!(d.combined().unwrap().0, "DELETE FROM a");
    }

    #[test]
    fn a_write_naming_a_pending_table_waits_for_it() {
        assert_eq!(
            written_table("INSERT INTO gc_replicas (a) VALUES ($1)").as_deref(),
            Some("gc_replicas")
        );
        assert_eq!(
            written_table("UPDATE Inodes SET a = 1").as_deref(),
            Some("inodes")
        );
        assert_eq!(
            written_table("DELETE FROM chunks WHERE id = 1").as_deref(),
            Some("chunks")
        );
        assert_eq!(written_table("SELECT 1 FROM chunks"), None);
        let d = Deferred {
            statements: vec![("DELETE FROM replicas".into(), vec![])],
            written: vec![("replicas".into(), None)],
        };
        assert!(d.touches("INSERT INTO gc SELECT chunk_id FROM replicas", None));
        assert!(d.touches("DELETE FROM REPLICAS", None));
        // A longer name that contains it is another table.
        assert!(!d.touches("DELETE FROM gc_replicas WHERE chunk_id = $1", None));
        assert!(!Deferred::default().touches("DELETE FROM replicas", None));
        // A write of one key's rows waits for the whole table's, not for
        // other keys'.
        assert!(d.touches("DELETE FROM replicas WHERE chunk_id = $1", Some(7)));
        let rows = Deferred {
            statements: vec![("UPDATE inodes SET nlink = 1 WHERE ino = $1".into(), vec![])],
            written: vec![("inodes".into(), Some(1))],
        };
        let delete = "DELETE FROM inodes WHERE ino = $1";
        assert!(!rows.touches(delete, Some(2)));
        assert!(rows.touches(delete, Some(1)), "the same row");
        assert!(rows.touches(delete, None), "a write of any row");
        // The key holds in every table a statement names, read or written.
        let read = "INSERT INTO x SELECT ino FROM inodes WHERE ino = $1";
        assert!(!rows.touches(read, Some(2)));
        assert!(rows.touches(read, Some(1)));
        assert!(rows.touches("INSERT INTO x SELECT ino FROM inodes", None));
    }

    /// A pool of `connections` on the server DFS_TEST_POSTGRES_URL names;
    /// None (the test skipped) where it is unset, except in CI.
    async fn pg_pool(connections: u32, statements: IntCounter) -> Option<Pool> {
        let Ok(url) = std::env::var("DFS_TEST_POSTGRES_URL") else {
            let required = std::env::var_os("CI").is_some()
                || std::env::var_os("DFS_REQUIRE_POSTGRES").is_some();
            assert!(!required, "DFS_TEST_POSTGRES_URL is not set");
            eprintln!("SKIP: DFS_TEST_POSTGRES_URL not set");
            return None;
        };
        let pg = sqlx::postgres::PgPoolOptions::new()
            .max_connections(connections)
            .connect(&url)
            .await
            .unwrap();
        Some(Pool::pg(pg, statements))
    }

    /// Deferred writes merged over arrays (`merge.rs`) run on a real
    /// PostgreSQL as they would one by one: NULLs, bytes and text, a
    /// parameter used twice, an INSERT, an UPDATE and a DELETE.
    #[tokio::test]
    async fn merged_writes_do_on_postgresql_what_each_would() {
        let counted = IntCounter::new("t", "t").unwrap();
        let Some(pool) = pg_pool(1, counted.clone()).await else {
            return;
        };
        let mut tx = pool.begin().await.unwrap();
        tx.execute_batch("CREATE TEMP TABLE t (k BIGINT PRIMARY KEY, n BIGINT, b BYTEA, s TEXT)")
            .await
            .unwrap();
        let insert = "INSERT INTO t (k, n, b, s) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
        /// A row of `t`: k, n, b, s.
        type TRow = (i64, Option<i64>, Option<Vec<u8>>, Option<String>);
        let rows: [TRow; 3] = [
            (1, Some(10), Some(b"one".to_vec()), Some("x".into())),
            (2, None, None, Some("y".into())),
            (3, Some(30), Some(b"\0\xff".to_vec()), None),
        ];
        for (k, n, b, s) in rows {
            query(insert)
                .bind(k)
                .bind(n)
                .bind(b)
                .bind(s)
                .defer_row(&mut tx, k)
                .await
                .unwrap();
        }
        let before = counted.get();
        let n = query("SELECT COUNT(*) FROM t")
            .fetch_one(&mut tx)
            .await
            .unwrap();
        assert_eq!(n.try_get::<i64, _>(0).unwrap(), 3);
        assert_eq!(counted.get() - before, 2, "three inserts sent as one");
        let update = "UPDATE t SET n = COALESCE(n, 0) + $2, s = $3 || $3 WHERE k = $1";
        for (k, by) in [(1i64, 1i64), (2, 2)] {
            query(update)
                .bind(k)
                .bind(by)
                .bind(format!("v{k}"))
                .defer_row(&mut tx, k)
                .await
                .unwrap();
        }
        let delete = "DELETE FROM t WHERE k = $1 AND b = $2";
        for (k, b) in [(3i64, b"\0\xff".as_slice()), (4, b"none")] {
            query(delete)
                .bind(k)
                .bind(b)
                .defer_row(&mut tx, k)
                .await
                .unwrap();
        }
        let got: Vec<TRow> = query("SELECT k, n, b, s FROM t ORDER BY k")
            .fetch_all(&mut tx)
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.try_get(0).unwrap(),
                    r.try_get(1).unwrap(),
                    r.try_get(2).unwrap(),
                    r.try_get(3).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Some(11), Some(b"one".to_vec()), Some("v1v1".into())),
                (2, Some(2), None, Some("v2v2".into())),
            ]
        );
    }

    /// A transaction begun ahead (`ahead.rs`) sees what others committed
    /// after its BEGIN and before its first statement, as one begun then
    /// would; closing the pool with one waiting does not hang.
    #[tokio::test]
    async fn a_transaction_begun_ahead_reads_as_of_its_first_statement() {
        let Some(pool) = pg_pool(3, IntCounter::new("t", "t").unwrap()).await else {
            return;
        };
        let table = format!("ahead_{}", rand::random::<u32>());
        let mut conn = pool.acquire().await.unwrap();
        conn.execute_batch(&format!("CREATE TABLE {table} (k BIGINT)"))
            .await
            .unwrap();
        // The first transaction begins the next one ahead.
        pool.begin().await.unwrap().commit().await.unwrap();
        let Engine::Pg(_, ahead) = &pool.engine else {
            unreachable!("a PostgreSQL pool")
        };
        let waited = Instant::now();
        while !ahead.is_ready() {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "none begun ahead"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Committed by another connection after that BEGIN.
        conn.execute_batch(&format!("INSERT INTO {table} VALUES (1)"))
            .await
            .unwrap();
        let mut tx = pool.begin().await.unwrap();
        let seen = query(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut tx)
            .await
            .unwrap();
        assert_eq!(seen.try_get::<i64, _>(0).unwrap(), 1);
        tx.commit().await.unwrap();
        conn.execute_batch(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
        drop(conn);
        pool.begin().await.unwrap().commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        tokio::time::timeout(Duration::from_secs(10), pool.close())
            .await
            .expect("the pool closes with a transaction begun ahead");
    }

    #[tokio::test]
    async fn sqlite_round_trip() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let checkpointer = Checkpointer::start(":memory:").unwrap();
        let pool = Pool::sqlite(c, checkpointer, IntCounter::new("t", "t").unwrap());
        let mut tx = pool.begin().await.unwrap();
        tx.execute_batch("CREATE TABLE t (a INTEGER, b BLOB, c TEXT)")
            .await
            .unwrap();
        let done = query("INSERT INTO t (a, b, c) VALUES ($1, $2, $3)")
            .bind(5i64)
            .bind(vec![1u8, 2])
            .bind(None::<String>)
            .execute(&mut tx)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        tx.commit().await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let row = query("SELECT a, b, c FROM t WHERE a = $1")
            .bind(5i64)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(row.try_get::<i64, _>("a").unwrap(), 5);
        assert_eq!(row.try_get::<Vec<u8>, _>(1).unwrap(), vec![1, 2]);
        assert_eq!(row.try_get::<Option<String>, _>("c").unwrap(), None);
        assert!(row.try_get::<i64, _>("nope").is_err());
        // `$n` binds the n-th value wherever and however often it appears,
        // and is only text inside quotes.
        let row = query("SELECT $2 - $1 AS d, '$1' AS q, $1 + $1 AS s")
            .bind(10i64)
            .bind(3i64)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(row.try_get::<i64, _>("d").unwrap(), -7);
        assert_eq!(row.try_get::<String, _>("q").unwrap(), "$1");
        assert_eq!(row.try_get::<i64, _>("s").unwrap(), 20);
        assert!(query("SELECT $2")
            .bind(1i64)
            .fetch_one(&mut conn)
            .await
            .is_err());
        drop(conn);
        // A dropped transaction rolls back.
        let mut tx = pool.begin().await.unwrap();
        query("DELETE FROM t").execute(&mut tx).await.unwrap();
        drop(tx);
        let mut conn = pool.acquire().await.unwrap();
        let n = query("SELECT COUNT(*) FROM t")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n.try_get::<i64, _>(0).unwrap(), 1);
    }
}
