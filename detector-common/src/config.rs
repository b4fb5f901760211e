//! Settings the agent writes into the kernel's config map.

/// Name of the single-entry array map holding [`DetectorConfig`].
pub const CONFIG_MAP: &str = "CONFIG";
/// SIP ports the kernel copies to userspace, at most this many.
pub const MAX_SIP_PORTS: usize = 8;

pub const DEFAULT_RTP_PORT_MIN: u16 = 10000;
pub const DEFAULT_RTP_PORT_MAX: u16 = 60000;
pub const DEFAULT_SIP_PORT: u16 = 5060;

/// Flag: the watched-endpoints map has entries and must be consulted.
pub const CONFIG_F_WATCHED: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// UDP ports (either end) inside this range are candidate RTP.
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// The first `sip_port_count` entries are SIP ports.
    pub sip_ports: [u16; MAX_SIP_PORTS],
    pub sip_port_count: u8,
    /// `CONFIG_F_*` bits (u8, not bool, so the layout is plain bytes).
    pub flags: u8,
    /// Bumped (wrapping) whenever the clock rates SDP declared for a
    /// watched endpoint change: a flow whose `FlowStats::rates_generation`
    /// differs takes its rate again (see `FlowStats::rates_stale`).
    pub rates_generation: u8,
    pub _pad: u8,
    /// Flows the flow table is sized for: the kernel hashes keys into
    /// `flow_table_size << FLOW_LOAD_SHIFT` first slots (see
    /// `FlowKey::slot_hash`), and the agent sizes the flow maps from it
    /// when it loads them (`FlowTableLayout`), so the two always agree.
    pub flow_table_size: u32,
}
crate::assert_size!(DetectorConfig, 28);

impl Default for DetectorConfig {
    fn default() -> Self {
        let mut sip_ports = [0; MAX_SIP_PORTS];
        sip_ports[0] = DEFAULT_SIP_PORT;
        Self {
            rtp_port_min: DEFAULT_RTP_PORT_MIN,
            rtp_port_max: DEFAULT_RTP_PORT_MAX,
            sip_ports,
            sip_port_count: 1,
            flags: 0,
            rates_generation: 0,
            _pad: 0,
            flow_table_size: crate::flow::DEFAULT_FLOW_TABLE_SIZE,
        }
    }
}

impl DetectorConfig {
    #[inline(always)]
    pub fn is_rtp_port(&self, port: u16) -> bool {
        port >= self.rtp_port_min && port <= self.rtp_port_max
    }

    /// Either port is a SIP port.
    #[inline(always)]
    pub fn is_sip(&self, src_port: u16, dst_port: u16) -> bool {
        let mut i = 0;
        while i < MAX_SIP_PORTS {
            if i >= self.sip_port_count as usize {
                return false;
            }
            let p = self.sip_ports[i];
            if p == src_port || p == dst_port {
                return true;
            }
            i += 1;
        }
        false
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for DetectorConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let mut c = DetectorConfig::default();
        assert!(c.is_rtp_port(10000) && c.is_rtp_port(60000) && !c.is_rtp_port(9999));
        assert!(c.is_sip(5060, 40000) && c.is_sip(40000, 5060) && !c.is_sip(5061, 5062));
        c.sip_ports[1] = 5080;
        assert!(!c.is_sip(5080, 1), "only sip_port_count entries count");
        c.sip_port_count = 2;
        assert!(c.is_sip(5080, 1));
        c.sip_port_count = 200;
        assert!(!c.is_sip(1, 2), "an oversized count is bounded");
    }
}
