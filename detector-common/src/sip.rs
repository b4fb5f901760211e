//! SIP packets copied from the kernel to userspace through a ring buffer.

pub const SIP_RING_MAP: &str = "SIP_RING";
/// Ring buffer size (a power of two and a multiple of the page size).
pub const SIP_RING_BYTES: u32 = 8 << 20;
/// Room for frame bytes in each ring entry.
pub const SIP_DATA_LEN: usize = 4096;
/// Bytes of each frame copied, from the start of the Ethernet header: a
/// full-MTU SIP datagram fits; longer ones (GRO, jumbo) are cut and counted.
/// One less than a power of two so the kernel can bound the copy length with
/// a mask the verifier understands.
pub const SIP_SNAPLEN: u32 = (SIP_DATA_LEN - 1) as u32;

/// One captured frame. Userspace parses it with the same parser as the
/// offline analyser.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SipFrame {
    /// `bpf_ktime_get_ns` at capture.
    pub ts_ns: u64,
    /// The frame's length on the wire.
    pub wire_len: u32,
    /// Bytes of `data` that are valid.
    pub captured_len: u32,
    /// `counters::HOOK_*`.
    pub hook: u8,
    pub _pad: [u8; 7],
    pub data: [u8; SIP_DATA_LEN],
}
crate::assert_size!(SipFrame, 4120);

#[cfg(feature = "user")]
unsafe impl aya::Pod for SipFrame {}
