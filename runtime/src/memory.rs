//! Memory accounting of one isolate: the engine heap limit plus an ArrayBuffer allocator
//! that counts, since the engine's heap limit does not see ArrayBuffer contents.
//!
//! The heap is capped through the engine (`heap_limits`); ArrayBuffer backing stores go
//! through [`MemoryMeter`], which refuses an allocation that would take ArrayBuffers plus
//! the last heap sample past the limit, and trips the isolate for `memory_limit_exceeded`.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

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

    pub fn record_heap(&self, bytes: usize) {
        self.heap.store(bytes, Ordering::Relaxed);
    }

    fn reserve(&self, len: usize) -> bool {
        let heap = self.heap.load(Ordering::Relaxed);
        let mut current = self.array_buffers.load(Ordering::Relaxed);
        loop {
            if heap.saturating_add(current).saturating_add(len) > self.limit {
                self.refused.store(true, Ordering::Relaxed);
                if let Some(t) = self.tripwire.get() {
                    t.trip(Breach::Memory);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

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
