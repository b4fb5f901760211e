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
    probe_slot, FlowKey, FlowSlot, FlowStats, FlowTableLayout, FLOW_PROBES, SLOT_FREE, SLOT_LIVE,
};

pub struct SlotTable {
    base: NonNull<FlowSlot>,
    mapped_len: usize,
    /// The map's entries.
    slots: u32,
    /// What keys are hashed with (the kernel's `flow_table_size`).
    capacity: u32,
}

// SAFETY: the mapping is shared memory accessed only through atomics and
// volatile reads; the handle itself can move and be shared between threads.
unsafe impl Send for SlotTable {}
unsafe impl Sync for SlotTable {}

impl SlotTable {
    /// Maps the flow table, an array created for `layout`.
    pub fn map(map: &MapData, layout: &FlowTableLayout) -> io::Result<Self> {
        let entries = map.info().map_err(io::Error::other)?.max_entries();
        if entries != layout.slots {
            return Err(io::Error::other(format!(
                "the flow table has {entries} slots, not the {} it was created with",
                layout.slots
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = std::mem::size_of::<FlowSlot>() * layout.slots as usize;
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
        Ok(Self {
            base,
            mapped_len,
            slots: layout.slots,
            capacity: layout.capacity,
        })
    }

    fn slot(&self, index: u32) -> *mut FlowSlot {
        assert!(index < self.slots, "slot {index} of {}", self.slots);
        // SAFETY: index < self.slots, inside the mapping.
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
        (0..self.slots).filter_map(|i| self.live(i).map(|s| (s.key, s.stats)))
    }

    /// How many slots hold a live flow (reads only their state words).
    pub fn live_count(&self) -> usize {
        (0..self.slots)
            .filter(|&i| self.state(i).load(Ordering::Relaxed) == SLOT_LIVE)
            .count()
    }

    /// The slots of `key`'s probe window, as the kernel probes them.
    fn window(&self, key: &FlowKey) -> impl Iterator<Item = u32> {
        let hash = key.slot_hash(self.capacity);
        (0..FLOW_PROBES).map(move |p| probe_slot(hash, p))
    }

    /// `key`'s flow has a live slot.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.window(key)
            .any(|i| self.live(i).is_some_and(|s| s.key.same(key)))
    }

    /// Frees the slot of `key`'s flow; false if it has none.
    pub fn free(&self, key: &FlowKey) -> bool {
        self.window(key).any(|i| {
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
