//! Clients of a cluster: regions found through the coordinator, links that
//! follow a region's primary through a failover, and writer leases.
//!
//! **Finding regions.** A client made with `Client::connect_cluster` keeps
//! the coordinator (`pagoda_cluster::Coordinator`). Its own connection (for
//! `create_region`, `list_regions`, `node_stat`, ...: its *home* node) goes
//! to a live node, the one with the most free bytes first, or to a region's
//! primary when no node is registered. Every region it opens gets a link of
//! its own ([`Cluster::open`]), dialled to the primary the region's record
//! names, and shared by every handle of that region in this client: regions
//! never share a connection, so regions whose primaries differ, or that fail
//! over to different nodes, need nothing special. The price is one
//! connection per region held.
//!
//! **Following a failover.** A region's link asks the coordinator for the
//! record at every round of dialling (`link::Resolver`), ahead of the
//! addresses it used before. When the primary fails, the request in flight
//! fails at the connection level and the link reconnects: while the record
//! still names the failed primary it dials that (and the old addresses),
//! pausing between rounds (10 ms doubling to 1 s), until either the record
//! names the promoted replica (the link moves there, claims its writer
//! epoch, and sends the request again with its original number: the node
//! applies it at most once) or the old primary answers again; for at most
//! `ClientOptions::reconnect_for` (30 s by default, which covers a failover
//! with a node lease of 5 s: the lease lapses, a replica is promoted and the
//! record rewritten within a few seconds more). A node that answers but no
//! longer leads the region (it is handing the lead off, or was deposed:
//! `RegionUnavailable`) makes the link move the same way
//! (`Link::move_off`). A primary that vanishes without closing its
//! connections (its host lost power, a partition) is noticed by a thread
//! that reads the records of the regions held every [`WATCH_INTERVAL`]
//! (250 ms): once a record names another primary, the link's connection is
//! closed and the calls in flight go to the new primary. A request in
//! flight thus waits for the failover itself (the node lease, then the
//! promotion) plus at most 250 ms, within `reconnect_for`; a primary that
//! stops answering while its record still names it (no failover) is
//! noticed when a reply is `ClientOptions::timeout` late.
//!
//! **Writer leases.** Writing a region takes, besides the node's writer
//! role, the region's writer key in the coordinator (`writers/NAME`),
//! claimed under a lease of this client ([`WriterLease`], `ttl` =
//! `ClientOptions::lease`) before the node is asked. A key held under
//! another lease is refused with `ClientError::WriterBusy` naming its
//! holder. A thread renews the lease every `ttl / 3`. The lease's *local
//! deadline* is the moment its last successful renewal (or its grant) was
//! sent, plus `ttl`, minus a margin of `ttl / 10`: the coordinator started
//! its own countdown no earlier than that send, so as long as this host's
//! monotonic clock runs no more than 10% slower than the coordinator's, the
//! local deadline passes before the coordinator can let another host claim
//! the key. From the local deadline on (or from the moment the coordinator
//! answers that the lease has expired) the lease is *lost*, for good: every
//! write through a region held under it fails with `ClientError::LeaseLost`
//! (checked before each write, and before each write-back of a dirty page),
//! and the renewal thread drops those regions' connections, which gives
//! their writer role on the node back at once (reads reconnect without
//! claiming it). Writes already on their way when the deadline passes may
//! still land, but only before another writer opens the region: the node
//! hands the new writer a higher writer epoch and refuses the old one's
//! (`StaleEpoch`).
//!
//! **A second host** therefore gets in once the coordinator has let the
//! first one's lease go (revoked, or `ttl` after its last renewal), and the
//! node has let its writer role go: at once if the first host noticed its
//! loss (it dropped its connection) or died (its process's sockets closed);
//! only after the node's writer lease (`NodeConfig::writer_lease`, 60 s by
//! default) of silence if its host vanished with the connection open. A
//! cluster open that holds the coordinator's key but finds the node's role
//! still taken waits for it (pausing) for at most
//! `ClientOptions::reconnect_for`, then returns the node's `WriterBusy`.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use pagoda_cluster::{ClusterError, Coordinator, LeaseId, WriterRecord};
use pagoda_wire::{ErrorCode, OpenMode, RegionInfo};
use parking_lot::{Condvar, Mutex};

use crate::link::{LeaseGuard, Link, RegionBinding, Resolver};
use crate::{ClientError, ClientOptions, Region, RegionOptions};

/// The lease's margin is `ttl / LEASE_MARGIN_DIVISOR`: this host's clock may
/// run this much (10%) slower than the coordinator's.
pub const LEASE_MARGIN_DIVISOR: u32 = 10;
/// The longest writer lease.
const LEASE_MAX: Duration = Duration::from_secs(3600);
/// Renewals per `ttl`: a lease survives `LEASE_RENEWALS_PER_TTL - 1` failed
/// renewals in a row, less the margin.
pub const LEASE_RENEWALS_PER_TTL: u32 = 3;
/// The pause before renewing again after a failed renewal, at most (and at
/// most the renewal interval).
const RENEW_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Pauses between attempts to reach a region's primary, or to take a writer
/// role the node still gives another connection: from the first, doubling
/// to the second.
const WAIT_PAUSE_MIN: Duration = Duration::from_millis(10);
const WAIT_PAUSE_MAX: Duration = Duration::from_millis(200);

/// The socket addresses of a `HOST:PORT` from the coordinator (none if it
/// does not resolve).
fn addresses_of(addr: &str) -> Vec<SocketAddr> {
    match addr.to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(error) => {
            tracing::debug!(addr, %error, "an address in the coordinator does not resolve");
            Vec::new()
        }
    }
}

fn push_new(all: &mut Vec<SocketAddr>, addrs: Vec<SocketAddr>) {
    for addr in addrs {
        if !all.contains(&addr) {
            all.push(addr);
        }
    }
}

/// The nodes a cluster client's own requests may go to: the live nodes,
/// the most free bytes first; else (no node registered) the regions'
/// primaries.
fn home_addresses(coordinator: &dyn Coordinator) -> Result<Vec<SocketAddr>, ClusterError> {
    let nodes = coordinator.nodes()?;
    let mut all = Vec::new();
    for node in pagoda_cluster::place(&nodes, nodes.len(), &[]) {
        push_new(&mut all, addresses_of(&node.addr));
    }
    if all.is_empty() {
        for record in coordinator.regions()? {
            push_new(&mut all, addresses_of(&record.value.primary));
        }
    }
    Ok(all)
}

/// The home link's resolver: see [`home_addresses`].
struct LiveNodes {
    coordinator: Arc<dyn Coordinator>,
}

impl Resolver for LiveNodes {
    fn resolve(&self) -> Vec<SocketAddr> {
        home_addresses(self.coordinator.as_ref()).unwrap_or_else(|error| {
            tracing::debug!(%error, "the coordinator did not say which nodes are live");
            Vec::new()
        })
    }
}

/// A region link's resolver: the primary the region's record names.
struct RegionPrimary {
    coordinator: Arc<dyn Coordinator>,
    name: String,
}

impl Resolver for RegionPrimary {
    fn resolve(&self) -> Vec<SocketAddr> {
        match self.coordinator.region(&self.name) {
            Ok(Some(record)) => addresses_of(&record.value.primary),
            Ok(None) => Vec::new(),
            Err(error) => {
                tracing::debug!(region = %self.name, %error, "the coordinator did not say where the region's primary is");
                Vec::new()
            }
        }
    }
}

/// Whether another attempt to reach a node may succeed where this one
/// failed.
fn unreachable(error: &ClientError) -> bool {
    matches!(error, ClientError::Connect { .. }) || crate::link::connection_failure(error)
}

/// Who this client is, in the coordinator's writer records.
fn holder_name(options: &ClientOptions) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|host| host.trim().to_owned())
        .unwrap_or_else(|_| "an unknown host".into());
    format!(
        "{} on {host} (pid {})",
        options.client_name,
        std::process::id()
    )
}

/// A cluster client's state: the coordinator, the links of the regions it
/// holds, and its writer lease. See the module documentation.
pub(crate) struct Cluster {
    coordinator: Arc<dyn Coordinator>,
    options: ClientOptions,
    holder: String,
    /// Each region's link, by name, while a handle holds it.
    links: Arc<Mutex<HashMap<String, Weak<Link>>>>,
    /// Whether the thread that watches the records of held regions runs.
    watching: AtomicBool,
    /// The writer lease, while a region is held under it; a new one is
    /// granted when none is, or it was lost.
    lease: Mutex<Weak<WriterLease>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("coordinator", &self.coordinator.endpoint())
            .finish()
    }
}

impl Cluster {
    pub(crate) fn new(
        coordinator: Arc<dyn Coordinator>,
        options: &ClientOptions,
    ) -> Result<Cluster, ClientError> {
        if options.lease < pagoda_cluster::LEASE_MIN {
            return Err(ClientError::InvalidArgument(format!(
                "a writer lease of {:?} is shorter than the coordinator's shortest, {:?}",
                options.lease,
                pagoda_cluster::LEASE_MIN
            )));
        }
        if options.lease > LEASE_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "a writer lease of {:?} is longer than the longest, {LEASE_MAX:?}",
                options.lease
            )));
        }
        Ok(Cluster {
            coordinator,
            holder: holder_name(options),
            options: options.clone(),
            links: Arc::new(Mutex::new(HashMap::new())),
            watching: AtomicBool::new(false),
            lease: Mutex::new(Weak::new()),
        })
    }

    /// The coordinator.
    pub(crate) fn coordinator(&self) -> &Arc<dyn Coordinator> {
        &self.coordinator
    }

    /// Where the client's own connection may go, and the resolver that
    /// keeps it following the live nodes.
    pub(crate) fn home(&self) -> Result<(Vec<SocketAddr>, Arc<dyn Resolver>), ClientError> {
        let addresses = home_addresses(self.coordinator.as_ref())?;
        if addresses.is_empty() {
            return Err(ClientError::Coordinator(ClusterError::Unavailable {
                endpoint: self.coordinator.endpoint(),
                message: "no live node is registered and no region is recorded: nothing to \
                          connect to"
                    .into(),
            }));
        }
        let resolver = Arc::new(LiveNodes {
            coordinator: self.coordinator.clone(),
        });
        Ok((addresses, resolver))
    }

    /// The writer lease's id, while the client holds one.
    pub(crate) fn lease_id(&self) -> Option<LeaseId> {
        self.lease.lock().upgrade().map(|lease| lease.id)
    }

    /// Opens region `name` on its primary (see the module documentation);
    /// `home` is the client's own link, used for a region the coordinator
    /// has no record of.
    pub(crate) fn open(
        &self,
        home: &Link,
        name: &str,
        options: RegionOptions,
        mode: OpenMode,
    ) -> Result<Region, ClientError> {
        // The coordinator's key first: a host refused there does not touch
        // the node.
        let hold = match mode {
            OpenMode::Write => Some(self.claim(name)?),
            OpenMode::Read => None,
        };
        let link = self.link_for(home, name)?;
        let (info, binding) = self.open_on(&link, name, mode)?;
        if let Some(hold) = &hold
            && let Err(error) = hold.attach(&link, &binding)
        {
            link.close(&binding, mode);
            return Err(error);
        }
        let region = Region::new(link, info, options, binding, mode)?;
        Ok(match hold {
            Some(hold) => region.with_writer(hold),
            None => region,
        })
    }

    /// Opens `name` on `link`; a write open the node refuses with
    /// `WriterBusy` (the previous writer's connection still holds the role,
    /// though this client holds the coordinator's key) is tried again,
    /// pausing, for at most `ClientOptions::reconnect_for`.
    fn open_on(
        &self,
        link: &Link,
        name: &str,
        mode: OpenMode,
    ) -> Result<(RegionInfo, Arc<RegionBinding>), ClientError> {
        let began = Instant::now();
        let mut pause = WAIT_PAUSE_MIN;
        loop {
            match link.open(name, mode) {
                Err(error)
                    if mode == OpenMode::Write
                        && error.code() == Some(ErrorCode::WriterBusy)
                        && began.elapsed() < self.options.reconnect_for =>
                {
                    tracing::info!(region = name, %error, "the node still gives the writer role to the previous writer; waiting for it to go");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(WAIT_PAUSE_MAX);
                }
                other => return other,
            }
        }
    }

    /// The link of region `name`: the one its handles share, or a new one
    /// to the primary its record names (the home node if it has none),
    /// dialled again (pausing) while it does not answer, for at most
    /// `ClientOptions::reconnect_for`.
    fn link_for(&self, home: &Link, name: &str) -> Result<Arc<Link>, ClientError> {
        if let Some(link) = self.links.lock().get(name).and_then(Weak::upgrade) {
            return Ok(link);
        }
        // Dialled without the map's lock: a region whose primary does not
        // answer holds up neither the other regions nor the watcher.
        let resolver = Arc::new(RegionPrimary {
            coordinator: self.coordinator.clone(),
            name: name.to_owned(),
        });
        let began = Instant::now();
        let mut pause = WAIT_PAUSE_MIN;
        let link = loop {
            let mut addresses = resolver.resolve();
            if addresses.is_empty() {
                addresses.push(home.peer());
            }
            match Link::connect(&addresses[..], self.options.clone()) {
                Ok(link) => break link,
                Err(error)
                    if unreachable(&error) && began.elapsed() < self.options.reconnect_for =>
                {
                    tracing::debug!(region = name, ?addresses, %error, "the region's primary does not answer; asking the coordinator again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(WAIT_PAUSE_MAX);
                }
                Err(error) => return Err(error),
            }
        };
        link.set_resolver(resolver);
        let mut links = self.links.lock();
        // Another thread may have opened the region meanwhile: its link is
        // the one the region's handles share (this one closes unused).
        if let Some(existing) = links.get(name).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        links.retain(|_, link| link.strong_count() > 0);
        let link = Arc::new(link);
        links.insert(name.to_owned(), Arc::downgrade(&link));
        drop(links);
        if !self.watching.swap(true, Ordering::AcqRel) {
            let coordinator = self.coordinator.clone();
            let links = Arc::downgrade(&self.links);
            if let Err(error) = std::thread::Builder::new()
                .name("pagoda-watch".into())
                .spawn(move || watch(coordinator, links))
            {
                self.watching.store(false, Ordering::Release);
                tracing::warn!(%error, "could not start the thread that follows region records");
            }
        }
        Ok(link)
    }

    /// The writer lease: the one held, or a new one.
    fn writer_lease(&self) -> Result<Arc<WriterLease>, ClientError> {
        let mut slot = self.lease.lock();
        if let Some(lease) = slot.upgrade()
            && lease.lost.get().is_none()
        {
            return Ok(lease);
        }
        let lease = WriterLease::grant(self.coordinator.clone(), self.options.lease)?;
        *slot = Arc::downgrade(&lease);
        Ok(lease)
    }

    /// Claims region `name`'s writer key under the writer lease (or counts
    /// one more write open of it, if it is claimed already).
    fn claim(&self, name: &str) -> Result<WriterHold, ClientError> {
        let record = WriterRecord {
            holder: self.holder.clone(),
            lease_ms: self.options.lease.as_millis() as u64,
        };
        let mut expired = None;
        // A lease that expired under us is replaced once.
        for _ in 0..2 {
            let lease = self.writer_lease()?;
            let mut held = lease.held.lock();
            if let Some(entry) = held.get_mut(name) {
                entry.opens += 1;
                drop(held);
                return Ok(WriterHold {
                    lease,
                    region: name.to_owned(),
                });
            }
            match self.coordinator.claim_writer(name, &record, lease.id) {
                Ok(None) => {
                    held.insert(
                        name.to_owned(),
                        Held {
                            opens: 1,
                            bindings: Vec::new(),
                        },
                    );
                    drop(held);
                    tracing::debug!(
                        region = name,
                        lease = lease.id,
                        "claimed the region's writer key"
                    );
                    return Ok(WriterHold {
                        lease,
                        region: name.to_owned(),
                    });
                }
                Ok(Some(holder)) => {
                    return Err(ClientError::WriterBusy {
                        region: name.to_owned(),
                        holder: holder.holder,
                        lease_ms: holder.lease_ms,
                        coordinator: self.coordinator.endpoint(),
                    });
                }
                Err(ClusterError::LeaseExpired(id)) => {
                    drop(held);
                    lease.mark_lost("the coordinator says it has expired".into());
                    expired = Some(ClusterError::LeaseExpired(id));
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(expired.expect("set by the loop").into())
    }

    /// Ends the writer lease now (its keys go with it): for a process about
    /// to exit. Regions held under it refuse writes from then on.
    pub(crate) fn release_lease(&self) -> Option<LeaseId> {
        let lease = self.lease.lock().upgrade()?;
        lease.released.store(true, Ordering::Release);
        lease.mark_lost("released (the process is exiting)".into());
        match self.coordinator.revoke_lease(lease.id) {
            Ok(()) => Some(lease.id),
            Err(error) => {
                tracing::error!(lease = lease.id, %error, "releasing the writer lease failed; it lapses by itself");
                None
            }
        }
    }
}

/// A region claimed under a writer lease.
struct Held {
    /// Write opens of it through this client.
    opens: u32,
    /// Its links and bindings: their connections are dropped when the
    /// lease is lost.
    bindings: Vec<(Weak<Link>, Weak<RegionBinding>)>,
}

/// Wakes the renewal thread: kept apart from the lease, so that the thread
/// waits without holding it.
#[derive(Default)]
struct Wake {
    /// Set when the lease was lost or dropped; cleared by the thread.
    poked: Mutex<bool>,
    changed: Condvar,
}

impl Wake {
    fn poke(&self) {
        *self.poked.lock() = true;
        self.changed.notify_all();
    }
}

/// A cluster client's writer lease; see the module documentation.
pub(crate) struct WriterLease {
    coordinator: Arc<dyn Coordinator>,
    id: LeaseId,
    ttl: Duration,
    /// When the lease was granted: the origin of `deadline_ns`.
    base: Instant,
    /// The local deadline, in nanoseconds after `base`.
    deadline_ns: AtomicU64,
    /// Why the lease is lost, once it is (for good).
    lost: OnceLock<String>,
    /// Whether it was given up on purpose ([`Cluster::release_lease`]).
    released: AtomicBool,
    /// Why the last renewal failed, if it did.
    last_error: Mutex<Option<String>>,
    /// The regions claimed under it, by name. Held across the coordinator
    /// calls that claim and release keys, so that counts and keys agree.
    held: Mutex<HashMap<String, Held>>,
    wake: Arc<Wake>,
}

impl WriterLease {
    /// Grants a lease of `ttl` and starts its renewal thread.
    fn grant(
        coordinator: Arc<dyn Coordinator>,
        ttl: Duration,
    ) -> Result<Arc<WriterLease>, ClientError> {
        let sent = Instant::now();
        let id = coordinator.grant_lease(ttl)?;
        let lease = Arc::new(WriterLease {
            coordinator,
            id,
            ttl,
            base: sent,
            deadline_ns: AtomicU64::new((ttl - margin_of(ttl)).as_nanos() as u64),
            lost: OnceLock::new(),
            released: AtomicBool::new(false),
            last_error: Mutex::new(None),
            held: Mutex::new(HashMap::new()),
            wake: Arc::new(Wake::default()),
        });
        let weak = Arc::downgrade(&lease);
        let wake = lease.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("pagoda-lease".into())
            .spawn(move || keep(weak, wake, sent));
        if let Err(error) = spawned {
            // Dropping the lease revokes it.
            return Err(ClientError::InvalidArgument(format!(
                "starting the writer lease's renewal thread: {error}"
            )));
        }
        tracing::debug!(lease = id, ?ttl, "writer lease granted");
        Ok(lease)
    }

    fn deadline(&self) -> Instant {
        self.base + Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire))
    }

    /// A renewal sent at `sent` succeeded: the coordinator's countdown
    /// started no earlier. The deadline never moves back.
    fn renewed(&self, sent: Instant) {
        let deadline = sent + self.ttl - margin_of(self.ttl);
        let ns = deadline.saturating_duration_since(self.base).as_nanos() as u64;
        self.deadline_ns.fetch_max(ns, Ordering::AcqRel);
        *self.last_error.lock() = None;
    }

    /// Marks the lease lost (the first reason stays) and wakes the renewal
    /// thread, which drops the regions' connections.
    fn mark_lost(&self, reason: String) {
        if self.lost.set(reason).is_ok() {
            self.wake.poke();
        }
    }

    /// Fails with `LeaseLost` for `region` once the lease is lost or its
    /// local deadline has passed.
    fn check_region(&self, region: &str) -> Result<(), ClientError> {
        if self.lost.get().is_none() && Instant::now() >= self.deadline() {
            let last = self.last_error.lock().clone();
            self.mark_lost(format!(
                "no renewal succeeded before its local deadline (the last successful renewal's \
                 send + {:?} - {:?} of margin){}",
                self.ttl,
                margin_of(self.ttl),
                last.map(|error| format!("; the last renewal failed: {error}"))
                    .unwrap_or_default()
            ));
        }
        match self.lost.get() {
            None => Ok(()),
            Some(reason) => Err(ClientError::LeaseLost {
                region: region.to_owned(),
                coordinator: self.coordinator.endpoint(),
                reason: format!("lease {:x}: {reason}", self.id),
            }),
        }
    }

    /// After the loss: drops the connections of the regions held (giving
    /// their writer roles back on the node), and ends the lease in the
    /// coordinator if it can still be reached.
    fn after_loss(&self) {
        // A lease given up on purpose belongs to a process about to exit,
        // which said so itself: its connections end with it.
        if self.released.load(Ordering::Acquire) {
            return;
        }
        let reason = self.lost.get().cloned().unwrap_or_default();
        let (names, links): (Vec<String>, Vec<Arc<Link>>) = {
            let held = self.held.lock();
            let names = held.keys().cloned().collect();
            let links = held
                .values()
                .flat_map(|held| held.bindings.iter())
                .filter_map(|(link, _)| link.upgrade())
                .collect();
            (names, links)
        };
        if !names.is_empty() {
            tracing::error!(
                lease = self.id,
                coordinator = %self.coordinator.endpoint(),
                regions = ?names,
                %reason,
                "writer lease lost: these regions refuse writes from now on"
            );
        }
        for link in links {
            link.current()
                .0
                .close("the writer lease was lost: giving the writer role back".into());
        }
        if let Err(error) = self.coordinator.revoke_lease(self.id) {
            tracing::debug!(lease = self.id, %error, "revoking a lost writer lease failed");
        }
    }
}

impl Drop for WriterLease {
    fn drop(&mut self) {
        self.wake.poke();
        if self.lost.get().is_none()
            && let Err(error) = self.coordinator.revoke_lease(self.id)
        {
            tracing::warn!(lease = self.id, %error, "ending the writer lease failed; it lapses by itself");
        }
    }
}

/// The margin taken off a lease's `ttl` for the local deadline.
fn margin_of(ttl: Duration) -> Duration {
    ttl / LEASE_MARGIN_DIVISOR
}

/// The renewal thread of a lease: renews every `ttl / 3` (and sooner after
/// a failure), marks the lease lost at its local deadline or when the
/// coordinator says it expired, then drops the regions' connections. Ends
/// when the lease is dropped or lost.
fn keep(lease: Weak<WriterLease>, wake: Arc<Wake>, granted: Instant) {
    let Some(first) = lease.upgrade() else {
        return;
    };
    let every = first.ttl / LEASE_RENEWALS_PER_TTL;
    drop(first);
    let mut next = granted + every;
    loop {
        let Some(held) = lease.upgrade() else {
            return;
        };
        if held.lost.get().is_some() {
            held.after_loss();
            return;
        }
        let now = Instant::now();
        let deadline = held.deadline();
        if now >= deadline {
            // Marks it lost, with the reason.
            let _ = held.check_region("");
            held.after_loss();
            return;
        }
        if now < next {
            drop(held);
            // A poke between the checks above and this wait is not missed:
            // it leaves `poked` set.
            let mut poked = wake.poked.lock();
            if !*poked {
                wake.changed.wait_until(&mut poked, next.min(deadline));
            }
            *poked = false;
            continue;
        }
        let sent = Instant::now();
        match held.coordinator.keep_alive(held.id) {
            Ok(_) => {
                held.renewed(sent);
                next = sent + every;
            }
            Err(ClusterError::LeaseExpired(_)) => {
                held.mark_lost(
                    "the coordinator says it has expired (revoked, or not renewed in time)".into(),
                );
            }
            Err(error) => {
                tracing::warn!(lease = held.id, %error, "renewing the writer lease failed; trying again");
                *held.last_error.lock() = Some(error.to_string());
                next = Instant::now() + RENEW_RETRY_PAUSE.min(every);
            }
        }
    }
}

/// One write open's hold on its region's writer key: given back when the
/// region handle is dropped (the last one of a region releases the key).
pub(crate) struct WriterHold {
    lease: Arc<WriterLease>,
    region: String,
}

impl std::fmt::Debug for WriterHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHold")
            .field("lease", &self.lease.id)
            .field("region", &self.region)
            .finish()
    }
}

/// A region's writer lease, as its binding checks it.
struct RegionLease {
    lease: Arc<WriterLease>,
    region: String,
}

impl LeaseGuard for RegionLease {
    fn check(&self) -> Result<(), ClientError> {
        self.lease.check_region(&self.region)
    }
}

impl WriterHold {
    /// Puts the write open of `binding` (on `link`) under the lease: its
    /// writes are checked against it, and its connection is dropped when
    /// the lease is lost. Fails if the lease is lost already.
    fn attach(&self, link: &Arc<Link>, binding: &Arc<RegionBinding>) -> Result<(), ClientError> {
        let mut held = self.lease.held.lock();
        self.lease.check_region(&self.region)?;
        held.get_mut(&self.region)
            .expect("a held region is counted")
            .bindings
            .push((Arc::downgrade(link), Arc::downgrade(binding)));
        binding.set_lease(Arc::new(RegionLease {
            lease: self.lease.clone(),
            region: self.region.clone(),
        }));
        Ok(())
    }
}

impl Drop for WriterHold {
    fn drop(&mut self) {
        let mut held = self.lease.held.lock();
        let entry = held
            .get_mut(&self.region)
            .expect("a held region is counted");
        entry.opens -= 1;
        entry
            .bindings
            .retain(|(_, binding)| binding.strong_count() > 0);
        if entry.opens > 0 {
            return;
        }
        held.remove(&self.region);
        if self.lease.lost.get().is_some() {
            return;
        }
        match self
            .lease
            .coordinator
            .release_writer(&self.region, self.lease.id)
        {
            Ok(()) => tracing::debug!(region = %self.region, "released the region's writer key"),
            Err(error) => {
                tracing::warn!(region = %self.region, %error, "releasing the region's writer key failed; it lapses with the lease")
            }
        }
    }
}

/// How often a cluster client reads the records of the regions it holds.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Follows the records of the regions a cluster client holds: when a
/// record names a primary other than the node a region's link is connected
/// to, the connection is closed, so that calls in flight on it fail at the
/// connection level at once and the link dials the new primary (sending
/// them again as after any reconnect). Without it a primary that vanished
/// without closing its connections (its host lost, a partition) would be
/// noticed only when a reply is `ClientOptions::timeout` late. Ends when
/// the client is dropped.
fn watch(coordinator: Arc<dyn Coordinator>, links: Weak<Mutex<HashMap<String, Weak<Link>>>>) {
    loop {
        std::thread::sleep(WATCH_INTERVAL);
        let Some(all) = links.upgrade() else {
            return;
        };
        let held: Vec<(String, Arc<Link>)> = all
            .lock()
            .iter()
            .filter_map(|(name, link)| link.upgrade().map(|link| (name.clone(), link)))
            .collect();
        drop(all);
        if held.is_empty() {
            continue;
        }
        let records = match coordinator.regions() {
            Ok(records) => records,
            Err(error) => {
                tracing::debug!(%error, "could not read the region records");
                continue;
            }
        };
        for (name, link) in held {
            let Some(record) = records.iter().find(|r| r.value.name == name) else {
                continue;
            };
            if record.value.primary.is_empty() {
                continue;
            }
            let primary = addresses_of(&record.value.primary);
            let (connection, _) = link.current();
            if !primary.is_empty()
                && !connection.is_failed()
                && !primary.contains(&connection.peer())
            {
                tracing::info!(region = %name, primary = %record.value.primary, from = %connection.peer(), "the region's record names another primary: moving there");
                connection.close(format!(
                    "the coordinator names {} the primary of {name:?} now",
                    record.value.primary
                ));
            }
        }
    }
}
