//! The only module that touches packet memory.

use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use detector_common::packet::PacketBytes;

/// A frame the programs can parse, measure and copy out.
pub trait Frame: PacketBytes {
    /// Length on the wire.
    fn wire_len(&self) -> u32;
    /// Copies the first `len` bytes (1..=`dst` capacity) to `dst`.
    fn copy_to(&self, dst: *mut u8, len: u32) -> bool;
}

/// Direct packet access between `start` and `end`.
#[derive(Clone, Copy)]
pub struct Bounds {
    start: usize,
    end: usize,
}

impl PacketBytes for Bounds {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let ptr = self.start + offset;
        if ptr + N > self.end {
            return None;
        }
        // SAFETY: the verifier-visible check above keeps [ptr, ptr + N) inside
        // the packet; [u8; N] has alignment 1.
        Some(unsafe { *(ptr as *const [u8; N]) })
    }
}

pub struct Xdp<'a> {
    ctx: &'a XdpContext,
    bounds: Bounds,
}

impl<'a> Xdp<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext) -> Self {
        Self { ctx, bounds: Bounds { start: ctx.data(), end: ctx.data_end() } }
    }
}

impl PacketBytes for Xdp<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.bounds.read(offset)
    }
}

impl Frame for Xdp<'_> {
    #[inline(always)]
    fn wire_len(&self) -> u32 {
        (self.bounds.end - self.bounds.start) as u32
    }

    #[inline(always)]
    fn copy_to(&self, dst: *mut u8, len: u32) -> bool {
        // SAFETY: dst holds at least `len` bytes (the caller's ring buffer slot).
        unsafe { bpf_xdp_load_bytes(self.ctx.as_ptr().cast(), 0, dst.cast(), len) == 0 }
    }
}

pub struct Tc<'a> {
    ctx: &'a TcContext,
    bounds: Bounds,
}

impl<'a> Tc<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a TcContext) -> Self {
        Self { ctx, bounds: Bounds { start: ctx.data(), end: ctx.data_end() } }
    }
}

impl PacketBytes for Tc<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.bounds.read(offset)
    }
}

impl Frame for Tc<'_> {
    #[inline(always)]
    fn wire_len(&self) -> u32 {
        self.ctx.len()
    }

    #[inline(always)]
    fn copy_to(&self, dst: *mut u8, len: u32) -> bool {
        // bpf_skb_load_bytes also reads the non-linear part of the skb.
        // SAFETY: dst holds at least `len` bytes.
        unsafe { bpf_skb_load_bytes(self.ctx.as_ptr().cast(), 0, dst.cast(), len) == 0 }
    }
}
