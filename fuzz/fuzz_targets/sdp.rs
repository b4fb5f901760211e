//! The SDP parser and the H.248 SDP finder must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(sdp) = detector_user::sip::sdp::parse(text) {
            for m in &sdp.media {
                let _ = (sdp.address_of(m), sdp.direction_of(m), sdp.is_hold_address(m), m.is_rtp());
            }
        }
    }
    for block in detector_user::sip::sdp::megaco_sdp_blocks(data) {
        let _ = detector_user::sip::sdp::parse(block);
    }
});
