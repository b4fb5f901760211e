//! Command-line interface: the clap types (`main` dispatches), the client
//! commands that talk to a running agent, and the tables they print.

pub mod client;
pub mod render;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::{config::PortRange, kernel::XdpAttachMode};

/// Kernel-accelerated media-loss detector for VoIP media servers.
#[derive(Debug, Parser)]
#[command(name = "detector", version = crate::version(), about)]
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
    /// Configuration file (TOML, every key in deploy/detector.toml); flags
    /// override it [default: /etc/detector/detector.toml, if present]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Interface to monitor (XDP on its ingress, TC on its egress)
    /// [default: the interface of the default route]
    #[arg(long, short = 'i')]
    pub iface: Option<String>,
    /// XDP attach mode: auto (native where the driver supports it, else
    /// generic, with a warning), drv (native only) or skb (generic only)
    /// [default: auto]
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpAttachMode>,
    /// UDP ports (either end) tracked as RTP, LO-HI [default: 10000-60000]
    #[arg(long, value_parser = parse_range)]
    pub rtp_ports: Option<PortRange>,
    /// SIP port copied to userspace (repeatable, up to 8) [default: 5060]
    #[arg(long = "sip-port")]
    pub sip_ports: Vec<u16>,
    /// Address of the HTTP API (calls, flows, metrics) [default: 127.0.0.1:9477]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Also serve /metrics (only) on this address, e.g. 0.0.0.0:9478 for
    /// Prometheus, while the API with call data stays on --listen.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// How often the flow map is read (e.g. 1s, 500ms) [default: 1s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Flows silent this long are dropped from the map and the view [default: 120s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub flow_idle_timeout: Option<Duration>,
    /// Streams the kernel's flow table holds (RTP and RTCP, each direction
    /// and leg a stream: 8 per call through a B2BUA); up to this many none
    /// fails to find a place. Takes about 400 bytes of kernel memory per
    /// stream [default: 163840, for 20,000 B2BUA calls]
    #[arg(long, value_name = "FLOWS", value_parser = parse_flow_table_size)]
    pub flow_table_size: Option<u32>,
    /// Dialogs with no SIP this long end as "ended without BYE" (twice
    /// Session-Expires instead, when the dialog announced one) [default: 4h]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_dialog_age: Option<Duration>,
    /// Append one JSON line per ended call to this file.
    #[arg(long)]
    pub calls_log: Option<PathBuf>,
    /// Where the agent journals the calls in progress, so a restarted agent
    /// resumes them [default: /var/lib/detector]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory where the programs' links and maps are pinned (one
    /// subdirectory per interface), so the kernel keeps counting through a
    /// restart [default: /sys/fs/bpf/detector]
    #[arg(long, value_name = "DIR")]
    pub bpf_pin_dir: Option<PathBuf>,
    /// Detach the programs, remove their pins and the journal of calls in
    /// progress for this interface, then exit (for uninstalling; a plain
    /// stop keeps them for the next start)
    #[arg(long)]
    pub cleanup: bool,
    #[command(flatten)]
    pub detect: DetectArgs,
}

/// Detection thresholds (agent and analyze alike).
#[derive(Debug, Clone, clap::Args)]
pub struct DetectArgs {
    /// Silence after which a continuous stream's direction is flagged [default: 5s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub silence_timeout: Option<Duration>,
    /// The same for streams that have shown silence suppression (VAD, DTX,
    /// comfort noise) [default: 30s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub vad_silence_timeout: Option<Duration>,
    /// The same for a direction the SDP says should not send (hold,
    /// sendonly/recvonly, inactive) [default: 3600s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub hold_timeout: Option<Duration>,
    /// Loss (percent of expected packets) over the window that raises a flag [default: 5]
    #[arg(long, value_parser = parse_percent)]
    pub loss_threshold: Option<f64>,
    /// The sliding window loss is measured over [default: 5s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub loss_window: Option<Duration>,
    /// Packets that must be expected in the window before loss counts [default: 100]
    #[arg(long)]
    pub loss_min_expected: Option<u64>,
    /// The window MOS (E-model, 1-4.5) under which a direction's quality is
    /// poor [default: 3.1]
    #[arg(long, value_parser = parse_mos)]
    pub mos_threshold: Option<f64>,
    /// How long the window MOS must stay under the threshold before
    /// poor_quality is raised [default: 10s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub poor_quality_time: Option<Duration>,
}

impl DetectArgs {
    /// Flags over the file over the defaults.
    pub fn config(&self, file: &crate::config::FileConfig) -> crate::calls::detect::DetectConfig {
        let d = crate::calls::detect::DetectConfig::default();
        let secs = |flag: Option<Duration>, file: Option<Duration>, default: f64| {
            flag.or(file).map_or(default, |v| v.as_secs_f64())
        };
        crate::calls::detect::DetectConfig {
            silence_timeout_s: secs(
                self.silence_timeout,
                file.silence_timeout,
                d.silence_timeout_s,
            ),
            vad_silence_timeout_s: secs(
                self.vad_silence_timeout,
                file.vad_silence_timeout,
                d.vad_silence_timeout_s,
            ),
            hold_timeout_s: secs(self.hold_timeout, file.hold_timeout, d.hold_timeout_s),
            loss_threshold: self
                .loss_threshold
                .or(file.loss_threshold)
                .map_or(d.loss_threshold, |p| p / 100.0),
            loss_window_s: secs(self.loss_window, file.loss_window, d.loss_window_s),
            loss_min_expected: self
                .loss_min_expected
                .or(file.loss_min_expected)
                .unwrap_or(d.loss_min_expected),
            mos_threshold: self
                .mos_threshold
                .or(file.mos_threshold)
                .unwrap_or(d.mos_threshold),
            poor_quality_time_s: secs(
                self.poor_quality_time,
                file.poor_quality_time,
                d.poor_quality_time_s,
            ),
        }
    }
}

/// A MOS on the E-model's scale.
pub fn parse_mos(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a MOS"))?;
    if (1.0..=4.5).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} is outside the MOS scale 1-4.5"))
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
    #[command(flatten)]
    pub client: ClientArgs,
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
    pub sort: Option<crate::cli::client::FlowSort>,
    /// Refresh every 2 s until interrupted.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The Call-ID.
    pub call_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
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

/// How the client subcommands reach the agent and print.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Print the agent's JSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's API address.
    #[arg(long, default_value = crate::cli::client::DEFAULT_AGENT, env = "DETECTOR_AGENT")]
    pub agent: String,
}

fn parse_flow_table_size(s: &str) -> Result<u32, String> {
    let flows: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of flows"))?;
    crate::config::flow_table_size(flows).map_err(|e| e.to_string())
}

fn parse_range(s: &str) -> Result<PortRange, String> {
    s.parse()
        .map_err(|e: crate::config::ConfigError| e.to_string())
}
