//! Faults the tests inject into a running meta, named in the environment:
//! `DFS_META_FAILPOINTS=drop_reply=0.3` loses 30% of mutation replies after
//! the change was made (what a connection breaking at that moment does), so
//! the clients' retries with request ids can be checked end to end;
//! `refuse_early_create=1` refuses creates a client answered early (what
//! another client taking the name in the meantime does);
//! `slow_early_create=1` holds such creates for a second before they are
//! made (what a slow network or a busy meta does), so another client's call
//! in the directory comes while they are in flight.

/// The failpoints this process was started with (none in production).
#[derive(Debug, Clone, Default)]
pub struct Failpoints {
    drop_reply: f64,
    refuse_early_create: f64,
    slow_early_create: f64,
}

impl Failpoints {
    pub fn from_env() -> Failpoints {
        Self::parse(&std::env::var("DFS_META_FAILPOINTS").unwrap_or_default())
    }

    fn parse(spec: &str) -> Failpoints {
        let mut points = Failpoints::default();
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (name, p) = item.split_once('=').unwrap_or((item, ""));
            let slot = match name {
                "drop_reply" => &mut points.drop_reply,
                "refuse_early_create" => &mut points.refuse_early_create,
                "slow_early_create" => &mut points.slow_early_create,
                _ => {
                    tracing::warn!(item, "unknown failpoint");
                    continue;
                }
            };
            match p.parse::<f64>() {
                Ok(p) if (0.0..=1.0).contains(&p) => {
                    *slot = p;
                    tracing::warn!(name, p, "failpoint is on");
                }
                _ => tracing::warn!(item, "failpoint probability must be 0..1"),
            }
        }
        points
    }

    /// Whether to lose this mutation's reply.
    pub fn drop_reply(&self) -> bool {
        fires(self.drop_reply)
    }

    /// Whether to refuse this create a client answered early (EEXIST).
    pub fn refuse_early_create(&self) -> bool {
        fires(self.refuse_early_create)
    }

    /// Holds this create a client answered early for a second, sometimes.
    pub async fn slow_early_create(&self) {
        if fires(self.slow_early_create) {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

fn fires(p: f64) -> bool {
    p > 0.0 && rand::random::<f64>() < p
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_probabilities() {
        assert_eq!(super::Failpoints::parse("drop_reply=0.25").drop_reply, 0.25);
        assert_eq!(super::Failpoints::parse("drop_reply=7").drop_reply, 0.0);
        let both = super::Failpoints::parse("drop_reply=0.5,refuse_early_create=1");
        assert_eq!((both.drop_reply, both.refuse_early_create), (0.5, 1.0));
        assert!(both.refuse_early_create());
        assert!(!super::Failpoints::parse("").drop_reply());
    }
}
