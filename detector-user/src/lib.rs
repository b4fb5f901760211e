//! The detector's userspace: agent, CLI and offline analyser.

pub mod agent;
pub mod analyze;
pub mod api;
pub mod calls;
pub mod capture;
pub mod cli;
pub mod client;
pub mod config;
pub mod correlate;
pub mod detect;
pub mod flows;
pub mod metrics;
pub mod pcap;
pub mod reassembly;
pub mod records;
pub mod sdp;
pub mod shutdown;
pub mod sip;
