//! Shared between the eBPF programs (`no_std`, no allocation) and userspace.
//!
//! Everything that needs no packet context lives here as pure functions so it
//! is unit-tested on the host and runs identically in the kernel and in
//! `detector analyze`.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod config;
pub mod counters;
pub mod emodel;
pub mod flow;
pub mod jitter;
pub mod packet;
pub mod rtcp;
pub mod rtp;
pub mod seq;
pub mod sip;

/// The version of what the kernel's maps hold. Bumped whenever a shared
/// type's fields change meaning, even at the same size (padding put to
/// use): a restarted agent adopts pinned maps only of its own version.
pub const MAP_LAYOUT_VERSION: u32 = 3;

/// Asserts at compile time that a kernel/userspace shared type has the size
/// the other side expects (no hidden padding crept in).
#[macro_export]
macro_rules! assert_size {
    ($t:ty, $size:expr) => {
        const _: () = assert!(::core::mem::size_of::<$t>() == $size);
    };
}
