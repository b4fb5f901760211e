//! SIP packets copied from the kernel to userspace through a ring buffer.

pub const SIP_RING_MAP: &str = "SIP_RING";
/// Ring buffer size (a power of two and a multiple of the page size).
pub const SIP_RING_BYTES: u32 = 8 << 20;
/// Bytes of each frame copied, from the start of the Ethernet header: the
/// largest UDP SIP message plus headers fits; longer ones are cut and counted.
pub const SIP_SNAPLEN: usize = 4056;

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
    pub data: [u8; SIP_SNAPLEN],
}
crate::assert_size!(SipFrame, 4080);

#[cfg(feature = "user")]
unsafe impl aya::Pod for SipFrame {}
