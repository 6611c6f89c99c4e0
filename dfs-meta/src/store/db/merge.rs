//! Deferred writes of one text sent as one statement over arrays of their
//! parameters. A batch of unlinks defers four writes per call (its entry,
//! its inode, the purge queue, the request record); sent as one CTE each,
//! every batch was a new text to PostgreSQL: parsed, described and planned
//! anew (one more round trip, and planning longer than running). Merged,
//! the deferred writes of a batch are one text whatever its size: sqlx
//! keeps it prepared, and PostgreSQL plans it once.
//!
//! Merging is sound because pending writes never touch the same row (a
//! write that would sends the pending ones first, see `Deferred::touches`),
//! and the parts of one statement all see the same snapshot: the order
//! they ran in never mattered.

use super::Value;

/// `statements`, each group of two or more with one text and a mergeable
/// shape (a one-row INSERT, a DELETE or UPDATE by WHERE) run as one
/// statement in the place of the group's first.
pub(super) fn merged(statements: Vec<(String, Vec<Value>)>) -> Vec<(String, Vec<Value>)> {
    let mut groups: Vec<(String, Vec<Vec<Value>>)> = Vec::new();
    for (sql, args) in statements {
        match groups.iter_mut().find(|(s, _)| *s == sql) {
            Some((_, rows)) => rows.push(args),
            None => groups.push((sql, vec![args])),
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for (sql, rows) in groups {
        if rows.len() > 1 {
            if let Some(one) = over_arrays(&sql, &rows) {
                out.push(one);
                continue;
            }
        }
        out.extend(rows.into_iter().map(|args| (sql.clone(), args)));
    }
    out
}

/// The SQL element type of a parameter position.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Text,
    Blob,
}

impl Kind {
    fn of(v: &Value) -> Option<Kind> {
        match v {
            Value::Null | Value::Int(_) => Some(Kind::Int),
            Value::NullText | Value::Text(_) => Some(Kind::Text),
            Value::NullBlob | Value::Blob(_) => Some(Kind::Blob),
            Value::Ints(_) | Value::Texts(_) | Value::Blobs(_) => None,
        }
    }

    fn array_type(self) -> &'static str {
        match self {
            Kind::Int => "bigint[]",
            Kind::Text => "text[]",
            Kind::Blob => "bytea[]",
        }
    }

    /// Position `at` of every row, as one array.
    fn column(self, rows: &[Vec<Value>], at: usize) -> Value {
        fn cells<T>(rows: &[Vec<Value>], at: usize, of: fn(&Value) -> Option<T>) -> Vec<Option<T>> {
            rows.iter().map(|r| of(&r[at])).collect()
        }
        match self {
            Kind::Int => Value::Ints(cells(rows, at, |v| match v {
                Value::Int(i) => Some(*i),
                _ => None,
            })),
            Kind::Text => Value::Texts(cells(rows, at, |v| match v {
                Value::Text(t) => Some(t.clone()),
                _ => None,
            })),
            Kind::Blob => Value::Blobs(cells(rows, at, |v| match v {
                Value::Blob(b) => Some(b.clone()),
                _ => None,
            })),
        }
    }
}

/// The alias of the merged rows' parameters: `ROWS.p1, ROWS.p2, ...`.
const ROWS: &str = "dfs_rows";

/// `sql` run once per row of `rows` as one statement over arrays, or None
/// when its shape or the rows' types do not allow it.
fn over_arrays(sql: &str, rows: &[Vec<Value>]) -> Option<(String, Vec<Value>)> {
    let n = super::max_param(sql);
    let first = rows.first()?;
    if n == 0 || first.len() != n || rows.iter().any(|r| r.len() != n) {
        return None;
    }
    let kinds: Vec<Kind> = first.iter().map(Kind::of).collect::<Option<_>>()?;
    let same = |r: &Vec<Value>| r.iter().zip(&kinds).all(|(v, k)| Kind::of(v) == Some(*k));
    if !rows.iter().all(same) {
        return None;
    }
    let source = format!(
        "unnest({}) AS {ROWS}({})",
        kinds
            .iter()
            .enumerate()
            .map(|(i, k)| format!("${}::{}", i + 1, k.array_type()))
            .collect::<Vec<_>>()
            .join(", "),
        (1..=n)
            .map(|i| format!("p{i}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let text = with_source(sql, &source)?;
    let args = kinds
        .iter()
        .enumerate()
        .map(|(at, k)| k.column(rows, at))
        .collect();
    Some((text, args))
}

/// `sql` reading its parameters from the rows of `source`, or None when
/// its shape is not one this knows: `INSERT INTO t (..) VALUES (..)` with at
/// most an `ON CONFLICT DO NOTHING` after it, `DELETE FROM t WHERE ..`,
/// `UPDATE t SET .. WHERE ..`, none of them with a subquery or RETURNING.
fn with_source(sql: &str, source: &str) -> Option<String> {
    let words: Vec<String> = super::words(sql).map(|w| w.to_ascii_uppercase()).collect();
    let has = |w: &str| words.iter().any(|x| x == w);
    if has("SELECT") || has("RETURNING") || has("USING") || sql.contains('\'') {
        return None;
    }
    let from_rows = |s: &str| super::map_params(s, |n| format!("{ROWS}.p{n}"));
    match words.first()?.as_str() {
        "INSERT" => {
            let at = top_level_word(sql, "VALUES")?;
            let (head, rest) = sql.split_at(at);
            let tuple = rest["VALUES".len()..].trim_start();
            let end = closing_paren(tuple)?;
            let (inner, tail) = (&tuple[1..end], tuple[end + 1..].trim());
            let tail_ok = tail.is_empty() || tail.eq_ignore_ascii_case("ON CONFLICT DO NOTHING");
            if head.contains('$') || !tail_ok {
                return None;
            }
            Some(format!(
                "{head}SELECT {} FROM {source}{}{tail}",
                from_rows(inner),
                if tail.is_empty() { "" } else { " " }
            ))
        }
        "DELETE" if words.get(1)?.as_str() == "FROM" && words.get(3)?.as_str() == "WHERE" => {
            let at = top_level_word(sql, "WHERE")?;
            let (head, cond) = sql.split_at(at);
            Some(format!("{}USING {source} {}", head, from_rows(cond)))
        }
        "UPDATE" if !has("FROM") => {
            let at = top_level_word(sql, "WHERE")?;
            let (head, cond) = sql.split_at(at);
            Some(format!(
                "{}FROM {source} {}",
                from_rows(head),
                from_rows(cond)
            ))
        }
        _ => None,
    }
}

/// Where word `word` (any case) first stands outside parentheses.
fn top_level_word(sql: &str, word: &str) -> Option<usize> {
    let bytes = sql.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut depth = 0i32;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ if depth == 0
                && (i == 0 || !is_ident(bytes[i - 1]))
                && bytes
                    .get(i..i + word.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()))
                && bytes.get(i + word.len()).is_none_or(|&c| !is_ident(c)) =>
            {
                return Some(i)
            }
            _ => {}
        }
    }
    None
}

/// The index of the parenthesis closing the one `s` starts with.
fn closing_paren(s: &str) -> Option<usize> {
    if !s.starts_with('(') {
        return None;
    }
    let mut depth = 0i32;
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(sql: &str, args: &[Vec<Value>]) -> Vec<(String, Vec<Value>)> {
        args.iter().map(|a| (sql.to_string(), a.clone())).collect()
    }

    #[test]
    fn writes_of_one_text_become_one_over_arrays() {
        let delete = "DELETE FROM dentries WHERE parent = $1 AND name = $2";
        let update = "UPDATE inodes SET nlink = nlink - 1, ctime_s = $2 WHERE ino = $1";
        let insert =
            "INSERT INTO deleted_inodes (ino, since_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING";
        let mut all = rows(
            delete,
            &[
                vec![Value::Int(1), Value::Blob(b"a".to_vec())],
                vec![Value::Int(1), Value::Blob(b"b".to_vec())],
            ],
        );
        all.extend(rows(update, &[vec![Value::Int(7), Value::Int(9)]]));
        all.extend(rows(
            insert,
            &[
                vec![Value::Int(7), Value::Int(5)],
                vec![Value::Int(8), Value::Null],
            ],
        ));
        all.extend(rows(
            delete,
            &[vec![Value::Int(2), Value::Blob(b"c".to_vec())]],
        ));
        let out = merged(all);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            out[0].0,
            "DELETE FROM dentries USING unnest($1::bigint[], $2::bytea[]) AS dfs_rows(p1, p2) \
             WHERE parent = dfs_rows.p1 AND name = dfs_rows.p2"
        );
        assert_eq!(
            out[0].1,
            vec![
                Value::Ints(vec![Some(1), Some(1), Some(2)]),
                Value::Blobs(vec![
                    Some(b"a".to_vec()),
                    Some(b"b".to_vec()),
                    Some(b"c".to_vec())
                ]),
            ]
        );
        // Alone in its text, a write stays as it was.
        assert_eq!(
            out[1],
            (update.to_string(), vec![Value::Int(7), Value::Int(9)])
        );
        assert_eq!(
            out[2].0,
            "INSERT INTO deleted_inodes (ino, since_ms) SELECT dfs_rows.p1, dfs_rows.p2 \
             FROM unnest($1::bigint[], $2::bigint[]) AS dfs_rows(p1, p2) ON CONFLICT DO NOTHING"
        );
        assert_eq!(out[2].1[1], Value::Ints(vec![Some(5), None]));
    }

    #[test]
    fn an_update_reads_its_parameters_in_set_and_where() {
        let update =
            "UPDATE inodes SET nlink = nlink + $2, mtime_s = $3, ctime_s = $3 WHERE ino = $1";
        let out = merged(rows(
            update,
            &[
                vec![Value::Int(1), Value::Int(0), Value::Int(5)],
                vec![Value::Int(2), Value::Int(-1), Value::Int(5)],
            ],
        ));
        assert_eq!(
            out,
            vec![(
                "UPDATE inodes SET nlink = nlink + dfs_rows.p2, mtime_s = dfs_rows.p3, \
                 ctime_s = dfs_rows.p3 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) \
                 AS dfs_rows(p1, p2, p3) WHERE ino = dfs_rows.p1"
                    .to_string(),
                vec![
                    Value::Ints(vec![Some(1), Some(2)]),
                    Value::Ints(vec![Some(0), Some(-1)]),
                    Value::Ints(vec![Some(5), Some(5)]),
                ]
            )]
        );
    }

    #[test]
    fn shapes_and_types_it_does_not_know_stay_apart() {
        let twice = |sql: &str, a: Vec<Value>, b: Vec<Value>| {
            let out = merged(vec![(sql.to_string(), a), (sql.to_string(), b)]);
            out.len()
        };
        let int = |i| vec![Value::Int(i)];
        // Several rows already, a subquery, an upsert, no WHERE, quotes.
        assert_eq!(
            twice("INSERT INTO r (a) VALUES ($1), ($1)", int(1), int(2)),
            2
        );
        assert_eq!(
            twice(
                "DELETE FROM t WHERE a IN (SELECT b FROM u WHERE c = $1)",
                int(1),
                int(2)
            ),
            2
        );
        assert_eq!(
            twice(
                "INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO UPDATE SET a = $1",
                int(1),
                int(2)
            ),
            2
        );
        assert_eq!(twice("UPDATE t SET a = $1", int(1), int(2)), 2);
        assert_eq!(
            twice("UPDATE t SET a = 'x' WHERE b = $1", int(1), int(2)),
            2
        );
        // A position of one type in one row and another in the next.
        assert_eq!(
            twice(
                "DELETE FROM t WHERE a = $1",
                int(1),
                vec![Value::Text("x".into())]
            ),
            2
        );
        // A row short of a parameter.
        assert_eq!(
            twice("DELETE FROM t WHERE a = $1 AND b = $2", int(1), int(2)),
            2
        );
        assert_eq!(twice("DELETE FROM t WHERE a = $1", int(1), int(2)), 1);
        // Found by bytes: text that is not ASCII does not trip it.
        assert_eq!(top_level_word("SET a = 'é' WHERE b", "WHERE"), Some(13));
        assert_eq!(top_level_word("(WHERE) é", "WHERE"), None);
    }
}
