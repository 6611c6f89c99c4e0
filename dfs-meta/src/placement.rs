//! Chunk placement, pure: given the up nodes, pick distinct targets, spreading
//! over zones while there are unused zones, and preferring the most free space.

use std::collections::HashSet;

#[derive(Debug, Clone)]
pub struct Candidate {
    pub node_id: u64,
    pub zone: String,
    pub free_bytes: u64,
}

/// Picks up to `count` distinct nodes not in `exclude` that have room for
/// `chunk_bytes`. Zones of excluded nodes (usually existing holders) count as used,
/// so repair also spreads copies over zones.
pub fn choose(
    candidates: &[Candidate],
    count: usize,
    exclude: &HashSet<u64>,
    chunk_bytes: u64,
) -> Vec<u64> {
    let mut pool: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !exclude.contains(&c.node_id) && c.free_bytes >= chunk_bytes)
        .collect();
    pool.sort_by(|a, b| {
        b.free_bytes
            .cmp(&a.free_bytes)
            .then(a.node_id.cmp(&b.node_id))
    });
    let mut used_zones: HashSet<&str> = candidates
        .iter()
        .filter(|c| exclude.contains(&c.node_id))
        .map(|c| c.zone.as_str())
        .collect();
    let mut chosen = Vec::with_capacity(count);
    // First pass: one node per not-yet-used zone; second: fill up by free space.
    for c in &pool {
        if chosen.len() == count {
            break;
        }
        if used_zones.insert(c.zone.as_str()) {
            chosen.push(c.node_id);
        }
    }
    for c in &pool {
        if chosen.len() == count {
            break;
        }
        if !chosen.contains(&c.node_id) {
            chosen.push(c.node_id);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, zone: &str, free: u64) -> Candidate {
        Candidate {
            node_id: id,
            zone: zone.into(),
            free_bytes: free,
        }
    }

    #[test]
    fn distinct_nodes_most_free_first() {
        let nodes = [
            node(1, "", 10),
            node(2, "", 30),
            node(3, "", 20),
            node(4, "", 5),
        ];
        assert_eq!(choose(&nodes, 3, &HashSet::new(), 1), vec![2, 3, 1]);
    }

    #[test]
    fn zones_spread_before_free_space() {
        let nodes = [
            node(1, "a", 100),
            node(2, "a", 90),
            node(3, "b", 10),
            node(4, "c", 5),
        ];
        assert_eq!(choose(&nodes, 3, &HashSet::new(), 1), vec![1, 3, 4]);
    }

    #[test]
    fn fewer_zones_than_copies_still_fills() {
        let nodes = [node(1, "a", 100), node(2, "a", 90), node(3, "b", 10)];
        assert_eq!(choose(&nodes, 3, &HashSet::new(), 1), vec![1, 3, 2]);
    }

    #[test]
    fn excluded_and_full_nodes_are_skipped() {
        let nodes = [node(1, "a", 100), node(2, "b", 0), node(3, "c", 50)];
        let exclude: HashSet<u64> = [1].into();
        assert_eq!(choose(&nodes, 3, &exclude, 10), vec![3]);
    }

    #[test]
    fn holders_zone_counts_as_used() {
        let nodes = [node(1, "a", 100), node(2, "a", 90), node(3, "b", 10)];
        let exclude: HashSet<u64> = [1].into();
        assert_eq!(choose(&nodes, 1, &exclude, 1), vec![3]);
    }
}
