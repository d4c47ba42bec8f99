//! The commit path's steady state allocates nothing: micro-journals, their records and
//! buffers come back through the free list.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pagoda_journal::{Journal, JournalOptions};

/// Counts the allocations made by the current thread.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Guards against: an allocation per commit (a fresh buffer, record or list node) where
/// the free list should have supplied one.
#[test]
fn steady_state_commits_do_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let data = [0x5Au8; 64];
    let page = [0xA5u8; 4096];
    let round = |commits: u64| {
        for index in 0..commits {
            let mut micro_journal = journal.begin();
            micro_journal.push(1, index * 64, &data);
            micro_journal.push(2, index * 4096, &page);
            let id = journal.commit(micro_journal).unwrap().id;
            journal.release_through(id).unwrap();
        }
    };
    round(20);
    let before = allocations();
    round(100);
    let allocated = allocations() - before;
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in 100 steady-state commits"
    );
}
