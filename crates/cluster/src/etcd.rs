//! The etcd coordinator (stub: being written; every call answers
//! `Invalid`).
use crate::*;

/// See the module docs.
#[derive(Debug)]
pub struct EtcdCoordinator {
    endpoints: Vec<String>,
}

impl EtcdCoordinator {
    /// Connects to `HOST:PORT[,HOST:PORT…][/PREFIX]`.
    pub fn connect(spec: &str) -> Result<EtcdCoordinator, ClusterError> {
        Err(ClusterError::Invalid(format!(
            "etcd://{spec}: not yet built ({:?})",
            Vec::<String>::new()
        )))
    }
}
