//! Fault-injecting storage for tests, here and in other crates.
//!
//! [`CrashStorage`] is an in-memory [`Storage`] that keeps, for every segment, the bytes
//! written (what reads see) apart from the bytes durable (what survives a crash), and
//! likewise the directory's visible entries apart from its durable ones. A crash turns
//! the durable state plus some of the unpersisted operations (per [`CrashMode`]) into a
//! new storage, the one recovery then runs on. It can also crash by itself after a given
//! number of operations, fail writes or syncs on demand, and make syncs slow.
//!
//! Its `sync` is deliberately strict: it makes durable only operations issued before the
//! sync began, so a group commit that reads its target after starting a persist would
//! lose records here.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::device::{Device, Storage};

/// Which unpersisted operations survive a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// None: only what was synced survives.
    DropUnsynced,
    /// A random prefix of each file's (and the directory's) unpersisted operations
    /// survives, and the next write in line survives torn at a random byte.
    TornPrefix,
    /// Each unpersisted directory operation survives or not at random, and each 512-byte
    /// sector of each unpersisted write likewise (a disk writing back in any order).
    RandomSubset,
}

impl CrashMode {
    /// Every mode.
    pub const ALL: [CrashMode; 3] = [
        CrashMode::DropUnsynced,
        CrashMode::TornPrefix,
        CrashMode::RandomSubset,
    ];
}

/// How long a device `sync` takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncDelay {
    /// Returns at once.
    #[default]
    None,
    /// Yields the thread once, to let other threads interleave.
    Yield,
    /// Sleeps this long (with no lock held, so writes go on meanwhile).
    Sleep(Duration),
}

/// Operation counts since the storage was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashStats {
    /// Every call on the storage or one of its devices.
    pub operations: u64,
    /// `write_at` calls.
    pub writes: u64,
    /// Device `sync` calls.
    pub syncs: u64,
    /// `sync_directory` calls.
    pub directory_syncs: u64,
    /// `truncate` calls.
    pub truncates: u64,
    /// Segments created.
    pub creates: u64,
    /// Segments removed.
    pub removes: u64,
}

/// A small deterministic random generator (SplitMix64), so crashes replay from a seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 if `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

const SECTOR_BYTES: u64 = 512;

#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, data: Vec<u8> },
    Truncate { len: u64 },
}

impl FileOp {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            FileOp::Write { offset, data } => write_into(content, *offset, data),
            FileOp::Truncate { len } => content.resize(*len as usize, 0),
        }
    }
}

fn write_into(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[offset as usize..end].copy_from_slice(data);
}

#[derive(Clone, Debug, Default)]
struct FileState {
    /// What reads see.
    volatile: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Operations not yet persisted, oldest first, each with its number.
    pending: VecDeque<(u64, FileOp)>,
    next_op: u64,
}

impl FileState {
    fn issue(&mut self, op: FileOp) {
        op.apply(&mut self.volatile);
        self.pending.push_back((self.next_op, op));
        self.next_op += 1;
    }

    /// Persists every operation numbered below `through`.
    fn persist(&mut self, through: u64) {
        while self
            .pending
            .front()
            .is_some_and(|(number, _)| *number < through)
        {
            if let Some((_, op)) = self.pending.pop_front() {
                op.apply(&mut self.durable);
            }
        }
    }

    /// What survives a crash in `mode`.
    fn after_crash(&self, mode: CrashMode, rng: &mut SplitMix64) -> Vec<u8> {
        let mut content = self.durable.clone();
        match mode {
            CrashMode::DropUnsynced => {}
            CrashMode::TornPrefix => {
                let kept = rng.below(self.pending.len() as u64 + 1) as usize;
                for (_, op) in self.pending.iter().take(kept) {
                    op.apply(&mut content);
                }
                match self.pending.get(kept) {
                    Some((_, FileOp::Write { offset, data })) => {
                        let torn = rng.below(data.len() as u64 + 1) as usize;
                        write_into(&mut content, *offset, &data[..torn]);
                    }
                    Some((_, op @ FileOp::Truncate { .. })) if rng.coin() => {
                        op.apply(&mut content);
                    }
                    Some((_, FileOp::Truncate { .. })) | None => {}
                }
            }
            CrashMode::RandomSubset => {
                for (_, op) in &self.pending {
                    match op {
                        FileOp::Write { offset, data } => {
                            let mut start = *offset;
                            let end = offset + data.len() as u64;
                            while start < end {
                                let sector_end = ((start / SECTOR_BYTES) + 1) * SECTOR_BYTES;
                                let piece_end = sector_end.min(end);
                                if rng.coin() {
                                    let from = (start - offset) as usize;
                                    let to = (piece_end - offset) as usize;
                                    write_into(&mut content, start, &data[from..to]);
                                }
                                start = piece_end;
                            }
                        }
                        FileOp::Truncate { .. } => {
                            if rng.coin() {
                                op.apply(&mut content);
                            }
                        }
                    }
                }
            }
        }
        content
    }
}

#[derive(Clone, Debug)]
enum DirectoryOp {
    Create { sequence: u64, file: usize },
    Remove { sequence: u64 },
}

/// Skip the next `skip` calls, then fail the `fail` after them.
#[derive(Clone, Copy, Debug, Default)]
struct FailPlan {
    skip: u64,
    fail: u64,
}

impl FailPlan {
    fn should_fail(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            false
        } else if self.fail > 0 {
            self.fail -= 1;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Debug)]
struct State {
    crashed: bool,
    crash_at: Option<(u64, CrashMode)>,
    crash_image: Option<Box<State>>,
    rng: SplitMix64,
    stats: CrashStats,
    fail_writes: FailPlan,
    fail_syncs: FailPlan,
    sync_delay: SyncDelay,
    /// Every file ever created, by number; removal only drops the directory entry.
    files: Vec<FileState>,
    directory: BTreeMap<u64, usize>,
    durable_directory: BTreeMap<u64, usize>,
    directory_pending: Vec<DirectoryOp>,
}

fn crashed_error() -> io::Error {
    io::Error::other("the storage crashed")
}

impl State {
    fn new(seed: u64) -> Self {
        Self {
            crashed: false,
            crash_at: None,
            crash_image: None,
            rng: SplitMix64::new(seed),
            stats: CrashStats::default(),
            fail_writes: FailPlan::default(),
            fail_syncs: FailPlan::default(),
            sync_delay: SyncDelay::None,
            files: Vec::new(),
            directory: BTreeMap::new(),
            durable_directory: BTreeMap::new(),
            directory_pending: Vec::new(),
        }
    }

    /// Starts an operation: fails if crashed, crashes if the crash point is reached.
    fn begin(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(crashed_error());
        }
        match self.crash_at {
            Some((at, mode)) if self.stats.operations >= at => {
                self.crash(mode);
                return Err(crashed_error());
            }
            _ => {}
        }
        self.stats.operations += 1;
        Ok(())
    }

    fn crash(&mut self, mode: CrashMode) {
        let image = self.image(mode);
        self.crash_image = Some(Box::new(image));
        self.crashed = true;
    }

    /// The state a crash in `mode` would leave.
    fn image(&mut self, mode: CrashMode) -> State {
        let mut directory = self.durable_directory.clone();
        let surviving = match mode {
            CrashMode::DropUnsynced => 0,
            CrashMode::TornPrefix => {
                self.rng.below(self.directory_pending.len() as u64 + 1) as usize
            }
            CrashMode::RandomSubset => self.directory_pending.len(),
        };
        for op in self.directory_pending.iter().take(surviving) {
            if mode == CrashMode::RandomSubset && !self.rng.coin() {
                continue;
            }
            match op {
                DirectoryOp::Create { sequence, file } => {
                    directory.insert(*sequence, *file);
                }
                DirectoryOp::Remove { sequence } => {
                    directory.remove(sequence);
                }
            }
        }
        let mut image = State::new(self.rng.next_u64());
        image.sync_delay = self.sync_delay;
        for (sequence, file) in directory {
            let content = self.files[file].after_crash(mode, &mut self.rng);
            image.files.push(FileState {
                volatile: content.clone(),
                durable: content,
                ..FileState::default()
            });
            image.directory.insert(sequence, image.files.len() - 1);
        }
        image.durable_directory = image.directory.clone();
        image
    }

    fn file_of(&self, sequence: u64) -> io::Result<usize> {
        self.directory.get(&sequence).copied().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no segment {sequence}"))
        })
    }
}

/// An in-memory storage that separates written from durable bytes and can crash.
/// Clones share the same state.
#[derive(Clone)]
pub struct CrashStorage {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for CrashStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("CrashStorage")
            .field("segments", &state.directory.keys().collect::<Vec<_>>())
            .field("crashed", &state.crashed)
            .finish()
    }
}

impl CrashStorage {
    /// An empty storage whose crashes draw from `seed`.
    pub fn new(seed: u64) -> Self {
        Self::from_state(State::new(seed))
    }

    fn from_state(state: State) -> Self {
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Makes every device `sync` take this long.
    pub fn set_sync_delay(&self, delay: SyncDelay) {
        self.state.lock().sync_delay = delay;
    }

    /// Crashes (in `mode`) when `operations` more operations have run: that operation
    /// and every later one fails, and [`CrashStorage::crash_image`] returns what survived.
    pub fn crash_after(&self, operations: u64, mode: CrashMode) {
        let mut state = self.state.lock();
        let at = state.stats.operations + operations;
        state.crash_at = Some((at, mode));
    }

    /// Crashes now, in `mode`, and returns the storage that survives. Every later
    /// operation on this storage fails.
    pub fn crash(&self, mode: CrashMode) -> CrashStorage {
        let mut state = self.state.lock();
        if !state.crashed {
            state.crash(mode);
        }
        let image = state
            .crash_image
            .as_deref()
            .expect("a crashed storage keeps its image");
        Self::from_state(image.clone())
    }

    /// Whether this storage has crashed.
    pub fn is_crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// The storage that survived the crash, if there was one (a fresh copy per call).
    pub fn crash_image(&self) -> Option<CrashStorage> {
        let state = self.state.lock();
        state
            .crash_image
            .as_deref()
            .map(|image| Self::from_state(image.clone()))
    }

    /// What a crash dropping every unpersisted operation would leave, without crashing.
    pub fn durable_image(&self) -> CrashStorage {
        let mut state = self.state.lock();
        Self::from_state(state.image(CrashMode::DropUnsynced))
    }

    /// An independent copy of everything, unpersisted operations included.
    pub fn fork(&self) -> CrashStorage {
        let mut state = self.state.lock().clone();
        state.crash_at = None;
        state.crash_image = None;
        state.crashed = false;
        Self::from_state(state)
    }

    /// Fails the device writes after the next `skip`, `count` of them. A failing write
    /// leaves the first half of its bytes written (unpersisted), like a short write.
    pub fn fail_writes(&self, skip: u64, count: u64) {
        self.state.lock().fail_writes = FailPlan { skip, fail: count };
    }

    /// Fails the device syncs after the next `skip`, `count` of them. A failing sync
    /// persists nothing.
    pub fn fail_syncs(&self, skip: u64, count: u64) {
        self.state.lock().fail_syncs = FailPlan { skip, fail: count };
    }

    /// Operation counts so far.
    pub fn stats(&self) -> CrashStats {
        self.state.lock().stats
    }

    /// The segments present (visible entries), in order.
    pub fn segments(&self) -> Vec<u64> {
        self.state.lock().directory.keys().copied().collect()
    }

    /// A segment's bytes as reads see them.
    pub fn segment_bytes(&self, sequence: u64) -> Option<Vec<u8>> {
        let state = self.state.lock();
        let file = *state.directory.get(&sequence)?;
        Some(state.files[file].volatile.clone())
    }

    /// Flips bits (`mask`) of the byte at `offset` of a segment, in both its written and
    /// durable bytes: damage on the media.
    ///
    /// # Panics
    ///
    /// If the segment or the byte does not exist, or the segment has unpersisted
    /// operations (damage them through a crash image instead).
    pub fn corrupt(&self, sequence: u64, offset: u64, mask: u8) {
        let mut state = self.state.lock();
        let file = state.file_of(sequence).expect("corrupt: no such segment");
        let file = &mut state.files[file];
        assert!(
            file.pending.is_empty(),
            "corrupt: segment {sequence} has unpersisted operations"
        );
        let at = offset as usize;
        assert!(
            at < file.volatile.len(),
            "corrupt: byte {offset} is beyond the segment"
        );
        file.volatile[at] ^= mask;
        file.durable[at] ^= mask;
    }
}

impl Storage for CrashStorage {
    fn list(&self) -> io::Result<Vec<u64>> {
        let mut state = self.state.lock();
        state.begin()?;
        Ok(state.directory.keys().copied().collect())
    }

    fn open(&self, sequence: u64) -> io::Result<Arc<dyn Device>> {
        let mut state = self.state.lock();
        state.begin()?;
        let file = state.file_of(sequence)?;
        Ok(Arc::new(CrashDevice {
            state: Arc::clone(&self.state),
            file,
        }))
    }

    fn create(&self, sequence: u64) -> io::Result<Arc<dyn Device>> {
        let mut state = self.state.lock();
        state.begin()?;
        if state.directory.contains_key(&sequence) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("segment {sequence} exists"),
            ));
        }
        state.stats.creates += 1;
        state.files.push(FileState::default());
        let file = state.files.len() - 1;
        state.directory.insert(sequence, file);
        state
            .directory_pending
            .push(DirectoryOp::Create { sequence, file });
        Ok(Arc::new(CrashDevice {
            state: Arc::clone(&self.state),
            file,
        }))
    }

    fn remove(&self, sequence: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin()?;
        state.file_of(sequence)?;
        state.stats.removes += 1;
        state.directory.remove(&sequence);
        state
            .directory_pending
            .push(DirectoryOp::Remove { sequence });
        Ok(())
    }

    fn sync_directory(&self) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin()?;
        state.stats.directory_syncs += 1;
        state.durable_directory = state.directory.clone();
        state.directory_pending.clear();
        Ok(())
    }
}

/// One segment of a [`CrashStorage`].
pub struct CrashDevice {
    state: Arc<Mutex<State>>,
    file: usize,
}

impl fmt::Debug for CrashDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashDevice")
            .field("file", &self.file)
            .finish()
    }
}

impl Device for CrashDevice {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin()?;
        state.stats.writes += 1;
        if state.fail_writes.should_fail() {
            let half = data.len() / 2;
            state.files[self.file].issue(FileOp::Write {
                offset,
                data: data[..half].to_vec(),
            });
            return Err(io::Error::other("injected write failure"));
        }
        state.files[self.file].issue(FileOp::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin()?;
        let content = &state.files[self.file].volatile;
        let start = offset as usize;
        let end = start
            .checked_add(buf.len())
            .filter(|&end| end <= content.len());
        let Some(end) = end else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read beyond the end of the segment",
            ));
        };
        buf.copy_from_slice(&content[start..end]);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let (through, delay) = {
            let mut state = self.state.lock();
            state.begin()?;
            state.stats.syncs += 1;
            if state.fail_syncs.should_fail() {
                return Err(io::Error::other("injected sync failure"));
            }
            (state.files[self.file].next_op, state.sync_delay)
        };
        match delay {
            SyncDelay::None => {}
            SyncDelay::Yield => std::thread::yield_now(),
            SyncDelay::Sleep(duration) => std::thread::sleep(duration),
        }
        let mut state = self.state.lock();
        if state.crashed {
            // The crash came while the sync ran: it did not complete.
            return Err(crashed_error());
        }
        state.files[self.file].persist(through);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let mut state = self.state.lock();
        state.begin()?;
        Ok(state.files[self.file].volatile.len() as u64)
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin()?;
        state.stats.truncates += 1;
        state.files[self.file].issue(FileOp::Truncate { len });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synced_bytes_survive_a_drop_unsynced_crash() {
        let storage = CrashStorage::new(1);
        let device = storage.create(1).unwrap();
        storage.sync_directory().unwrap();
        device.write_at(0, b"durable").unwrap();
        device.sync().unwrap();
        device.write_at(7, b" and not").unwrap();
        assert_eq!(storage.segment_bytes(1).unwrap(), b"durable and not");
        let image = storage.crash(CrashMode::DropUnsynced);
        assert_eq!(image.segment_bytes(1).unwrap(), b"durable");
        assert!(
            device.write_at(0, b"x").is_err(),
            "a crashed device refuses writes"
        );
    }

    #[test]
    fn an_unsynced_create_may_vanish_and_a_torn_write_is_a_prefix() {
        let storage = CrashStorage::new(2);
        let device = storage.create(1).unwrap();
        device.write_at(0, b"abc").unwrap();
        device.sync().unwrap();
        // The directory entry was never persisted.
        assert!(storage.crash(CrashMode::DropUnsynced).segments().is_empty());

        let mut seen_torn = false;
        for seed in 0..64 {
            let storage = CrashStorage::new(seed);
            let device = storage.create(1).unwrap();
            storage.sync_directory().unwrap();
            device.write_at(0, b"0123456789").unwrap();
            let survived = storage
                .crash(CrashMode::TornPrefix)
                .segment_bytes(1)
                .unwrap();
            assert!(b"0123456789".starts_with(&survived), "{survived:?}");
            seen_torn |= !survived.is_empty() && survived.len() < 10;
        }
        assert!(seen_torn, "64 seeds never tore the write");
    }

    #[test]
    fn a_crash_point_fails_that_operation_and_keeps_an_image() {
        let storage = CrashStorage::new(3);
        let device = storage.create(1).unwrap();
        storage.sync_directory().unwrap();
        storage.crash_after(2, CrashMode::DropUnsynced);
        device.write_at(0, b"a").unwrap();
        device.sync().unwrap();
        assert!(device.write_at(1, b"b").is_err());
        assert!(storage.is_crashed());
        assert_eq!(
            storage.crash_image().unwrap().segment_bytes(1).unwrap(),
            b"a"
        );
    }

    #[test]
    fn a_sync_covers_only_operations_issued_before_it_began() {
        let storage = CrashStorage::new(4);
        storage.set_sync_delay(SyncDelay::Sleep(Duration::from_millis(20)));
        let device = storage.create(1).unwrap();
        storage.sync_directory().unwrap();
        device.write_at(0, b"before").unwrap();
        std::thread::scope(|scope| {
            let syncing = scope.spawn(|| device.sync());
            std::thread::sleep(Duration::from_millis(5));
            device.write_at(6, b" during").unwrap();
            syncing.join().unwrap().unwrap();
        });
        assert_eq!(storage.durable_image().segment_bytes(1).unwrap(), b"before");
    }
}
