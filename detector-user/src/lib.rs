//! The detector's userspace: agent, CLI and offline analyser.
//!
//! Modules by concern, each depending only on those listed before it:
//! - `sip`: SIP messages, SDP and their reassembly from fragments and TCP;
//! - `calls`: dialogs, the endpoint index that ties streams to calls,
//!   detection, call records, and the engine that owns all of it;
//! - `kernel`: loading, attaching and reading the eBPF programs' maps;
//! - `metrics`, `view`: what the agent exports and publishes for readers;
//! - `api`, `agent`: the HTTP API and the tasks that run the agent;
//! - `offline`: `detector analyze`, the same engine fed from a capture;
//! - `cli`: flags and the client commands.

pub mod agent;
pub mod api;
pub mod calls;
pub mod cli;
pub mod config;
pub mod kernel;
pub mod metrics;
pub mod offline;
pub mod shutdown;
pub mod sip;
pub mod view;

/// This build's version: the package's, with the label the build was given
/// in `DETECTOR_BUILD_LABEL` (a commit, a package revision), so that two
/// builds of one version tell apart in `detector status` and
/// `detector_build_info` (an upgrade shows as a new version).
pub fn version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| match option_env!("DETECTOR_BUILD_LABEL") {
            Some(label) if !label.is_empty() => {
                format!("{}+{label}", env!("CARGO_PKG_VERSION"))
            }
            _ => env!("CARGO_PKG_VERSION").to_string(),
        });
    &VERSION
}
