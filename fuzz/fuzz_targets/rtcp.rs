//! The RTCP compound parser on arbitrary payloads: never a panic, and what
//! it accepts it can walk to the end, every figure from inside the payload.
#![no_main]

use detector_common::rtcp::{Compound, Packet, XrBlock};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(compound) = Compound::parse(data) else {
        return;
    };
    let mut packets = 0;
    for packet in compound.packets() {
        packets += 1;
        match packet {
            Packet::SourceDescription(chunks) => {
                for chunk in chunks {
                    for (_, value) in chunk.items() {
                        assert!(value.len() <= data.len());
                    }
                    let _ = chunk.cname();
                }
            }
            Packet::Bye(bye) => {
                assert!(bye.sources().count() * 4 <= data.len());
            }
            Packet::ExtendedReport(xr) => {
                for block in xr.blocks {
                    if let XrBlock::VoipMetrics(m) = block {
                        let _ = m.mos_lq;
                    }
                }
            }
            Packet::SenderReport(sr) => {
                let _ = sr.ntp_middle();
            }
            Packet::ReceiverReport(_) | Packet::Other { .. } => {}
        }
    }
    assert!(packets >= 1, "a valid compound has a packet");
    assert!(compound.report_blocks().count() * 24 <= data.len());
});
