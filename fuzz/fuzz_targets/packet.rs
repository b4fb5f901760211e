//! The packet logic the kernel runs, on arbitrary frames: never a panic, and
//! the sequence/jitter state stays consistent whatever the headers say, and
//! the fast path agrees with the full parser.
#![no_main]

use detector_common::{
    config::DetectorConfig,
    flow::{inspect_ethernet, inspect_fast_rtp, inspect_ip, FlowStats, Inspection},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cfg = DetectorConfig::default();
    cfg.rtp_port_min = 1;
    cfg.rtp_port_max = u16::MAX;
    let watched = |_: &detector_common::flow::EndpointKey| true;
    let _ = inspect_ip(data, 0, 0, &cfg, watched);
    // Where the kernel's fast path takes a frame, it decides as the full
    // parser does (with the default port range and with all ports).
    for cfg in [DetectorConfig::default(), cfg] {
        if let Some((key, header)) = inspect_fast_rtp(data, 0, &cfg) {
            assert_eq!(
                inspect_ethernet(data, 0, &cfg, watched),
                Inspection::Rtp { key, header }
            );
        }
    }
    if let Inspection::Rtp { header, .. } = inspect_ethernet(data, 0, &cfg, watched) {
        // Feed the same header with arbitrary sequence numbers from the input.
        let mut stats = FlowStats::first_rtp(&header, data.len() as u32, 0, 8000);
        for (i, pair) in data.chunks_exact(2).enumerate() {
            let mut h = header;
            h.seq = u16::from_be_bytes([pair[0], pair[1]]);
            h.timestamp = h.timestamp.wrapping_add(u32::from(pair[0]) * 160);
            stats.record_rtp(&h, 60, (i as u64 + 1) * 20_000_000);
        }
        assert_eq!(stats.packets, data.len() as u64 / 2 + 1);
        assert!(stats.seq.duplicates as u64 + stats.seq.out_of_order as u64 <= stats.packets);
    }
});
