//! The embedded coordinator: a file in one node's data dir (stub: being
//! written).
use std::path::Path;

use crate::*;

/// See the module docs.
#[derive(Debug)]
pub struct EmbeddedCoordinator {
    dir: std::path::PathBuf,
}

impl EmbeddedCoordinator {
    /// Opens (creating) the coordinator file in `dir`.
    pub fn open(dir: &Path) -> Result<EmbeddedCoordinator, ClusterError> {
        Ok(EmbeddedCoordinator {
            dir: dir.to_path_buf(),
        })
    }
}
