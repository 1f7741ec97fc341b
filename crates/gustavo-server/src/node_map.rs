//! The registered nodes by name ([`crate::state::Cluster::nodes`]).
//!
//! Every line an agent sends and every wake-up of its stream looks its node up by name,
//! so lookups hash (foldhash, seeded per map); what lists or places nodes walks them in
//! name order, from a sorted map beside it holding the same records. With 100,000 nodes a
//! sorted map's lookup was ~17 string comparisons, each a cache miss, on every agent's path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gustavo_store::NodeRecord;

#[derive(Default)]
pub struct Nodes {
    by_name: HashMap<String, Arc<NodeRecord>, foldhash::fast::RandomState>,
    in_order: BTreeMap<String, Arc<NodeRecord>>,
    /// Moves whenever a node comes or goes or its groups change (see [`Nodes::generation`]).
    generation: u64,
}

impl Nodes {
    pub fn get(&self, name: &str) -> Option<&NodeRecord> {
        self.by_name.get(name).map(|n| &**n)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Puts `node` under its name, returning the record it replaces.
    pub fn insert(&mut self, node: NodeRecord) -> Option<NodeRecord> {
        let node = Arc::new(node);
        self.in_order.insert(node.name.clone(), node.clone());
        let same_groups = (self.by_name.get(&node.name)).is_some_and(|o| o.groups == node.groups);
        if !same_groups {
            self.generation += 1;
        }
        let old = self.by_name.insert(node.name.clone(), node)?;
        Some(Arc::unwrap_or_clone(old))
    }

    pub fn remove(&mut self, name: &str) -> Option<NodeRecord> {
        self.in_order.remove(name);
        let old = self.by_name.remove(name)?;
        self.generation += 1;
        Some(Arc::unwrap_or_clone(old))
    }

    /// A number that changes whenever a node is added or removed or its groups change: what
    /// app membership follows from (kept rollout counts start over when it moves).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.in_order.keys()
    }

    /// The nodes, in name order.
    pub fn values(&self) -> impl Iterator<Item = &NodeRecord> {
        self.in_order.values().map(|n| &**n)
    }
}

impl std::ops::Index<&str> for Nodes {
    type Output = NodeRecord;

    fn index(&self, name: &str) -> &NodeRecord {
        &self.by_name[name]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, group: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            token_hash: String::new(),
            groups: vec![group.into()],
            labels: Default::default(),
            cpus: 1,
            memory_mb: 1,
            agent_version: String::new(),
            registered_at: 0,
            revision: 0,
            heartbeat_s: 5,
            bound_group: None,
            cordoned: false,
            draining: false,
        }
    }

    /// Listed in name order whatever the order they came in; a replaced node is listed
    /// once, with its new record; a removed one is gone from both.
    #[test]
    fn nodes_list_in_name_order_and_replace_in_place() {
        let mut n = Nodes::default();
        for name in ["c", "a", "b"] {
            assert!(n.insert(node(name, "g1")).is_none());
        }
        let old = n.insert(node("a", "g2")).unwrap();
        assert_eq!(old.groups, ["g1"]);
        let names: Vec<&str> = n.values().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(n["a"].groups, ["g2"]);
        assert_eq!(n.len(), 3);
        assert!(n.remove("b").is_some());
        assert_eq!(n.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert!(!n.contains_key("b") && n.get("b").is_none());
        assert_eq!(n.values().count(), 2);
    }
}
