//! SIP message framing must never panic, and what it reports must be inside
//! the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = detector_user::sip::looks_like_sip(data);
    let mut rest = data;
    // A TCP stream may hold several messages: walk them as the agent will.
    for _ in 0..16 {
        let Ok((msg, used)) = detector_user::sip::parse_message(rest) else { break };
        assert!(used > 0 && used <= rest.len());
        let _ = msg.header("call-id");
        let _ = msg.header_values("via").count();
        if let Some(sdp) = msg.sdp_body() {
            let _ = detector_user::sip::sdp::parse(sdp);
        }
        rest = &rest[used..];
    }
});
