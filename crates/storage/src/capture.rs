//! The pre-images a snapshot build keeps while applies go on, so the file it writes is the
//! state as of its start (see `SmShared::build_blocking` in the `sm` module).

use std::collections::HashMap;

use crate::keys;
use crate::StorageError;

/// The pre-images a snapshot build needs to see the state at its start while applies go on.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    /// The last key the scan has passed: changes to keys at or before it are not its concern
    /// (the scan already wrote their value as of the start).
    scanned: Option<Vec<u8>>,
    /// Keys ahead of the scan that applies changed since the start, with their value then
    /// (`None`: the key did not exist).
    pub(crate) before: HashMap<Vec<u8>, Option<sled::IVec>>,
}

impl Capture {
    /// Remembers what the state holds (`get`) under `keys` before an apply changes them, for
    /// keys the scan has yet to reach and that no earlier apply already changed.
    pub(crate) fn preserve<'k>(
        &mut self,
        get: impl Fn(&[u8]) -> Result<Option<sled::IVec>, StorageError>,
        keys: impl Iterator<Item = &'k Vec<u8>>,
    ) -> Result<(), StorageError> {
        for key in keys {
            let passed = self.scanned.as_deref().is_some_and(|s| key.as_slice() <= s);
            if passed || key.first() == Some(&keys::META) || self.before.contains_key(key) {
                continue;
            }
            self.before.insert(key.clone(), get(key)?);
        }
        Ok(())
    }

    /// What the snapshot holds for `key`, which the scan just read as `now`.
    pub(crate) fn at_start(&mut self, key: &[u8], now: sled::IVec) -> Option<sled::IVec> {
        self.scanned = Some(key.to_vec());
        self.before.remove(key).unwrap_or(Some(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for k in ["a", "c", "e"] {
            tree.insert(k, k.to_uppercase().as_bytes()).unwrap();
        }
        tree
    }

    fn key(k: &str) -> Vec<u8> {
        k.as_bytes().to_vec()
    }

    #[test]
    fn a_change_ahead_of_the_scan_keeps_the_value_at_the_start() {
        let tree = tree();
        let mut capture = Capture::default();
        capture
            .preserve(|k| Ok(tree.get(k)?), [key("c")].iter())
            .unwrap();
        tree.insert("c", "changed").unwrap();
        assert_eq!(capture.at_start(b"c", "changed".into()), Some("C".into()));
        // A second change of the same key is not its value at the start.
        capture
            .preserve(|k| Ok(tree.get(k)?), [key("e")].iter())
            .unwrap();
        tree.insert("e", "once").unwrap();
        capture
            .preserve(|k| Ok(tree.get(k)?), [key("e")].iter())
            .unwrap();
        tree.insert("e", "twice").unwrap();
        assert_eq!(capture.at_start(b"e", "twice".into()), Some("E".into()));
    }

    #[test]
    fn a_change_behind_the_scan_is_not_the_build_s_concern() {
        let tree = tree();
        let mut capture = Capture::default();
        assert_eq!(capture.at_start(b"c", "C".into()), Some("C".into()));
        capture
            .preserve(|k| Ok(tree.get(k)?), [key("a"), key("c")].iter())
            .unwrap();
        assert!(capture.before.is_empty());
    }

    #[test]
    fn keys_born_during_the_scan_are_left_out_and_removed_ones_kept() {
        let tree = tree();
        let mut capture = Capture::default();
        capture
            .preserve(|k| Ok(tree.get(k)?), [key("d"), key("e")].iter())
            .unwrap();
        tree.insert("d", "new").unwrap();
        tree.remove("e").unwrap();
        assert_eq!(
            capture.at_start(b"d", "new".into()),
            None,
            "born after the start"
        );
        // The scan never meets `e`; its value at the start is what is left over.
        assert_eq!(
            capture.before.remove(b"e".as_slice()),
            Some(Some("E".into()))
        );
    }

    #[test]
    fn meta_keys_are_never_captured() {
        let tree = tree();
        let mut capture = Capture::default();
        capture
            .preserve(|k| Ok(tree.get(k)?), [keys::LAST_APPLIED.to_vec()].iter())
            .unwrap();
        assert!(capture.before.is_empty());
    }
}
