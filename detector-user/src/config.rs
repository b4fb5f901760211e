//! Agent settings from the command line, validated before anything loads.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use detector_common::{
    config::{DetectorConfig, MAX_SIP_PORTS},
    flow::{FlowTableLayout, MAX_FLOW_TABLE_SIZE},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--rtp-ports` is not `LO-HI`.
    #[error("invalid port range {0:?}: expected LO-HI with 1 <= LO <= HI <= 65535")]
    PortRange(String),
    /// Too many `--sip-port` values for the kernel's table.
    #[error("at most {MAX_SIP_PORTS} SIP ports are supported, got {0}")]
    TooManySipPorts(usize),
    /// A SIP port of 0.
    #[error("SIP port 0 is not a port")]
    SipPortZero,
    /// A zero interval or timeout.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A flow table of no flows, or more than the kernel can reasonably hold.
    #[error(
        "flow_table_size (--flow-table-size) must be 1 to {MAX_FLOW_TABLE_SIZE} flows, got {0}"
    )]
    FlowTableSize(u64),
}

/// Checks a flow table capacity (from the file or a flag).
pub fn flow_table_size(flows: u64) -> Result<u32, ConfigError> {
    u32::try_from(flows)
        .ok()
        .filter(|&n| FlowTableLayout::new(n).is_some())
        .ok_or(ConfigError::FlowTableSize(flows))
}

/// An inclusive UDP port range, `LO-HI`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl FromStr for PortRange {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::PortRange(s.to_string());
        let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
        let min: u16 = lo.trim().parse().map_err(|_| bad())?;
        let max: u16 = hi.trim().parse().map_err(|_| bad())?;
        if min == 0 || min > max {
            return Err(bad());
        }
        Ok(Self { min, max })
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self {
            min: detector_common::config::DEFAULT_RTP_PORT_MIN,
            max: detector_common::config::DEFAULT_RTP_PORT_MAX,
        }
    }
}

/// Everything the agent needs to run.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub iface: String,
    pub xdp_mode: crate::kernel::XdpAttachMode,
    pub rtp_ports: PortRange,
    pub sip_ports: Vec<u16>,
    pub listen: SocketAddr,
    /// Serve /metrics here too (the API with call data stays on `listen`).
    pub metrics_listen: Option<SocketAddr>,
    pub poll_interval: Duration,
    pub flow_idle_timeout: Duration,
    /// Flows the kernel's flow table is sized for.
    pub flow_table_size: u32,
    pub detect: crate::calls::detect::DetectConfig,
    /// Dialogs without SIP this long (and without Session-Expires) end.
    pub max_dialog_age: Duration,
    /// Append one JSON line per ended call here.
    pub calls_log: Option<std::path::PathBuf>,
    /// The journal of calls in progress lives here.
    pub state_dir: std::path::PathBuf,
    /// Links and maps are pinned under `<bpf_pin_dir>/<iface>`.
    pub bpf_pin_dir: std::path::PathBuf,
}

/// Default of `state_dir` (systemd's `StateDirectory=detector`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/detector";
/// Default of `bpf_pin_dir`.
pub const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/detector";

impl AgentConfig {
    /// Where this agent's links and maps are pinned: one directory per
    /// interface, so agents on two interfaces keep apart.
    pub fn pin_dir(&self) -> std::path::PathBuf {
        self.bpf_pin_dir.join(&self.iface)
    }

    /// This agent's journal of calls in progress (one per interface).
    pub fn journal_path(&self) -> std::path::PathBuf {
        self.state_dir.join(format!("calls-{}.journal", self.iface))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sip_ports.len() > MAX_SIP_PORTS {
            return Err(ConfigError::TooManySipPorts(self.sip_ports.len()));
        }
        if self.sip_ports.contains(&0) {
            return Err(ConfigError::SipPortZero);
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::Zero("--poll-interval"));
        }
        if self.flow_idle_timeout.is_zero() {
            return Err(ConfigError::Zero("--flow-idle-timeout"));
        }
        flow_table_size(u64::from(self.flow_table_size))?;
        Ok(())
    }

    /// The kernel's view of these settings.
    pub fn kernel_config(&self) -> DetectorConfig {
        DetectorConfig {
            flow_table_size: self.flow_table_size,
            ..kernel_config(self.rtp_ports, &self.sip_ports)
        }
    }
}

/// Builds the kernel configuration (ports beyond the table are ignored:
/// validation rejects them first).
pub fn kernel_config(rtp_ports: PortRange, sip_ports: &[u16]) -> DetectorConfig {
    let mut cfg = DetectorConfig {
        rtp_port_min: rtp_ports.min,
        rtp_port_max: rtp_ports.max,
        ..DetectorConfig::default()
    };
    let n = sip_ports.len().min(MAX_SIP_PORTS);
    cfg.sip_ports = [0; MAX_SIP_PORTS];
    cfg.sip_ports[..n].copy_from_slice(&sip_ports[..n]);
    cfg.sip_port_count = n as u8;
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(
            "10000-20000".parse(),
            Ok(PortRange {
                min: 10000,
                max: 20000
            })
        );
        assert_eq!("5-5".parse(), Ok(PortRange { min: 5, max: 5 }));
        for bad in [
            "",
            "10000",
            "20000-10000",
            "0-10",
            "1-65536",
            "a-b",
            "1-2-3",
        ] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kernel_config_keeps_sip_ports() {
        let cfg = kernel_config(PortRange { min: 2, max: 3 }, &[5060, 5080]);
        assert_eq!(
            (cfg.rtp_port_min, cfg.rtp_port_max, cfg.sip_port_count),
            (2, 3, 2)
        );
        assert!(cfg.is_sip(5080, 1));
    }

    #[test]
    fn the_flow_table_size_reaches_the_kernel_config_and_is_validated() {
        let mut cfg = AgentConfig {
            iface: "eth0".into(),
            xdp_mode: crate::kernel::XdpAttachMode::Auto,
            rtp_ports: PortRange::default(),
            sip_ports: vec![5060],
            listen: ([127, 0, 0, 1], 9477).into(),
            metrics_listen: None,
            poll_interval: Duration::from_secs(1),
            flow_idle_timeout: Duration::from_secs(120),
            flow_table_size: 160_000,
            detect: crate::calls::detect::DetectConfig::default(),
            max_dialog_age: Duration::from_secs(3600),
            calls_log: None,
            state_dir: DEFAULT_STATE_DIR.into(),
            bpf_pin_dir: DEFAULT_BPF_PIN_DIR.into(),
        };
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.kernel_config().flow_table_size, 160_000);
        assert_eq!(cfg.kernel_config().sip_port_count, 1);
        cfg.flow_table_size = 0;
        assert_eq!(cfg.validate(), Err(ConfigError::FlowTableSize(0)));
    }

    #[test]
    fn flow_table_sizes() {
        assert_eq!(flow_table_size(262_144), Ok(262_144));
        assert_eq!(flow_table_size(1), Ok(1));
        for bad in [0, u64::from(MAX_FLOW_TABLE_SIZE) + 1, u64::MAX] {
            assert_eq!(flow_table_size(bad), Err(ConfigError::FlowTableSize(bad)));
        }
        assert_eq!(
            ConfigError::FlowTableSize(0).to_string(),
            "flow_table_size (--flow-table-size) must be 1 to 4194304 flows, got 0"
        );
    }
}

/// Where the agent reads its configuration file by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/detector/detector.toml";

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    /// The file is not TOML.
    #[error("{path} is not valid TOML: {reason}")]
    Syntax { path: String, reason: String },
    /// A key has a value it cannot take.
    #[error("{path}: {key}: {reason}")]
    Value {
        path: String,
        key: String,
        reason: String,
    },
    /// A key the agent does not know (a typo would otherwise be ignored).
    #[error("{path}: unknown key {key}")]
    UnknownKey { path: String, key: String },
}

/// Every setting of the configuration file; `None` where the file is silent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileConfig {
    pub iface: Option<String>,
    pub xdp_mode: Option<crate::kernel::XdpAttachMode>,
    pub rtp_ports: Option<PortRange>,
    pub sip_ports: Option<Vec<u16>>,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub poll_interval: Option<Duration>,
    pub flow_idle_timeout: Option<Duration>,
    pub flow_table_size: Option<u32>,
    pub max_dialog_age: Option<Duration>,
    pub calls_log: Option<std::path::PathBuf>,
    pub state_dir: Option<std::path::PathBuf>,
    pub bpf_pin_dir: Option<std::path::PathBuf>,
    pub silence_timeout: Option<Duration>,
    pub vad_silence_timeout: Option<Duration>,
    pub hold_timeout: Option<Duration>,
    pub loss_threshold: Option<f64>,
    pub loss_window: Option<Duration>,
    pub loss_min_expected: Option<u64>,
    pub mos_threshold: Option<f64>,
    pub poor_quality_time: Option<Duration>,
}

impl FileConfig {
    /// Reads `path`. A missing file at the default path is an empty
    /// configuration; a missing file the operator named is an error.
    pub fn load(path: &std::path::Path, named_explicitly: bool) -> Result<Self, FileError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named_explicitly => {
                return Ok(Self::default())
            }
            Err(e) => {
                return Err(FileError::Read {
                    path: shown,
                    reason: e.to_string(),
                })
            }
        };
        Self::parse(&text, &shown)
    }

    /// Parses the TOML text; `shown` names the file in errors.
    pub fn parse(text: &str, shown: &str) -> Result<Self, FileError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| FileError::Syntax {
                path: shown.into(),
                reason: e.message().to_string(),
            })?;
        let mut cfg = Self::default();
        for (section, values) in &table {
            let Some(values) = values
                .as_table()
                .filter(|_| matches!(section.as_str(), "agent" | "detect"))
            else {
                return Err(FileError::UnknownKey {
                    path: shown.into(),
                    key: section.clone(),
                });
            };
            for (key, value) in values {
                let name = format!("{section}.{key}");
                let bad = |reason: String| FileError::Value {
                    path: shown.into(),
                    key: name.clone(),
                    reason,
                };
                let string = || {
                    value
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("expected a string".into()))
                };
                let duration = || {
                    let s = string()?;
                    let d = humantime::parse_duration(&s)
                        .map_err(|e| bad(format!("{s:?} is not a duration ({e})")))?;
                    if d.is_zero() {
                        return Err(bad("must be greater than zero".into()));
                    }
                    Ok(d)
                };
                let address = || {
                    let s = string()?;
                    s.parse::<SocketAddr>()
                        .map_err(|_| bad(format!("{s:?} is not an address:port")))
                };
                match name.as_str() {
                    "agent.iface" => cfg.iface = Some(string()?),
                    "agent.xdp_mode" => {
                        cfg.xdp_mode = Some(match string()?.as_str() {
                            "auto" => crate::kernel::XdpAttachMode::Auto,
                            "drv" => crate::kernel::XdpAttachMode::Drv,
                            "skb" => crate::kernel::XdpAttachMode::Skb,
                            other => return Err(bad(format!("{other:?} is not auto, drv or skb"))),
                        });
                    }
                    "agent.rtp_ports" => {
                        cfg.rtp_ports = Some(
                            string()?
                                .parse()
                                .map_err(|e: ConfigError| bad(e.to_string()))?,
                        )
                    }
                    "agent.sip_ports" => {
                        let ports = value
                            .as_array()
                            .ok_or_else(|| bad("expected a list of ports".into()))?;
                        let ports: Result<Vec<u16>, FileError> = ports
                            .iter()
                            .map(|p| {
                                p.as_integer()
                                    .and_then(|p| u16::try_from(p).ok())
                                    .filter(|p| *p != 0)
                                    .ok_or_else(|| bad(format!("{p} is not a port")))
                            })
                            .collect();
                        let ports = ports?;
                        if ports.len() > MAX_SIP_PORTS {
                            return Err(bad(format!("at most {MAX_SIP_PORTS} ports")));
                        }
                        cfg.sip_ports = Some(ports);
                    }
                    "agent.listen" => cfg.listen = Some(address()?),
                    "agent.metrics_listen" => cfg.metrics_listen = Some(address()?),
                    "agent.poll_interval" => cfg.poll_interval = Some(duration()?),
                    "agent.flow_idle_timeout" => cfg.flow_idle_timeout = Some(duration()?),
                    "agent.flow_table_size" => {
                        let flows = value
                            .as_integer()
                            .ok_or_else(|| bad("expected a number of flows".into()))?;
                        let flows = u64::try_from(flows)
                            .map_err(|_| bad(format!("{flows} is not a number of flows")))?;
                        cfg.flow_table_size = Some(flow_table_size(flows).map_err(|_| {
                            bad(format!(
                                "{flows} is out of range: 1 to {MAX_FLOW_TABLE_SIZE} flows"
                            ))
                        })?);
                    }
                    "agent.max_dialog_age" => cfg.max_dialog_age = Some(duration()?),
                    "agent.calls_log" => cfg.calls_log = Some(string()?.into()),
                    "agent.state_dir" => cfg.state_dir = Some(string()?.into()),
                    "agent.bpf_pin_dir" => cfg.bpf_pin_dir = Some(string()?.into()),
                    "detect.silence_timeout" => cfg.silence_timeout = Some(duration()?),
                    "detect.vad_silence_timeout" => cfg.vad_silence_timeout = Some(duration()?),
                    "detect.hold_timeout" => cfg.hold_timeout = Some(duration()?),
                    "detect.loss_window" => cfg.loss_window = Some(duration()?),
                    "detect.loss_threshold" => {
                        let v = value
                            .as_float()
                            .or_else(|| value.as_integer().map(|i| i as f64))
                            .ok_or_else(|| bad("expected a percentage".into()))?;
                        if !(v > 0.0 && v <= 100.0) {
                            return Err(bad(format!("{v} is outside 0-100 %")));
                        }
                        cfg.loss_threshold = Some(v);
                    }
                    "detect.loss_min_expected" => {
                        let v = value
                            .as_integer()
                            .and_then(|v| u64::try_from(v).ok())
                            .ok_or_else(|| bad("expected a packet count".into()))?;
                        cfg.loss_min_expected = Some(v);
                    }
                    "detect.poor_quality_time" => cfg.poor_quality_time = Some(duration()?),
                    "detect.mos_threshold" => {
                        let v = value
                            .as_float()
                            .or_else(|| value.as_integer().map(|i| i as f64))
                            .ok_or_else(|| bad("expected a MOS".into()))?;
                        if !(1.0..=4.5).contains(&v) {
                            return Err(bad(format!("{v} is outside the MOS scale 1-4.5")));
                        }
                        cfg.mos_threshold = Some(v);
                    }
                    _ => {
                        return Err(FileError::UnknownKey {
                            path: shown.into(),
                            key: name,
                        })
                    }
                }
            }
        }
        Ok(cfg)
    }
}

/// The interface of the IPv4 default route (from /proc/net/route).
pub fn default_route_iface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    default_route_in(&table)
}

fn default_route_in(table: &str) -> Option<String> {
    const RTF_UP: u32 = 1;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (iface, destination, flags) = (fields.first()?, fields.get(1)?, fields.get(3)?);
        let flags = u32::from_str_radix(flags, 16).ok()?;
        (*destination == "00000000" && flags & RTF_UP != 0).then(|| iface.to_string())
    })
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_valid_and_says_the_defaults() {
        let example = include_str!("../../deploy/detector.toml");
        let parsed = FileConfig::parse(example, "deploy/detector.toml").unwrap();
        assert_eq!(parsed.rtp_ports, Some(PortRange::default()));
        assert_eq!(parsed.sip_ports, Some(vec![5060]));
        assert_eq!(parsed.silence_timeout, Some(Duration::from_secs(5)));
        assert_eq!(parsed.loss_threshold, Some(5.0));
        assert_eq!(parsed.mos_threshold, Some(3.1));
        assert_eq!(parsed.poor_quality_time, Some(Duration::from_secs(10)));
        assert_eq!(
            parsed.flow_table_size,
            Some(detector_common::flow::DEFAULT_FLOW_TABLE_SIZE)
        );
        assert_eq!(parsed.state_dir, Some(DEFAULT_STATE_DIR.into()));
        assert_eq!(parsed.bpf_pin_dir, Some(DEFAULT_BPF_PIN_DIR.into()));
    }

    #[test]
    fn errors_name_the_key_and_the_reason() {
        let err = |text: &str| FileConfig::parse(text, "f.toml").unwrap_err().to_string();
        assert_eq!(
            err("[agent]\nrtp_ports = \"60000-10000\""),
            "f.toml: agent.rtp_ports: invalid port range \"60000-10000\": expected LO-HI with 1 <= LO <= HI <= 65535"
        );
        assert_eq!(
            err("[detect]\nsilence_timeout = \"soon\"")
                .split(" (")
                .next()
                .unwrap(),
            "f.toml: detect.silence_timeout: \"soon\" is not a duration"
        );
        assert_eq!(
            err("[detect]\nloss_threshold = 250"),
            "f.toml: detect.loss_threshold: 250 is outside 0-100 %"
        );
        assert_eq!(
            err("[agent]\nsip_ports = [5060, 0]"),
            "f.toml: agent.sip_ports: 0 is not a port"
        );
        assert_eq!(
            err("[agent]\nifcae = \"eth0\""),
            "f.toml: unknown key agent.ifcae"
        );
        assert_eq!(err("[agnet]\n"), "f.toml: unknown key agnet");
        assert_eq!(
            err("[agent]\nflow_table_size = 0"),
            "f.toml: agent.flow_table_size: 0 is out of range: 1 to 4194304 flows"
        );
        assert_eq!(
            err("[agent]\nflow_table_size = 100000000000"),
            "f.toml: agent.flow_table_size: 100000000000 is out of range: 1 to 4194304 flows"
        );
        assert_eq!(
            err("[agent]\nflow_table_size = -1"),
            "f.toml: agent.flow_table_size: -1 is not a number of flows"
        );
        assert_eq!(
            err("[agent]\nflow_table_size = \"big\""),
            "f.toml: agent.flow_table_size: expected a number of flows"
        );
        assert!(err("[agent\n").starts_with("f.toml is not valid TOML"));
    }

    #[test]
    fn missing_default_file_is_empty_but_a_named_one_is_an_error() {
        let missing = std::path::Path::new("/nonexistent/detector.toml");
        assert_eq!(FileConfig::load(missing, false), Ok(FileConfig::default()));
        assert!(FileConfig::load(missing, true).is_err());
    }

    #[test]
    fn default_route() {
        let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n";
        assert_eq!(default_route_in(table), Some("eth0".into()));
        assert_eq!(default_route_in("Iface\tDestination\n"), None);
    }
}
