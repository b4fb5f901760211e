//! Command-line interface (clap derive types only; `main` dispatches).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::{capture::XdpAttachMode, config::PortRange};

/// Kernel-accelerated media-loss detector for VoIP media servers.
#[derive(Debug, Parser)]
#[command(name = "detector", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to an interface and track every RTP flow (needs root).
    Agent(AgentArgs),
    /// List the live flows of a running agent.
    Flows(FlowsArgs),
    /// Analyse a pcap/pcapng capture with the same logic as the kernel.
    Analyze(AnalyzeArgs),
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Interface to monitor (XDP on its ingress, TC on its egress).
    #[arg(long, short = 'i')]
    pub iface: String,
    /// XDP attach mode: drv (native, fastest) or skb (generic, works everywhere).
    #[arg(long, value_enum, default_value = "drv")]
    pub xdp_mode: XdpAttachMode,
    /// UDP ports (either end) tracked as RTP, LO-HI.
    #[arg(long, default_value = "10000-60000", value_parser = parse_range)]
    pub rtp_ports: PortRange,
    /// SIP port copied to userspace (repeatable, up to 8).
    #[arg(long = "sip-port", default_values_t = [5060])]
    pub sip_ports: Vec<u16>,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:9477")]
    pub listen: SocketAddr,
    /// How often the flow map is read (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Flows silent this long are dropped from the map and the view.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub flow_idle_timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Print the agent's JSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's API address.
    #[arg(long, default_value = crate::client::DEFAULT_AGENT, env = "DETECTOR_AGENT")]
    pub agent: String,
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The capture (pcap or pcapng).
    pub file: PathBuf,
    /// Print JSON (`{"streams": [...]}`).
    #[arg(long)]
    pub json: bool,
    /// Only these UDP ports are RTP, LO-HI (default: every port, confirmed by
    /// sequence numbers or SDP, as Wireshark's heuristic does).
    #[arg(long, value_parser = parse_range)]
    pub rtp_ports: Option<PortRange>,
    /// SIP port (repeatable; SIP on other ports is recognised by content).
    #[arg(long = "sip-port", default_values_t = [5060])]
    pub sip_ports: Vec<u16>,
}

fn parse_range(s: &str) -> Result<PortRange, String> {
    s.parse()
        .map_err(|e: crate::config::ConfigError| e.to_string())
}
