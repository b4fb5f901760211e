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
    /// List the calls of a running agent (up now and recently ended).
    Calls(CallsArgs),
    /// One call in detail: per-direction figures and the flag timeline.
    Call(CallArgs),
    /// The agent: interface, XDP mode, programs, map usage, drops, uptime.
    Status(StatusArgs),
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
    /// Address of the HTTP API (calls, flows, metrics).
    #[arg(long, default_value = "127.0.0.1:9477")]
    pub listen: SocketAddr,
    /// Also serve /metrics (only) on this address, e.g. 0.0.0.0:9478 for
    /// Prometheus, while the API with call data stays on --listen.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// How often the flow map is read (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Flows silent this long are dropped from the map and the view.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub flow_idle_timeout: Duration,
    /// Dialogs with no SIP this long end as "ended without BYE" (twice
    /// Session-Expires instead, when the dialog announced one).
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    pub max_dialog_age: Duration,
    /// Append one JSON line per ended call to this file.
    #[arg(long)]
    pub calls_log: Option<PathBuf>,
    #[command(flatten)]
    pub detect: DetectArgs,
}

/// Detection thresholds (agent and analyze alike).
#[derive(Debug, Clone, clap::Args)]
pub struct DetectArgs {
    /// Silence after which a continuous stream's direction is flagged.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub silence_timeout: Duration,
    /// The same for streams that have shown silence suppression (VAD, DTX,
    /// comfort noise).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub vad_silence_timeout: Duration,
    /// The same for a direction the SDP says should not send (hold,
    /// sendonly/recvonly, inactive).
    #[arg(long, default_value = "3600s", value_parser = humantime::parse_duration)]
    pub hold_timeout: Duration,
    /// Loss (percent of expected packets) over the window that raises a flag.
    #[arg(long, default_value_t = 5.0, value_parser = parse_percent)]
    pub loss_threshold: f64,
    /// The sliding window loss is measured over.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub loss_window: Duration,
    /// Packets that must be expected in the window before loss counts.
    #[arg(long, default_value_t = 100)]
    pub loss_min_expected: u64,
}

impl DetectArgs {
    pub fn config(&self) -> crate::detect::DetectConfig {
        crate::detect::DetectConfig {
            silence_timeout_s: self.silence_timeout.as_secs_f64(),
            vad_silence_timeout_s: self.vad_silence_timeout.as_secs_f64(),
            hold_timeout_s: self.hold_timeout.as_secs_f64(),
            loss_threshold: self.loss_threshold / 100.0,
            loss_window_s: self.loss_window.as_secs_f64(),
            loss_min_expected: self.loss_min_expected,
        }
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if (0.0..=100.0).contains(&v) && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{s} is outside 0-100 %"))
    }
}

#[derive(Debug, clap::Args)]
pub struct CallsArgs {
    /// Only calls with a flag still open.
    #[arg(long)]
    pub flagged: bool,
    /// Refresh every 2 s until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Print the agent's JSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's API address.
    #[arg(long, default_value = crate::client::DEFAULT_AGENT, env = "DETECTOR_AGENT")]
    pub agent: String,
}

#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Only flows of calls with an open flag.
    #[arg(long)]
    pub flagged: bool,
    /// Only flows of this call.
    #[arg(long)]
    pub call: Option<String>,
    /// Order by loss, silence or jitter (worst first).
    #[arg(long, value_enum)]
    pub sort: Option<crate::client::FlowSort>,
    /// Refresh every 2 s until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Print the agent's JSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's API address.
    #[arg(long, default_value = crate::client::DEFAULT_AGENT, env = "DETECTOR_AGENT")]
    pub agent: String,
}

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The Call-ID.
    pub call_id: String,
    /// Print the agent's JSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's API address.
    #[arg(long, default_value = crate::client::DEFAULT_AGENT, env = "DETECTOR_AGENT")]
    pub agent: String,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
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
    /// How often detection runs, in capture time (as the agent polls).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    #[command(flatten)]
    pub detect: DetectArgs,
}

fn parse_range(s: &str) -> Result<PortRange, String> {
    s.parse()
        .map_err(|e: crate::config::ConfigError| e.to_string())
}
