//! openraft's own storage test suite, run against a fresh store in a temp directory per case.

use intentd_storage::{LogStore, StateMachine, StorageOptions, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), openraft::StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StorageOptions {
            // Small segments so the suite also crosses segment boundaries.
            wal_segment_bytes: 512,
            record_segment_bytes: 512,
            ..StorageOptions::default()
        };
        let (log, sm) = intentd_storage::open(dir.path(), opts)
            .map_err(|e| StorageIOError::write_logs(openraft::AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
