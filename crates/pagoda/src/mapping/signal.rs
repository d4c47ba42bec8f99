//! Faults served on the faulting thread ([`FaultMode::Signal`]).
//!
//! With `UFFD_FEATURE_SIGBUS` the kernel queues no message for a fault in a
//! registered range: it sends the faulting thread `SIGBUS`. The handler
//! below finds the mapping holding the address, serves the fault there (the
//! same steps a fault thread takes) and returns; the access is retried and
//! finds its page. A fault thread's way costs two thread wakeups per fault
//! (the fault thread's, then the faulting thread's); this one costs a
//! signal's delivery and return.
//!
//! The handler is the process's `SIGBUS` handler from the first such
//! mapping on. A `SIGBUS` that is not a fault of a mapping (another
//! address, a signal sent by `kill`), and a fault no mapping could serve,
//! go to the handler it replaced, or end the process as the default action
//! would.
//!
//! [`FaultMode::Signal`]: super::FaultMode::Signal

use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

use parking_lot::{Mutex, RwLock};

use super::{Access, Fault, Shared, THIS_THREAD};

/// The mappings served here, looked up by address.
static MAPPINGS: RwLock<Vec<Arc<Shared>>> = RwLock::new(Vec::new());
/// The `SIGBUS` action the handler replaced; null until it is installed.
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
/// Whether the handler is installed; held while it is being installed.
static INSTALLING: Mutex<bool> = Mutex::new(false);

/// Makes the handler the process's `SIGBUS` handler (once per process) and
/// serves `shared`'s faults from now on.
pub(super) fn register(shared: Arc<Shared>) -> std::io::Result<()> {
    install()?;
    MAPPINGS.write().push(shared);
    Ok(())
}

/// Stops serving `shared`'s faults (the handler stays installed).
pub(super) fn unregister(shared: &Arc<Shared>) {
    MAPPINGS.write().retain(|other| !Arc::ptr_eq(other, shared));
}

/// Installs the handler the first time it is called. Not again if the
/// application replaced it since: a handler installed after this one is
/// expected to pass on what it does not handle to this one, and installing
/// this one over it would make each pass the other's signals back and
/// forth.
fn install() -> std::io::Result<()> {
    let mut installed = INSTALLING.lock();
    if *installed {
        return Ok(());
    }
    // SAFETY: reads the current action into a zeroed structure.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: sigaction with a null new action only reads.
    if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut current) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed sigaction is a valid start; every field used is set.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigbus as *const () as usize;
    // Every other signal waits while a fault is served: a signal handler
    // that ran in the middle of it and touched the mapping, or flushed it,
    // would wait for what its own thread holds.
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: fills the mask of a structure this function owns.
    unsafe { libc::sigfillset(&mut action.sa_mask) };
    // Set before the handler is in place, which may pass a signal on at
    // once; kept for good, as a handler on another thread may be reading it.
    // (A failed install leaves its copy behind: never freed, as a handler
    // may still read it.)
    PREVIOUS.store(Box::into_raw(Box::new(current)), Ordering::Release);
    // SAFETY: installs a handler that is async-signal-safe for the faults
    // it serves (see the module documentation of `mapping`).
    if unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    *installed = true;
    Ok(())
}

/// Whether the faulting access was a store: bit 1 of the page fault's
/// error code, which the kernel puts in the signal's context.
///
/// # Safety
///
/// `context` is the `ucontext_t` the kernel gave the handler.
#[cfg(target_arch = "x86_64")]
unsafe fn store(context: *mut libc::c_void) -> bool {
    const PAGE_FAULT_WRITE: libc::greg_t = 1 << 1;
    // SAFETY: the caller's promise.
    let context = unsafe { &*(context as *const libc::ucontext_t) };
    context.uc_mcontext.gregs[libc::REG_ERR as usize] & PAGE_FAULT_WRITE != 0
}

/// Never called: [`FaultMode::Signal`](super::FaultMode::Signal) is refused
/// on other architectures.
///
/// # Safety
///
/// None needed.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn store(_context: *mut libc::c_void) -> bool {
    true
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: errno of this thread, restored before returning: the code
    // interrupted may read it after the access that faulted.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel's siginfo for this signal.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // A fault (the kernel's code is positive), not a signal sent.
    let found = if code > 0 {
        MAPPINGS
            .read()
            .iter()
            .find(|shared| shared.contains(address))
            .cloned()
    } else {
        None
    };
    let served = found.is_some_and(|shared| {
        // SAFETY: the context the kernel gave this handler.
        let access = if unsafe { store(context) } {
            Access::Write
        } else {
            Access::Read
        };
        shared.fault(&Fault {
            // As a fault thread is told it: the page's first byte.
            address: address & !(shared.os_page - 1),
            access,
            write_protect: None,
            thread: THIS_THREAD,
        })
    });
    if !served {
        pass_on(signal, info, context);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Gives the signal to the action the handler replaced: a signal sent
/// (by `kill`) is ignored if that action was to ignore it; for the default
/// action (or "ignore" of a fault, which the kernel does not honour) the
/// default is restored and the signal raised again, so the process ends
/// by `SIGBUS` as it would have without a mapping.
fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let previous = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: set once before the handler was installed and never freed.
    let previous = unsafe { previous.as_ref() };
    let handler = previous.map_or(libc::SIG_DFL, |action| action.sa_sigaction);
    // SAFETY: the kernel's siginfo for this signal.
    let sent = unsafe { (*info).si_code } <= 0;
    if handler == libc::SIG_IGN && sent {
        // Ignored, as it was before the mapping's handler.
        return;
    }
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: a zeroed sigaction with SIG_DFL is the default action.
        let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
        default.sa_sigaction = libc::SIG_DFL;
        // SAFETY: restores the default action and raises the signal, which
        // is blocked until this handler returns (a fault is taken again
        // then anyway).
        unsafe {
            libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
            libc::raise(signal);
        }
        return;
    }
    let flags = previous.map_or(0, |action| action.sa_flags);
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous action's handler, of the three-argument kind
        // its flags say, given this signal's arguments.
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        handler(signal, info, context);
    } else {
        // SAFETY: the previous action's one-argument handler.
        let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        handler(signal);
    }
}
