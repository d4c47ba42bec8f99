//! The few userfaultfd calls a mapping makes, on the kernel's ABI.
//!
//! Written here rather than taken from the `userfaultfd` crate: that crate
//! generates its bindings with bindgen at build time (libclang, which a
//! machine with only the Rust toolchain lacks), and it has no way to open
//! `/dev/userfaultfd` nor to map a page write-protected in the same call
//! (`UFFDIO_COPY_MODE_WP`, `UFFDIO_CONTINUE_MODE_WP`), which dirty tracking
//! needs to be free of races. The structures and numbers below are those of
//! `linux/userfaultfd.h`, a stable ABI.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How a mapping asks the kernel for its faults, and where they are
/// served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Faults of user-mode code, served on the faulting thread itself: the
    /// kernel sends the thread `SIGBUS` in place of queuing the fault
    /// (`UFFD_FEATURE_SIGBUS`), and the mapping's signal handler serves it
    /// there and returns, so the access is retried and succeeds. No thread
    /// is woken on either side of a fault. Needs no privilege; as with
    /// [`FaultMode::UserModeOnly`] a system call that reads or writes a
    /// page not resident gets `EFAULT`. The process's `SIGBUS` handler is
    /// the mapping's while a mapping of this kind exists (it passes every
    /// other `SIGBUS` to the handler it replaced); see the module
    /// documentation for what this asks of the application. x86-64 only
    /// (the fault's error code tells a load from a store): the default
    /// there.
    Signal,
    /// Faults from user and kernel mode where the process may have them
    /// (`userfaultfd(2)` with privileges or `vm.unprivileged_userfaultfd =
    /// 1`, else `/dev/userfaultfd` where it is readable), user-mode faults
    /// only otherwise; served by the mapping's fault threads. The default
    /// where [`FaultMode::Signal`] is not available.
    Auto,
    /// Only faults taken in user mode (`UFFD_USER_MODE_ONLY`, Linux 5.11):
    /// needs no privilege, but a system call that reads or writes a page
    /// of the mapping not resident yet (`read(2)` into it, say) fails with
    /// `EFAULT` instead of waiting for the page.
    UserModeOnly,
    /// Faults from user and kernel mode, or an error naming the setting
    /// that would allow them.
    AllFaults,
}

impl Default for FaultMode {
    fn default() -> Self {
        if cfg!(target_arch = "x86_64") {
            FaultMode::Signal
        } else {
            FaultMode::Auto
        }
    }
}

impl FaultMode {
    /// Whether faults are served on the faulting thread.
    pub(crate) fn on_faulting_thread(self) -> bool {
        self == FaultMode::Signal
    }
}

const UFFDIO: u64 = 0xAA;
const IOC_WRITE_READ: u64 = 3;
const IOC_READ: u64 = 2;

const fn ioc(direction: u64, number: u64, size: usize) -> u64 {
    (direction << 30) | ((size as u64) << 16) | (UFFDIO << 8) | number
}

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd` (Linux 6.1).
const USERFAULTFD_IOC_NEW: u64 = UFFDIO << 8;

pub(crate) const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub(crate) const FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// Faults are not queued: the faulting thread gets `SIGBUS` (Linux 4.14).
pub(crate) const FEATURE_SIGBUS: u64 = 1 << 7;
pub(crate) const FEATURE_THREAD_ID: u64 = 1 << 8;
pub(crate) const FEATURE_MINOR_SHMEM: u64 = 1 << 10;
pub(crate) const FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// The kernel resolves write-protect faults itself (Linux 6.7): a store to
/// a protected page makes it writable and marks it written, with no
/// message; `PAGEMAP_SCAN` finds the written pages.
pub(crate) const FEATURE_WP_ASYNC: u64 = 1 << 15;

const REGISTER_MODE_MISSING: u64 = 1 << 0;
const REGISTER_MODE_WP: u64 = 1 << 1;
const REGISTER_MODE_MINOR: u64 = 1 << 2;

const COPY_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const CONTINUE_MODE_WP: u64 = 1 << 1;

pub(crate) const EVENT_PAGEFAULT: u8 = 0x12;
pub(crate) const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub(crate) const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
struct UffdioContinue {
    range: UffdioRange,
    mode: u64,
    mapped: i64,
}

/// One message read from a userfaultfd (`struct uffd_msg`, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Message {
    pub(crate) event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    /// For a page fault: `UFFD_PAGEFAULT_FLAG_*`.
    pub(crate) flags: u64,
    /// For a page fault: the faulting address.
    pub(crate) address: u64,
    /// For a page fault with `UFFD_FEATURE_THREAD_ID`: the thread's id.
    pub(crate) ptid: u32,
    _pad: u32,
}

const _: () = assert!(std::mem::size_of::<Message>() == 32);

const API: u64 = ioc(IOC_WRITE_READ, 0x3F, std::mem::size_of::<UffdioApi>());
const REGISTER: u64 = ioc(IOC_WRITE_READ, 0x00, std::mem::size_of::<UffdioRegister>());
const WAKE: u64 = ioc(IOC_READ, 0x02, std::mem::size_of::<UffdioRange>());
const COPY: u64 = ioc(IOC_WRITE_READ, 0x03, std::mem::size_of::<UffdioCopy>());
const WRITEPROTECT: u64 = ioc(
    IOC_WRITE_READ,
    0x06,
    std::mem::size_of::<UffdioWriteprotect>(),
);
const CONTINUE: u64 = ioc(IOC_WRITE_READ, 0x07, std::mem::size_of::<UffdioContinue>());

const _: () = assert!(WRITEPROTECT == 0xC018_AA06);
const _: () = assert!(API == 0xC018_AA3F);

/// A userfaultfd, set up for a shared-memory (memfd) range with missing,
/// minor and write-protect faults.
pub(crate) struct Uffd {
    fd: OwnedFd,
    /// Whether faults taken in kernel mode are delivered too.
    pub(crate) kernel_faults: bool,
    /// Whether write-protect faults are resolved by the kernel
    /// ([`FEATURE_WP_ASYNC`]).
    pub(crate) wp_async: bool,
}

/// Everything a mapping needs from the kernel's userfaultfd.
pub(crate) const FEATURES_REQUIRED: u64 = FEATURE_PAGEFAULT_FLAG_WP
    | FEATURE_MISSING_SHMEM
    | FEATURE_THREAD_ID
    | FEATURE_MINOR_SHMEM
    | FEATURE_WP_HUGETLBFS_SHMEM;

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn unprivileged_setting() -> String {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .map(|value| value.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Uffd {
    /// Opens a userfaultfd as `mode` asks and enables the features a
    /// mapping needs, or says which setting or kernel version is missing.
    /// With `wp_async`, write-protect faults are resolved by the kernel if
    /// it can (see [`Uffd::wp_async`]).
    pub(crate) fn open(mode: FaultMode, wp_async: bool) -> Result<Uffd, String> {
        let required = if mode.on_faulting_thread() {
            if !cfg!(target_arch = "x86_64") {
                return Err(
                    "serving faults on the faulting thread (FaultMode::Signal) needs \
                            x86-64; map with FaultMode::Auto"
                        .into(),
                );
            }
            FEATURES_REQUIRED | FEATURE_SIGBUS
        } else {
            FEATURES_REQUIRED
        };
        if wp_async && let Ok(uffd) = Uffd::open_with(mode, required | FEATURE_WP_ASYNC) {
            return Ok(uffd);
        }
        Uffd::open_with(mode, required)
    }

    fn open_with(mode: FaultMode, features: u64) -> Result<Uffd, String> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let syscall = |extra: libc::c_int| -> Result<OwnedFd, i32> {
            // SAFETY: userfaultfd(2) takes flags and returns a new fd.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | extra) };
            if fd < 0 {
                Err(errno())
            } else {
                // SAFETY: a new fd this call owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
            }
        };
        let device = || -> Result<OwnedFd, String> {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/userfaultfd")
                .map_err(|error| format!("/dev/userfaultfd: {error}"))?;
            // SAFETY: USERFAULTFD_IOC_NEW takes the new fd's flags and
            // returns it.
            let fd = unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    USERFAULTFD_IOC_NEW as _,
                    flags as libc::c_int,
                )
            };
            if fd < 0 {
                return Err(format!(
                    "/dev/userfaultfd: {}",
                    io::Error::from_raw_os_error(errno())
                ));
            }
            // SAFETY: a new fd this call owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let all_faults = || -> Result<OwnedFd, String> {
            match syscall(0) {
                Ok(fd) => Ok(fd),
                Err(code) if code == libc::ENOSYS => {
                    Err("this kernel has no userfaultfd (CONFIG_USERFAULTFD)".into())
                }
                Err(code) => device().map_err(|device_error| {
                    format!(
                        "userfaultfd for kernel-mode faults is not allowed to this process \
                         ({}; {device_error}): set the sysctl vm.unprivileged_userfaultfd=1 \
                         (now {}), give the process CAP_SYS_PTRACE, or make /dev/userfaultfd \
                         readable and writable by its user; or map with \
                         FaultMode::UserModeOnly",
                        io::Error::from_raw_os_error(code),
                        unprivileged_setting()
                    )
                }),
            }
        };
        let user_only = || -> Result<OwnedFd, String> {
            syscall(UFFD_USER_MODE_ONLY).map_err(|code| {
                format!(
                    "userfaultfd(UFFD_USER_MODE_ONLY) failed: {} (Linux 5.11 or later \
                     allows it without privileges; with vm.unprivileged_userfaultfd = {} \
                     an older kernel needs CAP_SYS_PTRACE)",
                    io::Error::from_raw_os_error(code),
                    unprivileged_setting()
                )
            })
        };
        let (fd, kernel_faults) = match mode {
            FaultMode::AllFaults => (all_faults()?, true),
            FaultMode::UserModeOnly | FaultMode::Signal => (user_only()?, false),
            FaultMode::Auto => match all_faults() {
                Ok(fd) => (fd, true),
                Err(all_error) => (
                    user_only().map_err(|user_error| format!("{all_error}; {user_error}"))?,
                    false,
                ),
            },
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes the structure given.
        if unsafe { libc::ioctl(fd.as_raw_fd(), API as _, &mut api) } != 0 {
            return Err(format!(
                "this kernel's userfaultfd lacks what a mapping needs (write-protect and \
                 minor faults on shared memory, Linux 5.19 or later): UFFDIO_API: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(Uffd {
            fd,
            kernel_faults,
            wp_async: features & FEATURE_WP_ASYNC != 0,
        })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Registers `[start, start + len)` for missing, minor and
    /// write-protect faults.
    pub(crate) fn register(&self, start: *mut u8, len: usize) -> io::Result<()> {
        let mut register = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: REGISTER_MODE_MISSING | REGISTER_MODE_WP | REGISTER_MODE_MINOR,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes the structure given.
        check(unsafe { libc::ioctl(self.raw(), REGISTER as _, &mut register) })
    }

    /// Installs a copy of the page at `source` at `dst` (a missing page),
    /// write-protected if `protect`, and wakes the threads waiting on it.
    /// `EEXIST` (the page is there already) is success.
    pub(crate) fn copy(
        &self,
        dst: *mut u8,
        source: *const u8,
        len: usize,
        protect: bool,
    ) -> io::Result<()> {
        let mut copy = UffdioCopy {
            dst: dst as u64,
            src: source as u64,
            len: len as u64,
            mode: if protect { COPY_MODE_WP } else { 0 },
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads `len` bytes at `source`, a live buffer.
        let result = check(unsafe { libc::ioctl(self.raw(), COPY as _, &mut copy) });
        match result {
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) => self.wake(dst, len),
            other => other,
        }
    }

    /// Maps the shared-memory pages already in the page cache at `start`
    /// (a minor fault), write-protected if `protect`, and wakes the
    /// threads waiting on them. `EEXIST` (mapped already) is success.
    pub(crate) fn continue_range(
        &self,
        start: *mut u8,
        len: usize,
        protect: bool,
    ) -> io::Result<()> {
        let mut request = UffdioContinue {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: if protect { CONTINUE_MODE_WP } else { 0 },
            mapped: 0,
        };
        // SAFETY: UFFDIO_CONTINUE reads and writes the structure given.
        let result = check(unsafe { libc::ioctl(self.raw(), CONTINUE as _, &mut request) });
        match result {
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) => self.wake(start, len),
            other => other,
        }
    }

    /// Sets (`protect`) or clears write protection of a range; clearing
    /// wakes the threads waiting on it.
    pub(crate) fn write_protect(
        &self,
        start: *mut u8,
        len: usize,
        protect: bool,
    ) -> io::Result<()> {
        let mut request = UffdioWriteprotect {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: if protect { WRITEPROTECT_MODE_WP } else { 0 },
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads the structure given.
        check(unsafe { libc::ioctl(self.raw(), WRITEPROTECT as _, &mut request) })
    }

    /// Wakes the threads waiting on a range (their fault is retried).
    pub(crate) fn wake(&self, start: *mut u8, len: usize) -> io::Result<()> {
        let mut range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_WAKE reads the structure given.
        check(unsafe { libc::ioctl(self.raw(), WAKE as _, &mut range) })
    }

    /// Reads the messages waiting, without blocking; an empty result means
    /// none was.
    pub(crate) fn read(&self, messages: &mut [Message]) -> io::Result<usize> {
        let bytes = std::mem::size_of_val(messages);
        // SAFETY: reads at most `bytes` into the messages' memory; any
        // byte pattern is a valid `Message`.
        let read = unsafe { libc::read(self.raw(), messages.as_mut_ptr().cast(), bytes) };
        if read < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(error),
            };
        }
        Ok(read as usize / std::mem::size_of::<Message>())
    }
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `PAGEMAP_SCAN` on `/proc/self/pagemap` (Linux 6.7): the pages of a
/// range written since they were last write-protected (`PAGE_IS_WRITTEN`,
/// under `UFFD_FEATURE_WP_ASYNC`), write-protected again in the same call
/// (`PM_SCAN_WP_MATCHING`).
pub(crate) struct Pagemap {
    fd: OwnedFd,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGEMAP_SCAN: u64 =
    (IOC_WRITE_READ << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | (0x66 << 8) | 16;
const _: () = assert!(PAGEMAP_SCAN == 0xC060_6610);

impl Pagemap {
    pub(crate) fn open() -> io::Result<Pagemap> {
        let file = std::fs::File::open("/proc/self/pagemap")?;
        Ok(Pagemap { fd: file.into() })
    }

    /// Calls `written(start, end)` for each run of pages in `[start, end)`
    /// written since they were last protected, after protecting them
    /// again.
    pub(crate) fn take_written(
        &self,
        start: *mut u8,
        end: *mut u8,
        mut written: impl FnMut(usize, usize),
    ) -> io::Result<()> {
        let mut regions = [PageRegion::default(); 64];
        let mut from = start as u64;
        let end = end as u64;
        while from < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start: from,
                end,
                walk_end: 0,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: PAGE_IS_WRITTEN,
                category_anyof_mask: 0,
                return_mask: PAGE_IS_WRITTEN,
            };
            // SAFETY: PAGEMAP_SCAN reads the argument and writes at most
            // `vec_len` regions into `regions`.
            let found = unsafe { libc::ioctl(self.fd.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
            if found < 0 {
                return Err(io::Error::last_os_error());
            }
            for region in &regions[..found as usize] {
                written(region.start as usize, region.end as usize);
            }
            if arg.walk_end <= from {
                break;
            }
            from = arg.walk_end;
        }
        Ok(())
    }
}
