//! Faults the tests inject into a running meta, named in the environment:
//! `DFS_META_FAILPOINTS=drop_reply=0.3` loses 30% of mutation replies after
//! the change was made (what a connection breaking at that moment does), so
//! the clients' retries with request ids can be checked end to end.

/// The failpoints this process was started with (none in production).
#[derive(Debug, Clone, Default)]
pub struct Failpoints {
    drop_reply: f64,
}

impl Failpoints {
    pub fn from_env() -> Failpoints {
        Self::parse(&std::env::var("DFS_META_FAILPOINTS").unwrap_or_default())
    }

    fn parse(spec: &str) -> Failpoints {
        let mut points = Failpoints::default();
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some(("drop_reply", p)) => match p.parse::<f64>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => points.drop_reply = p,
                    _ => tracing::warn!(item, "failpoint probability must be 0..1"),
                },
                _ => tracing::warn!(item, "unknown failpoint"),
            }
        }
        if points.drop_reply > 0.0 {
            tracing::warn!(p = points.drop_reply, "failpoint drop_reply is on");
        }
        points
    }

    /// Whether to lose this mutation's reply.
    pub fn drop_reply(&self) -> bool {
        self.drop_reply > 0.0 && rand::random::<f64>() < self.drop_reply
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_probabilities() {
        assert_eq!(super::Failpoints::parse("drop_reply=0.25").drop_reply, 0.25);
        assert_eq!(super::Failpoints::parse("drop_reply=7").drop_reply, 0.0);
        assert!(!super::Failpoints::parse("").drop_reply());
    }
}
