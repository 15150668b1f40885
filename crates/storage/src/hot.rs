//! The small record families that nearly every request or apply reads, mirrored in memory.
//!
//! Every create reads its sender's API key at the edge, and apply reads the target agent's
//! registration and queue cursor, the owner's webhook subscriptions (a prefix scan) and the
//! intent counter (and, since the mesh, whether the agent is killed). Each of those was a sled lookup (a page-table walk and a node search) on
//! every node for every write, while the families hold one record per agent, key or
//! subscription, not per intent: they stay small however many intents are stored. So they are
//! kept in a map beside the tree, and sled only stores them.
//!
//! # Correctness
//! The mirror holds exactly the live tree's records of these families:
//! - it is loaded from the tree when the state machine opens and when an install fills a new
//!   tree, and swapped in under the same locks as that tree;
//! - apply writes the same records to it right after sled took the batch, before the applied
//!   index is announced, and only apply (under the apply lock) writes it.
//!
//! A reader that waited for index N therefore finds every write up to N here, as it would in
//! the tree. Snapshots keep scanning the tree, so they are unaffected.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{keys, StorageError};

type Map = BTreeMap<Vec<u8>, sled::IVec>;

#[derive(Debug, Default)]
pub(crate) struct Hot {
    map: RwLock<Map>,
}

/// The families mirrored: per agent (registration, mesh record, queue cursor, inbox cursor),
/// per API key, per subscription, and the counters.
const FAMILIES: [u8; 9] = [
    keys::AGENT,
    keys::MESH_AGENT,
    keys::CURSOR,
    keys::INBOX_CURSOR,
    keys::API_KEY,
    keys::API_KEY_ID,
    keys::SUBSCRIPTION,
    keys::OWNER_SUBSCRIPTION,
    keys::INTENT_COUNT[0],
];

impl Hot {
    /// Whether `key` (or every key under the prefix `key`) belongs to a mirrored family.
    pub(crate) fn holds(key: &[u8]) -> bool {
        key.first().is_some_and(|b| FAMILIES.contains(b))
    }

    /// The mirror of `tree`'s mirrored families.
    pub(crate) fn load(tree: &sled::Tree) -> Result<Hot, StorageError> {
        let mut map = Map::new();
        for family in FAMILIES {
            for r in tree.scan_prefix([family]) {
                let (k, v) = r?;
                map.insert(k.to_vec(), v);
            }
        }
        Ok(Hot {
            map: RwLock::new(map),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Map> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<sled::IVec> {
        self.read().get(key).cloned()
    }

    /// Every record under `prefix`, in key order.
    pub(crate) fn scan(&self, prefix: &[u8]) -> Vec<(Vec<u8>, sled::IVec)> {
        self.read()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Takes the writes of a batch sled has just applied (`None`: removed); writes outside
    /// the mirrored families are skipped.
    pub(crate) fn apply<'a>(
        &self,
        writes: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
    ) {
        let mut map = self.write();
        for (k, v) in writes.filter(|(k, _)| Hot::holds(k)) {
            match v {
                Some(v) => map.insert(k.clone(), sled::IVec::from(v.as_slice())),
                None => map.remove(k),
            };
        }
    }

    /// Replaces the whole mirror by `other`'s, when an installed tree replaces the live one.
    pub(crate) fn replace(&self, other: Hot) {
        *self.write() = other.map.into_inner().unwrap_or_else(|p| p.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("t").unwrap()
    }

    #[test]
    fn loads_only_the_mirrored_families() {
        let t = tree();
        t.insert(keys::agent("acme/a"), b"{}".to_vec()).unwrap();
        t.insert(keys::INTENT_COUNT, 3u64.to_be_bytes().to_vec())
            .unwrap();
        t.insert(keys::intent(&uuid::Uuid::nil()), b"{}".to_vec())
            .unwrap();
        let hot = Hot::load(&t).unwrap();
        assert!(hot.get(&keys::agent("acme/a")).is_some());
        assert!(hot.get(keys::INTENT_COUNT).is_some());
        assert!(hot.get(&keys::intent(&uuid::Uuid::nil())).is_none());
        assert!(!Hot::holds(&keys::intent(&uuid::Uuid::nil())));
    }

    #[test]
    fn applies_writes_and_removals_and_scans_by_prefix() {
        let hot = Hot::load(&tree()).unwrap();
        let a = keys::agent("acme/a");
        let b = keys::agent("acme/b");
        let event = keys::event(&uuid::Uuid::nil(), 1);
        let writes = [
            (a.clone(), Some(b"1".to_vec())),
            (b.clone(), Some(b"2".to_vec())),
            (event.clone(), Some(b"e".to_vec())),
        ];
        hot.apply(writes.iter().map(|(k, v)| (k, v)));
        assert_eq!(hot.scan(&[keys::AGENT]).len(), 2);
        assert!(hot.get(&event).is_none(), "events are not mirrored");
        hot.apply([(a.clone(), None)].iter().map(|(k, v)| (k, v)));
        let left = hot.scan(&[keys::AGENT]);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, b);
    }
}
