//! The metrics recorder keeps each histogram sample (one per HTTP request) until a scrape of
//! `/metrics` or an upkeep folds it into the buckets. A server nobody scrapes must not grow
//! for as long as it serves: `spawn_metrics_upkeep` (started by every serving replica) keeps
//! the pending samples bounded. Live heap bytes are counted by this binary's allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tollgate_authserver::http::{metrics_handle, spawn_metrics_upkeep};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: isize = 1 << 20;
const SAMPLES: usize = 500_000;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Samples of a histogram with the server's bucket configuration (`*_duration_seconds`).
fn record(n: usize) {
    let h = metrics::histogram!("tollgate_upkeep_test_duration_seconds");
    for i in 0..n {
        h.record((i % 1000) as f64 / 10_000.0);
    }
}

/// Records `SAMPLES` samples over about a second; returns the peak growth of the heap.
async fn record_for_a_second() -> isize {
    let start = live();
    let mut peak = 0;
    for _ in 0..50 {
        record(SAMPLES / 50);
        tokio::time::sleep(Duration::from_millis(25)).await;
        peak = peak.max(live() - start);
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_do_not_pile_up_between_scrapes() {
    let handle = metrics_handle();
    record(1);
    handle.run_upkeep();

    // With the upkeep task of a serving replica, pending samples stay bounded by what
    // arrives between two upkeeps.
    let task = spawn_metrics_upkeep(Duration::from_millis(20));
    let with_upkeep = record_for_a_second().await;
    task.abort();

    // Control, the same load without upkeep (what a serving replica did before the task):
    // every sample stays in the recorder, about 8 bytes per request, for ever.
    handle.run_upkeep();
    for _ in 0..20 {
        // let the memory freed by the upkeep be reclaimed before measuring
        record(1000);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let without = record_for_a_second().await;
    assert!(
        without > 2 * MIB,
        "control: {SAMPLES} samples without upkeep hold only {without} bytes"
    );
    assert!(
        with_upkeep < without / 4,
        "with the upkeep task the recorder grew by {with_upkeep} bytes ({without} without)"
    );
}
