//! The only module that touches packet memory.

use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use detector_common::packet::{Header, PacketBytes};

/// A frame the programs can parse, measure and copy out.
pub trait Frame: PacketBytes {
    /// Length on the wire.
    fn wire_len(&self) -> u32;
    /// Copies the first `len` bytes (1..=`dst` capacity) to `dst`.
    fn copy_to(&self, dst: *mut u8, len: u32) -> bool;
    /// Benchmark only: see [`Bounds::advance_rtp`].
    fn advance_rtp(&self, offset: usize, ticks: u32);
}

/// Direct packet access between `start` and `end`.
#[derive(Clone, Copy)]
pub struct Bounds {
    start: usize,
    end: usize,
}

impl Bounds {
    /// The address of `offset` if `N` bytes there are inside the packet.
    ///
    /// The verifier tracks which bytes are known to be inside the packet per
    /// pointer register, so the check and the load must use the same one.
    /// LLVM does not know that: it drops a check an earlier, wider one
    /// implies and recomputes the address from another register
    /// (`(start + 4) + offset` instead of `(start + offset) + 4`). Passing
    /// the address through a register move in asm makes it opaque, so each
    /// read is checked and loaded through one register. (The move is needed:
    /// an empty asm statement leaves a BTF line record without an
    /// instruction, which the kernel refuses.)
    #[inline(always)]
    fn at<const N: usize>(&self, offset: usize) -> Option<usize> {
        let mut ptr = self.start + offset;
        // SAFETY: a register move to itself; only hides the value's origin
        // from LLVM.
        unsafe {
            core::arch::asm!("{ptr} = {ptr}", ptr = inout(reg) ptr, options(pure, nomem, nostack));
        }
        if ptr + N > self.end {
            return None;
        }
        Some(ptr)
    }
}

/// One load instruction of `$width` bytes. Rust can only read a packet's
/// u16 and u32 fields (which need not be aligned) as bytes, one load per
/// byte; the BPF instruction set loads them unaligned in one, which the
/// verifier allows for packet pointers where the CPU handles it (x86-64,
/// arm64), and does it here.
macro_rules! load {
    ($ptr:expr, $width:literal) => {{
        let value: u64;
        // SAFETY: the caller checked [ptr, ptr + width) is inside the packet.
        unsafe {
            core::arch::asm!(
                concat!("{value} = *(u", $width, " *)({ptr} + 0)"),
                ptr = in(reg) $ptr,
                value = out(reg) value,
                options(readonly, nostack),
            );
        }
        value
    }};
}

/// A header of `N` bytes whose address was checked against the packet's
/// end: its fields are loaded at constant offsets from that one register,
/// as the verifier requires.
#[derive(Clone, Copy)]
pub struct PacketHeader<const N: usize> {
    ptr: usize,
}

impl<const N: usize> Header for PacketHeader<N> {
    #[inline(always)]
    fn u8_at(&self, at: usize) -> u8 {
        load!(self.ptr + at, 8) as u8
    }

    #[inline(always)]
    fn be16_at(&self, at: usize) -> u16 {
        u16::from_be(load!(self.ptr + at, 16) as u16)
    }

    #[inline(always)]
    fn be32_at(&self, at: usize) -> u32 {
        u32::from_be(load!(self.ptr + at, 32) as u32)
    }

    #[inline(always)]
    fn quad_at(&self, at: usize) -> [u8; 4] {
        (load!(self.ptr + at, 32) as u32).to_ne_bytes()
    }
}

impl PacketBytes for Bounds {
    type Header<const N: usize> = PacketHeader<N>;

    #[inline(always)]
    fn header<const N: usize>(&self, offset: usize) -> Option<PacketHeader<N>> {
        self.at::<N>(offset).map(|ptr| PacketHeader { ptr })
    }
}

impl Bounds {
    /// Adds one to the sequence number and `ticks` to the timestamp of the
    /// RTP header at `offset` (for the benchmark's in-order runs).
    #[inline(always)]
    pub fn advance_rtp(&self, offset: usize, ticks: u32) {
        let Some(ptr) = self.at::<12>(offset) else {
            return;
        };
        let seq = (ptr + 2) as *mut [u8; 2];
        let timestamp = (ptr + 4) as *mut [u8; 4];
        // SAFETY: inside the packet (checked above); byte arrays have
        // alignment 1.
        unsafe {
            *seq = u16::from_be_bytes(*seq).wrapping_add(1).to_be_bytes();
            *timestamp = u32::from_be_bytes(*timestamp)
                .wrapping_add(ticks)
                .to_be_bytes();
        }
    }
}

pub struct Xdp<'a> {
    ctx: &'a XdpContext,
    bounds: Bounds,
}

impl<'a> Xdp<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext) -> Self {
        Self {
            ctx,
            bounds: Bounds {
                start: ctx.data(),
                end: ctx.data_end(),
            },
        }
    }
}

impl PacketBytes for Xdp<'_> {
    type Header<const N: usize> = PacketHeader<N>;

    #[inline(always)]
    fn header<const N: usize>(&self, offset: usize) -> Option<PacketHeader<N>> {
        self.bounds.header(offset)
    }
}

impl Frame for Xdp<'_> {
    #[inline(always)]
    fn advance_rtp(&self, offset: usize, ticks: u32) {
        self.bounds.advance_rtp(offset, ticks);
    }

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
        Self {
            ctx,
            bounds: Bounds {
                start: ctx.data(),
                end: ctx.data_end(),
            },
        }
    }
}

impl PacketBytes for Tc<'_> {
    type Header<const N: usize> = PacketHeader<N>;

    #[inline(always)]
    fn header<const N: usize>(&self, offset: usize) -> Option<PacketHeader<N>> {
        self.bounds.header(offset)
    }
}

impl Frame for Tc<'_> {
    #[inline(always)]
    fn advance_rtp(&self, offset: usize, ticks: u32) {
        self.bounds.advance_rtp(offset, ticks);
    }

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
