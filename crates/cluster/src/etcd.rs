//! The etcd coordinator: Pagoda's cluster records in an etcd v3 cluster,
//! through the `etcd-client` crate (gRPC over plain HTTP/2; no TLS yet).
//!
//! # Endpoint
//!
//! `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`: one or more members of one
//! etcd cluster (the client balances over them) and the prefix of every
//! key, `pagoda` when none is given. A prefix is one or more `/`-separated
//! segments of ASCII letters, digits, `-`, `_` and `.`; it lets several
//! Pagoda clusters share one etcd.
//!
//! # Keys and values
//!
//! | key                      | value                 | lease         |
//! |--------------------------|-----------------------|---------------|
//! | `PREFIX/nodes/ADDR`      | `NodeRecord` as JSON  | the node's    |
//! | `PREFIX/regions/NAME`    | `RegionRecord` as JSON| none          |
//! | `PREFIX/writers/NAME`    | `WriterRecord` as JSON| the writer's  |
//!
//! A value that does not parse as its record is [`ClusterError::Corrupt`]
//! (never skipped: a listing with one corrupt record fails whole). A
//! record's revision is the key's `mod_revision`, etcd's cluster-wide
//! revision of the key's last change.
//!
//! # Transactions
//!
//! Every conditional change is one etcd transaction (one round trip):
//!
//! - `create_region`: if `create_revision(region) == 0` (absent) put it,
//!   else [`ClusterError::Exists`].
//! - `update_region(record, expected)`: if `version(region) > 0` (present)
//!   and `mod_revision(region) == expected` put it, else get it: absent is
//!   [`ClusterError::NotFound`], present is [`ClusterError::Conflict`]. The
//!   presence check matters: an absent key's `mod_revision` is 0, so
//!   `expected == 0` alone would create the record. The new revision is the
//!   response header's revision, which is the put's `mod_revision` (a
//!   transaction with one write raises the store's revision by one).
//! - `delete_region`: deletes the region key and its writer key together.
//! - `claim_writer(region, record, lease)`: if `create_revision(writer) ==
//!   0` put the record under the lease; else, in a nested transaction, if
//!   `lease(writer) == lease` put it again (the holder refreshes its
//!   record), else get it and answer the holder.
//! - `release_writer(region, lease)`: if `lease(writer) == lease` delete it.
//!   An absent key's lease is 0, which no granted lease is.
//!
//! Putting under a lease that is gone fails in etcd with "requested lease
//! not found": that is [`ClusterError::LeaseExpired`].
//!
//! # Leases
//!
//! etcd's TTLs are whole seconds: `grant_lease` rounds up (and to at least
//! [`LEASE_MIN`]), and etcd raises a TTL below its own minimum, which is
//! `ceil(1.5 × election timeout)` (2 s with etcd's default 1 s election
//! timeout, 1 s with `--election-timeout 500`). `keep_alive` renews once,
//! with no background task: `etcd-client`'s `LeaseClient::keep_alive` opens
//! the keep-alive stream with one renewal whose answer it keeps to itself
//! (failing when its TTL is 0, etcd's answer for a lease it does not
//! have); a second renewal on the same stream gives the TTL, which is the
//! lease's granted TTL since it was just renewed. One RPC, two renewals a
//! few milliseconds apart.
//!
//! A lease is gone once its TTL has passed since the last renewal: etcd's
//! leader sweeps expired leases every 500 ms (etcd 3.4), so a lapsed lease's
//! keys go up to about half a second after the TTL (1.0 to 1.3 s for a 1 s
//! lease in the tests). A new etcd leader (after an election, or after a
//! one-member etcd restarts) gives every lease its full TTL again (plus an
//! election timeout): a node that died while etcd was down is declared
//! failed about a TTL after etcd is back.
//!
//! # Timeouts and connections
//!
//! The trait is blocking: the coordinator owns a tokio runtime with one
//! worker thread (which drives the HTTP/2 connection, its pings and its
//! reconnection between calls) and blocks the calling thread on each call.
//! Every call is bounded by [`REQUEST_TIMEOUT_MS`] end to end (connecting
//! to a member by [`CONNECT_TIMEOUT_MS`] within it); a call that fails or
//! runs out of time is [`ClusterError::Unavailable`], and a change that
//! timed out may or may not have been applied. A stopped etcd (connection
//! refused) fails a call at once; a hung one (connections accepted,
//! nothing answered) after the timeout. Calls ask etcd to refuse requests
//! while the cluster has no leader, so that they fail rather than wait.
//! HTTP/2 pings every [`PING_INTERVAL_MS`] detect a connection that went
//! silent while idle.
//!
//! Connecting does not reach etcd: a coordinator can be built while etcd is
//! down, and its first call tells whether etcd answers. The client's
//! channel reconnects by itself once etcd is back (the first call after an
//! etcd restart succeeds); besides, when a call fails on the transport or
//! times out, the coordinator drops its client and builds a new one for the
//! next call, so that a connection stuck in a bad state is never reused.
//!
//! Calls must not be made from inside a tokio runtime (as for any blocking
//! call: `block_on` there panics); dropping the coordinator there is fine.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::{
    ClusterError, Coordinator, LEASE_MIN, LeaseId, NodeRecord, RegionRecord, Revision, Versioned,
    WriterRecord,
};

/// The prefix of every key when the endpoint names none.
pub const PREFIX_DEFAULT: &str = "pagoda";
/// How long one call may take, from the call to its answer, retries and
/// connecting included.
pub const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// How long connecting to one etcd member may take.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How often an idle connection is pinged (etcd's default
/// `--grpc-keepalive-min-time` refuses pings more often than every 5 s).
pub const PING_INTERVAL_MS: u64 = 10_000;
/// How long a ping may go unanswered before the connection is dropped.
pub const PING_TIMEOUT_MS: u64 = 3_000;
/// The most members an endpoint may name.
const MEMBERS_MAX: usize = 16;

/// See the module docs.
pub struct EtcdCoordinator {
    /// The members, `HOST:PORT`.
    members: Vec<String>,
    prefix: String,
    /// `None` only while dropping (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    /// `None` after a transport failure: the next call builds a new client.
    client: Mutex<Option<Client>>,
}

impl fmt::Debug for EtcdCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdCoordinator")
            .field("members", &self.members)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A parsed endpoint: the members and the key prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdEndpoint {
    /// `HOST:PORT` of each member, in the order given.
    pub members: Vec<String>,
    /// The key prefix, without a trailing `/`.
    pub prefix: String,
}

impl EtcdEndpoint {
    /// Parses `HOST:PORT[,HOST:PORT…][/PREFIX]` (what follows `etcd://`).
    pub fn parse(spec: &str) -> Result<EtcdEndpoint, ClusterError> {
        let invalid = |why: &str| {
            ClusterError::Invalid(format!(
                "coordinator etcd://{spec}: {why} (expected \
                 etcd://HOST:PORT[,HOST:PORT...][/PREFIX])"
            ))
        };
        let (hosts, prefix) = match spec.split_once('/') {
            Some((hosts, prefix)) => (hosts, prefix),
            None => (spec, PREFIX_DEFAULT),
        };
        if hosts.is_empty() {
            return Err(invalid("no HOST:PORT"));
        }
        let mut members = Vec::new();
        for member in hosts.split(',') {
            let Some((host, port)) = member.rsplit_once(':') else {
                return Err(invalid(&format!("{member:?} has no :PORT")));
            };
            if host.is_empty()
                || !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c))
            {
                return Err(invalid(&format!("{member:?} has no valid host")));
            }
            if !port.chars().all(|c| c.is_ascii_digit())
                || !matches!(port.parse::<u16>(), Ok(p) if p > 0)
            {
                return Err(invalid(&format!("{member:?} has no valid port")));
            }
            members.push(member.to_owned());
        }
        if members.len() > MEMBERS_MAX {
            return Err(invalid(&format!("more than {MEMBERS_MAX} members")));
        }
        let segment_ok = |segment: &str| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !prefix.split('/').all(segment_ok) {
            return Err(invalid(&format!(
                "prefix {prefix:?} is not /-separated segments of letters, digits, '-', '_' \
                 and '.'"
            )));
        }
        Ok(EtcdEndpoint {
            members,
            prefix: prefix.to_owned(),
        })
    }
}

impl EtcdCoordinator {
    /// Connects to `HOST:PORT[,HOST:PORT…][/PREFIX]` (what follows
    /// `etcd://`). Does not reach etcd: the first call does.
    pub fn connect(spec: &str) -> Result<EtcdCoordinator, ClusterError> {
        let EtcdEndpoint { members, prefix } = EtcdEndpoint::parse(spec)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pagoda-etcd")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Unavailable {
                endpoint: format!("etcd://{spec}"),
                message: format!("starting the client's runtime: {e}"),
            })?;
        let coordinator = EtcdCoordinator {
            members,
            prefix,
            runtime: Some(runtime),
            client: Mutex::new(None),
        };
        let deadline = Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS);
        coordinator.client(deadline)?;
        Ok(coordinator)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime is only taken when dropping")
    }

    /// The client, built anew if the last call dropped it.
    fn client(&self, deadline: Instant) -> Result<Client, ClusterError> {
        if let Some(client) = &*self.client.lock() {
            return Ok(client.clone());
        }
        // Built without the lock held; if two calls race, the last one's
        // client stays (both work).
        let client = self.new_client(deadline)?;
        *self.client.lock() = Some(client.clone());
        Ok(client)
    }

    fn new_client(&self, deadline: Instant) -> Result<Client, ClusterError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .with_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .with_keep_alive(
                Duration::from_millis(PING_INTERVAL_MS),
                Duration::from_millis(PING_TIMEOUT_MS),
            )
            .with_require_leader(true);
        let members = self.members.clone();
        // Building the client spawns its connection tasks: it needs the
        // runtime, though it sends nothing.
        self.runtime()
            .block_on(async move {
                tokio::time::timeout_at(deadline, Client::connect(members, Some(options))).await
            })
            .map_err(|_| self.unavailable("connecting", "no answer in time"))?
            .map_err(|e| self.unavailable("connecting", e))
    }

    fn unavailable(&self, what: &str, error: impl fmt::Display) -> ClusterError {
        ClusterError::Unavailable {
            endpoint: self.endpoint(),
            message: format!("{what}: {error}"),
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.prefix)
    }

    /// Runs one call on a client, bounded by [`REQUEST_TIMEOUT_MS`]. A
    /// transport failure or a timeout drops the client, so that the next
    /// call connects afresh; an error etcd answered (a gRPC status other
    /// than "unavailable") keeps it.
    fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ClusterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_under(what, None, f)
    }

    /// [`Self::call`] for a call that attaches `lease`: etcd's "requested
    /// lease not found" is [`ClusterError::LeaseExpired`].
    fn call_under<T, F, Fut>(
        &self,
        what: &str,
        lease: Option<LeaseId>,
        f: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS);
        let client = self.client(deadline)?;
        let answer = self
            .runtime()
            .block_on(async { tokio::time::timeout_at(deadline, f(client)).await });
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => match lease {
                Some(lease) if lease_not_found(&error) => Err(ClusterError::LeaseExpired(lease)),
                _ => {
                    if !answered_by_etcd(&error) {
                        self.client.lock().take();
                    }
                    Err(self.unavailable(what, error))
                }
            },
            Err(_) => {
                self.client.lock().take();
                Err(self.unavailable(what, format!("no answer within {REQUEST_TIMEOUT_MS} ms")))
            }
        }
    }

    fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse, ClusterError> {
        self.call(what, |mut client| async move { client.txn(txn).await })
    }

    fn get_one<T: DeserializeOwned>(
        &self,
        what: &str,
        key: String,
    ) -> Result<Option<(T, KeyValue)>, ClusterError> {
        let response = self.call(
            what,
            |mut client| async move { client.get(key, None).await },
        )?;
        match response.kvs() {
            [] => Ok(None),
            [kv] => Ok(Some((decode(kv)?, kv.clone()))),
            kvs => Err(self.unexpected(what, &format!("{} keys for one", kvs.len()))),
        }
    }

    fn get_prefix<T: DeserializeOwned>(
        &self,
        what: &str,
        kind: &str,
    ) -> Result<Vec<(T, Revision)>, ClusterError> {
        // The `/` keeps `nodes` from matching `nodes2/…`; etcd answers
        // ranges sorted by key.
        let prefix = self.key(kind, "");
        let response = self.call(what, |mut client| async move {
            client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
        })?;
        // One record that does not parse (damaged, or written by another
        // version) must not hide the others: it is skipped, and said.
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| match decode(kv) {
                Ok(value) => Some((value, kv.mod_revision())),
                Err(error) => {
                    tracing::warn!(%error, "skipping a coordinator record that does not parse");
                    None
                }
            })
            .collect())
    }

    /// An answer that etcd's API rules out: not a failure of the store we
    /// can act on, but not one to crash a node for either.
    fn unexpected(&self, what: &str, detail: &str) -> ClusterError {
        self.unavailable(what, format!("unexpected answer from etcd: {detail}"))
    }

    fn header_revision(
        &self,
        what: &str,
        response: &TxnResponse,
    ) -> Result<Revision, ClusterError> {
        response
            .header()
            .map(|header| header.revision())
            .ok_or_else(|| self.unexpected(what, "no response header"))
    }
}

impl Drop for EtcdCoordinator {
    fn drop(&mut self) {
        // Drops the client's tasks without waiting for them, which is also
        // allowed from inside another runtime (a plain drop is not).
        self.client.get_mut().take();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// gRPC status codes (numbers fixed by gRPC's specification), so as not to
/// depend on tonic for its `Code` enum.
const GRPC_UNKNOWN: i32 = 2;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_NOT_FOUND: i32 = 5;
const GRPC_UNAVAILABLE: i32 = 14;

/// Whether etcd itself answered this error (so the connection works).
fn answered_by_etcd(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => !matches!(
            i32::from(status.code()),
            GRPC_UNKNOWN | GRPC_DEADLINE_EXCEEDED | GRPC_UNAVAILABLE
        ),
        _ => false,
    }
}

/// Whether etcd refused a request because its lease is gone (etcd's
/// `ErrGRPCLeaseNotFound`).
fn lease_not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if i32::from(status.code()) == GRPC_NOT_FOUND
            && status.message().contains("lease not found"))
}

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Records are plain structs of strings and integers.
    serde_json::to_vec(record).expect("a record always encodes")
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, ClusterError> {
    serde_json::from_slice(kv.value()).map_err(|e| ClusterError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        message: e.to_string(),
    })
}

impl Coordinator for EtcdCoordinator {
    fn endpoint(&self) -> String {
        format!("etcd://{}/{}", self.members.join(","), self.prefix)
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, ClusterError> {
        let ttl = ttl.max(LEASE_MIN);
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds)
            .map_err(|_| ClusterError::Invalid(format!("lease TTL {ttl:?} is too long")))?;
        let response = self.call("granting a lease", |mut client| async move {
            client.lease_grant(seconds, None).await
        })?;
        if !response.error().is_empty() {
            return Err(self.unavailable("granting a lease", response.error()));
        }
        Ok(response.id())
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Duration, ClusterError> {
        let what = "renewing a lease";
        let answer = self.call(what, |mut client| async move {
            let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
                Ok(opened) => opened,
                // The crate's answer to a first renewal with TTL 0.
                Err(etcd_client::Error::LeaseKeepAliveError(message))
                    if message.contains("not found") =>
                {
                    return Ok(None);
                }
                Err(error) => return Err(error),
            };
            keeper.keep_alive().await?;
            Ok(stream.message().await?.map(|response| response.ttl()))
        });
        match answer? {
            Some(ttl) if ttl > 0 => Ok(Duration::from_secs(ttl as u64)),
            // TTL 0 (or a stream that ended): the lease is gone.
            Some(_) => Err(ClusterError::LeaseExpired(lease)),
            None => Err(ClusterError::LeaseExpired(lease)),
        }
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), ClusterError> {
        match self.call_under("revoking a lease", Some(lease), |mut client| async move {
            client.lease_revoke(lease).await
        }) {
            Ok(_) => Ok(()),
            // Already gone: what revoking was for.
            Err(ClusterError::LeaseExpired(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn put_node(&self, record: &NodeRecord, lease: LeaseId) -> Result<(), ClusterError> {
        let key = self.key("nodes", &record.addr);
        let value = encode(record);
        self.call_under("registering a node", Some(lease), |mut client| async move {
            client
                .put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await
        })
        .map(|_| ())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        Ok(self
            .get_prefix("listing nodes", "nodes")?
            .into_iter()
            .map(|(record, _)| record)
            .collect())
    }

    fn create_region(&self, record: &RegionRecord) -> Result<Revision, ClusterError> {
        let what = "creating a region";
        let key = self.key("regions", &record.name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, encode(record), None)]);
        let response = self.txn(what, txn)?;
        if !response.succeeded() {
            return Err(ClusterError::Exists(format!("region {:?}", record.name)));
        }
        self.header_revision(what, &response)
    }

    fn region(&self, name: &str) -> Result<Option<Versioned<RegionRecord>>, ClusterError> {
        Ok(self
            .get_one("reading a region", self.key("regions", name))?
            .map(|(value, kv)| Versioned {
                value,
                revision: kv.mod_revision(),
            }))
    }

    fn regions(&self) -> Result<Vec<Versioned<RegionRecord>>, ClusterError> {
        Ok(self
            .get_prefix("listing regions", "regions")?
            .into_iter()
            .map(|(value, revision)| Versioned { value, revision })
            .collect())
    }

    fn update_region(
        &self,
        record: &RegionRecord,
        expected: Revision,
    ) -> Result<Revision, ClusterError> {
        let what = "updating a region";
        let key = self.key("regions", &record.name);
        let txn = Txn::new()
            .when([
                Compare::version(key.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(key.clone(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(key.clone(), encode(record), None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(what, txn)?;
        if response.succeeded() {
            return self.header_revision(what, &response);
        }
        match response.op_responses().as_slice() {
            [TxnOpResponse::Get(get)] if get.kvs().is_empty() => {
                Err(ClusterError::NotFound(format!("region {:?}", record.name)))
            }
            [TxnOpResponse::Get(_)] => {
                Err(ClusterError::Conflict(format!("region {:?}", record.name)))
            }
            _ => Err(self.unexpected(what, "no read after a failed comparison")),
        }
    }

    fn delete_region(&self, name: &str) -> Result<(), ClusterError> {
        let txn = Txn::new().and_then([
            TxnOp::delete(self.key("regions", name), None),
            TxnOp::delete(self.key("writers", name), None),
        ]);
        self.txn("deleting a region", txn).map(|_| ())
    }

    fn claim_writer(
        &self,
        region: &str,
        record: &WriterRecord,
        lease: LeaseId,
    ) -> Result<Option<WriterRecord>, ClusterError> {
        let what = "claiming a region's writer";
        let key = self.key("writers", region);
        let value = encode(record);
        let put = TxnOp::put(
            key.clone(),
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        );
        let held_here = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([put])
            .or_else([TxnOp::txn(held_here)]);
        let response = self.call_under(what, Some(lease), |mut client| async move {
            client.txn(txn).await
        })?;
        if response.succeeded() {
            return Ok(None);
        }
        let responses = response.op_responses();
        let [TxnOpResponse::Txn(inner)] = responses.as_slice() else {
            return Err(self.unexpected(what, "no nested transaction"));
        };
        if inner.succeeded() {
            return Ok(None);
        }
        match inner.op_responses().as_slice() {
            [TxnOpResponse::Get(get)] => match get.kvs() {
                [kv] => Ok(Some(decode(kv)?)),
                // The outer comparison saw the key in the same transaction.
                kvs => Err(self.unexpected(what, &format!("{} writer keys", kvs.len()))),
            },
            _ => Err(self.unexpected(what, "no read of the holder")),
        }
    }

    fn release_writer(&self, region: &str, lease: LeaseId) -> Result<(), ClusterError> {
        let key = self.key("writers", region);
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key, None)]);
        self.txn("releasing a region's writer", txn).map(|_| ())
    }

    fn writer(&self, region: &str) -> Result<Option<WriterRecord>, ClusterError> {
        Ok(self
            .get_one("reading a region's writer", self.key("writers", region))?
            .map(|(record, _)| record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the endpoint grammar: what is accepted and how it splits.
    #[test]
    fn endpoints_parse() {
        let endpoint = EtcdEndpoint::parse("127.0.0.1:2379").unwrap();
        assert_eq!(endpoint.members, vec!["127.0.0.1:2379"]);
        assert_eq!(endpoint.prefix, "pagoda");
        let endpoint = EtcdEndpoint::parse("a:1,b.example:2,[::1]:3/team/pagoda-1").unwrap();
        assert_eq!(endpoint.members, vec!["a:1", "b.example:2", "[::1]:3"]);
        assert_eq!(endpoint.prefix, "team/pagoda-1");
    }

    // Guards against a malformed endpoint being accepted (and failing
    // later, far from the typo).
    #[test]
    fn bad_endpoints_are_invalid() {
        for spec in [
            "",
            "/pagoda",
            "host",
            "host:",
            ":2379",
            "host:0",
            "host:65536",
            "host:+1",
            "host:2379,",
            ",host:2379",
            "host:2379/",
            "host:2379//x",
            "host:2379/a//b",
            "host:2379/a/",
            "host:2379/../x",
            "host:2379/a b",
            "ho st:2379",
            "user@host:2379",
        ] {
            let result = EtcdEndpoint::parse(spec);
            assert!(
                matches!(result, Err(ClusterError::Invalid(_))),
                "{spec:?}: {result:?}"
            );
        }
    }
}
