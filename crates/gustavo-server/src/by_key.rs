//! Names filed under keys: the apps of each group, the scheduled jobs of each group, the
//! one-shot jobs of the node running them and the deployments placed on each node
//! ([`crate::state::Cluster`]). A node's desired state and its revision are looked up on
//! every change that wakes it; walking every app, job and deployment of the server for each
//! of them made a device's change cost grow with all those of every other group and node
//! (one-shot jobs stay until deleted; a site may have a deployment per client). Callers still
//! check what they find, so a name filed where it no longer belongs costs a lookup, never a
//! wrong answer; a name missing would be.

use std::collections::{BTreeSet, HashMap};

#[derive(Default, Debug)]
pub struct ByKey {
    names: HashMap<String, BTreeSet<String>, foldhash::fast::RandomState>,
}

impl ByKey {
    /// Files `name` under each of `keys`.
    pub fn add<'a>(&mut self, name: &str, keys: impl IntoIterator<Item = &'a str>) {
        for key in keys {
            (self.names.entry(key.to_owned()).or_default()).insert(name.to_owned());
        }
    }

    /// Takes `name` out from under each of `keys`.
    pub fn remove<'a>(&mut self, name: &str, keys: impl IntoIterator<Item = &'a str>) {
        for key in keys {
            if let Some(set) = self.names.get_mut(key) {
                set.remove(name);
                if set.is_empty() {
                    self.names.remove(key);
                }
            }
        }
    }

    /// The names under any of `keys`, each once, in name order.
    pub fn under<'a>(&'a self, keys: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
        keys.into_iter()
            .filter_map(|k| self.names.get(k))
            .flatten()
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_once_in_order_and_go() {
        let mut i = ByKey::default();
        i.add("b", ["g1", "g2"]);
        i.add("a", ["g2"]);
        assert_eq!(i.under(["g1", "g2"]), BTreeSet::from(["a", "b"]));
        assert_eq!(i.under(["g3"]), BTreeSet::new());
        i.remove("b", ["g1", "g2"]);
        assert_eq!(i.under(["g1", "g2"]), BTreeSet::from(["a"]));
        i.remove("a", ["g2"]);
        assert!(i.names.is_empty(), "empty keys go");
    }
}
