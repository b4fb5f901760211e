//! The two atomic instructions the flow table's slot claims need. Rust's
//! bpf target offers no compare-and-swap (it assumes the oldest instruction
//! set), so they are written as the instructions themselves (BPF ISA v3,
//! kernels since 5.12; both are fully ordered).

/// Sets `*word` to `new` if it is `old`; true if it did.
///
/// # Safety
/// `word` must be valid and 8-aligned.
#[inline(always)]
pub unsafe fn compare_and_swap(word: *mut u64, old: u64, new: u64) -> bool {
    let mut r0 = old;
    // SAFETY: the caller vouches for the pointer; cmpxchg reads and writes
    // only those 8 bytes and r0.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({word} + 0, r0, {new})",
            word = in(reg) word,
            new = in(reg) new,
            inout("r0") r0,
        );
    }
    r0 == old
}

/// Stores `value` into `*word` atomically, with full ordering: every store
/// before it is visible to whoever sees `value`.
///
/// # Safety
/// `word` must be valid and 8-aligned.
#[inline(always)]
pub unsafe fn publish(word: *mut u64, value: u64) {
    let mut v = value;
    // SAFETY: as above.
    unsafe {
        core::arch::asm!(
            "{v} = xchg_64({word} + 0, {v})",
            word = in(reg) word,
            v = inout(reg) v,
        );
    }
    let _previous = v;
}
