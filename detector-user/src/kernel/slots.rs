//! The kernel's flow table (an mmap-able array of [`FlowSlot`]s), mapped into
//! the agent: all flows are read with plain memory reads instead of a syscall
//! per flow, and idle ones are freed with the same compare-and-swap the
//! kernel claims slots with.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;
use detector_common::flow::{
    probe_slot, FlowKey, FlowSlot, FlowStats, FLOW_PROBES, FLOW_SLOTS_CAPACITY, SLOT_FREE,
    SLOT_LIVE,
};

pub struct SlotTable {
    base: NonNull<FlowSlot>,
    mapped_len: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics and
// volatile reads; the handle itself can move and be shared between threads.
unsafe impl Send for SlotTable {}
unsafe impl Sync for SlotTable {}

impl SlotTable {
    pub fn map(map: &MapData) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = std::mem::size_of::<FlowSlot>() * FLOW_SLOTS_CAPACITY as usize;
        let mapped_len = bytes.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd; nothing else is
        // mapped at the address the kernel picks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<FlowSlot>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { base, mapped_len })
    }

    fn slot(&self, index: u32) -> *mut FlowSlot {
        debug_assert!(index < FLOW_SLOTS_CAPACITY);
        // SAFETY: index < FLOW_SLOTS_CAPACITY, inside the mapping.
        unsafe { self.base.as_ptr().add(index as usize) }
    }

    fn state(&self, index: u32) -> &AtomicU64 {
        // SAFETY: the state word is 8-aligned (array values are, and it is
        // the first field) and the kernel only touches it atomically.
        unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*self.slot(index)).state)) }
    }

    /// A copy of the slot if it holds a live flow. The kernel may be
    /// updating the figures meanwhile (it writes them without locks, as it
    /// does in the overflow map's entries too): a copy can mix two packets'
    /// updates, which the next poll corrects.
    fn live(&self, index: u32) -> Option<FlowSlot> {
        if self.state(index).load(Ordering::Acquire) != SLOT_LIVE {
            return None;
        }
        // SAFETY: inside the mapping; FlowSlot is plain integers, so any
        // bytes are a valid value.
        Some(unsafe { std::ptr::read_volatile(self.slot(index)) })
    }

    /// Every live flow.
    pub fn flows(&self) -> impl Iterator<Item = (FlowKey, FlowStats)> + '_ {
        (0..FLOW_SLOTS_CAPACITY).filter_map(|i| self.live(i).map(|s| (s.key, s.stats)))
    }

    /// Frees the slot of `key`'s flow; false if it has none.
    pub fn free(&self, key: &FlowKey) -> bool {
        let hash = key.slot_hash();
        (0..FLOW_PROBES).map(|p| probe_slot(hash, p)).any(|i| {
            self.live(i).is_some_and(|s| s.key.same(key))
                && self
                    .state(i)
                    .compare_exchange(SLOT_LIVE, SLOT_FREE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
        })
    }
}

impl Drop for SlotTable {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no references outlive self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped_len) };
    }
}
