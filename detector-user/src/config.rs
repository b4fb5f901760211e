//! Agent settings from the command line, validated before anything loads.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use detector_common::config::{DetectorConfig, MAX_SIP_PORTS};

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
    pub xdp_mode: crate::capture::XdpAttachMode,
    pub rtp_ports: PortRange,
    pub sip_ports: Vec<u16>,
    pub listen: SocketAddr,
    /// Serve /metrics here too (the API with call data stays on `listen`).
    pub metrics_listen: Option<SocketAddr>,
    pub poll_interval: Duration,
    pub flow_idle_timeout: Duration,
    pub detect: crate::detect::DetectConfig,
    /// Dialogs without SIP this long (and without Session-Expires) end.
    pub max_dialog_age: Duration,
    /// Append one JSON line per ended call here.
    pub calls_log: Option<std::path::PathBuf>,
}

impl AgentConfig {
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
        Ok(())
    }

    /// The kernel's view of these settings.
    pub fn kernel_config(&self) -> DetectorConfig {
        kernel_config(self.rtp_ports, &self.sip_ports)
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
}
