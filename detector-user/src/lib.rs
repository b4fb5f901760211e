//! The detector's userspace: agent, CLI and offline analyser.

pub mod analyze;
pub mod flows;
pub mod pcap;
pub mod sdp;
pub mod sip;
