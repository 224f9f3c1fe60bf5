//! Memory accounting of one isolate: the engine heap limit plus an ArrayBuffer allocator
//! that counts, since the engine's heap limit does not see ArrayBuffer contents.
//!
//! The heap is capped through the engine (`heap_limits`); ArrayBuffer backing stores go
//! through [`MemoryMeter`], which refuses an allocation that would take ArrayBuffers plus
//! the last heap sample past the limit, and trips the isolate for `memory_limit_exceeded`.
//! [`HeapSampling`] says when the isolate thread takes that heap sample.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deno_core::v8;

use crate::meter::{Breach, Tripwire};

/// Counts one isolate's ArrayBuffer bytes against its memory limit.
pub struct MemoryMeter {
    limit: usize,
    array_buffers: AtomicUsize,
    /// The engine heap at the last sample (see [`Self::record_heap`]).
    heap: AtomicUsize,
    tripwire: OnceLock<Arc<Tripwire>>,
    /// Set on the first refused allocation (shared with the isolate's state).
    refused: Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryMeter {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            array_buffers: AtomicUsize::new(0),
            heap: AtomicUsize::new(0),
            tripwire: OnceLock::new(),
            refused: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Who to trip when an allocation is refused (the isolate exists only after the meter).
    pub fn set_tripwire(&self, tripwire: Arc<Tripwire>) {
        let _ = self.tripwire.set(tripwire);
    }

    /// The flag set when an allocation is refused, for the isolate's state.
    pub fn refused_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.refused.clone()
    }

    pub fn array_buffer_bytes(&self) -> usize {
        self.array_buffers.load(Ordering::Relaxed)
    }

    /// The engine heap at the last sample.
    pub fn last_heap(&self) -> usize {
        self.heap.load(Ordering::Relaxed)
    }

    pub fn record_heap(&self, bytes: usize) {
        self.heap.store(bytes, Ordering::Relaxed);
    }

    /// An allocation was refused at the limit (here, or by the engine for a WebAssembly
    /// memory): the isolate is tripped for `memory_limit_exceeded`.
    pub fn exhausted(&self) {
        self.refused.store(true, Ordering::Relaxed);
        if let Some(t) = self.tripwire.get() {
            t.trip(Breach::Memory);
        }
    }

    fn reserve(&self, len: usize) -> bool {
        let heap = self.heap.load(Ordering::Relaxed);
        let mut current = self.array_buffers.load(Ordering::Relaxed);
        loop {
            if heap.saturating_add(current).saturating_add(len) > self.limit {
                self.exhausted();
                return false;
            }
            match self.array_buffers.compare_exchange_weak(current, current + len, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    fn release(&self, len: usize) {
        self.array_buffers.fetch_sub(len, Ordering::AcqRel);
    }

    /// The engine parameters for an isolate metered by `self`.
    pub fn create_params(self: &Arc<Self>) -> v8::CreateParams {
        // SAFETY: the handle is an `Arc<MemoryMeter>` turned into a raw pointer; the vtable's
        // functions treat it as such and `drop_meter` releases it when the engine is done.
        let allocator = unsafe { v8::new_rust_allocator(Arc::into_raw(self.clone()), &VTABLE) };
        v8::CreateParams::default().heap_limits(0, self.limit).array_buffer_allocator(allocator)
    }
}

static VTABLE: v8::RustAllocatorVtable<MemoryMeter> =
    v8::RustAllocatorVtable { allocate, allocate_uninitialized, free, drop: drop_meter };

unsafe extern "C" fn allocate(meter: &MemoryMeter, len: usize) -> *mut c_void {
    if !meter.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: plain calloc; a zero-length buffer still gets a unique pointer.
    let p = unsafe { libc::calloc(len.max(1), 1) };
    if p.is_null() {
        meter.release(len);
    }
    p
}

unsafe extern "C" fn allocate_uninitialized(meter: &MemoryMeter, len: usize) -> *mut c_void {
    if !meter.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: plain malloc.
    let p = unsafe { libc::malloc(len.max(1)) };
    if p.is_null() {
        meter.release(len);
    }
    p
}

unsafe extern "C" fn free(meter: &MemoryMeter, data: *mut c_void, len: usize) {
    meter.release(len);
    // SAFETY: `data` came from `allocate` or `allocate_uninitialized` above.
    unsafe { libc::free(data) };
}

unsafe extern "C" fn drop_meter(meter: *const MemoryMeter) {
    // SAFETY: the pointer was made by `Arc::into_raw` in `create_params`.
    drop(unsafe { Arc::from_raw(meter) });
}

/// When the isolate thread walks the engine heap to sample its size (for the ArrayBuffer
/// reservations above and the heap-plus-ArrayBuffers limit). The walk is O(heap) on this
/// engine (about 10 ms for 400,000 objects), so samples are spaced to cost at most
/// 1/[`SAMPLE_SPACING`] of the isolate's CPU; within that, the heap is sampled after a stretch
/// of JS that used at least [`SAMPLE_AFTER`] of CPU and otherwise every [`SAMPLE_EVERY`] of
/// CPU: a heap only grows by running JS. The engine's own heap limit holds between samples.
#[derive(Debug, Default)]
pub struct HeapSampling {
    /// CPU the isolate used since the last sample.
    since: Duration,
    /// CPU the last sample took.
    cost: Duration,
}

pub const SAMPLE_AFTER: Duration = Duration::from_millis(1);
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
pub const SAMPLE_SPACING: u32 = 20;

impl HeapSampling {
    /// A stretch of JS used `used`: whether to sample the heap now.
    pub fn after_stretch(&mut self, used: Duration) -> bool {
        self.since += used;
        self.since >= self.cost * SAMPLE_SPACING && (used >= SAMPLE_AFTER || self.since >= SAMPLE_EVERY)
    }

    /// A sample was taken; it took `cost` of CPU.
    pub fn sampled(&mut self, cost: Duration) {
        self.since = Duration::ZERO;
        self.cost = cost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    /// How many of `stretches` stretches of `used` each are followed by a sample that costs
    /// `cost`.
    fn samples(cost: Duration, used: Duration, stretches: usize) -> usize {
        let mut s = HeapSampling::default();
        (0..stretches)
            .filter(|_| {
                let due = s.after_stretch(used);
                if due {
                    s.sampled(cost);
                }
                due
            })
            .count()
    }

    #[test]
    fn bug_a_big_heap_was_walked_after_every_request_of_a_millisecond_or_more() {
        // 400,000 objects: a 10 ms walk after each 1.5 ms request made it 12 ms (80 req/s
        // instead of 540). Now the walks take at most a twentieth of the CPU.
        let n = samples(10 * MS, 1500 * US, 1000);
        assert!(n <= 1 + 1000 * 1500 / (200 * 1000), "{n} walks of 10 ms in 1.5 s of requests");
        assert!(n >= 5, "the heap is still sampled: {n}");
    }

    #[test]
    fn a_small_heap_is_sampled_after_every_long_stretch_and_every_50_ms_of_short_ones() {
        assert_eq!(samples(20 * US, 2 * MS, 100), 100);
        assert_eq!(samples(20 * US, 50 * US, 10_000), 10);
    }

    #[test]
    fn allocations_past_the_limit_are_refused_and_freeing_gives_room_back() {
        let m = MemoryMeter::new(1000);
        m.record_heap(400);
        assert!(m.reserve(500));
        assert!(!m.reserve(200), "400 heap + 500 + 200 is over 1000");
        m.release(500);
        assert!(m.reserve(600));
        assert_eq!(m.array_buffer_bytes(), 600);
    }
}
