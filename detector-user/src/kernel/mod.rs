//! Loading, configuring and attaching the kernel programs, and reading their
//! maps.

pub mod pins;
mod slots;

use std::{collections::HashMap as StdHashMap, path::Path};

use slots::SlotTable;

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
        Program, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
        TestRunResult, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf, EbpfError, EbpfLoader,
};
use detector_common::{
    config::{DetectorConfig, CONFIG_F_WATCHED, CONFIG_MAP},
    counters::{COUNTERS_LEN, COUNTERS_MAP, COUNTERS_PER_HOOK, HOOKS},
    flow::{
        EndpointKey, FlowKey, FlowStats, FlowTableLayout, WatchedEndpoint, FLOWS_MAP,
        FLOW_SLOTS_MAP, MAX_FLOW_TABLE_SIZE, WATCHED_FLOWS_MAP, WATCHED_MAP,
    },
    sip::SIP_RING_MAP,
};

/// The compiled kernel programs (built by build.rs).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector.bpf.o"));

pub const XDP_PROGRAM: &str = "detector_xdp";
pub const TC_PROGRAM: &str = "detector_tc";
/// Benchmark programs (`Kernel::load_benchmarks`): bare programs that only
/// pass, one that only reads the clock, and the detector's programs
/// advancing the frame's RTP sequence number and timestamp after each run,
/// with bare counterparts that only advance.
pub const BASELINE_PROGRAM: &str = "baseline_xdp";
pub const BASELINE_TC_PROGRAM: &str = "baseline_tc";
pub const BASELINE_KTIME_PROGRAM: &str = "baseline_ktime_xdp";
pub const BENCH_IN_ORDER_PROGRAM: &str = "bench_in_order_xdp";
pub const BENCH_ADVANCE_PROGRAM: &str = "bench_advance_xdp";
pub const BENCH_IN_ORDER_TC_PROGRAM: &str = "bench_in_order_tc";
pub const BENCH_ADVANCE_TC_PROGRAM: &str = "bench_advance_tc";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The interface does not exist (in this network namespace).
    #[error("interface {0} does not exist")]
    NoInterface(String),
    /// Loading needs CAP_BPF/CAP_NET_ADMIN.
    #[error("permission denied loading eBPF programs: run the agent as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    Permission,
    /// The object could not be parsed or its maps created.
    #[error("cannot load the eBPF object: {0}")]
    Object(#[source] Box<EbpfError>),
    /// The verifier rejected a program; its log says why.
    /// (`source` prints the verifier log; `log` keeps it for callers.)
    #[error("the kernel rejected program {program}: {source}")]
    Verifier {
        program: &'static str,
        source: Box<ProgramError>,
        log: String,
    },
    /// This binary was built with DETECTOR_SKIP_EBPF.
    #[error("this build has no eBPF programs (built with DETECTOR_SKIP_EBPF): rebuild with `cargo xtask build`")]
    NotBuilt,
    /// A program or map is missing from the object (a build mismatch).
    #[error("{0} is missing from the eBPF object")]
    Missing(&'static str),
    /// Attaching XDP failed.
    #[error("cannot attach XDP to {iface} in {mode} mode: {source}{hint}")]
    AttachXdp {
        iface: String,
        mode: &'static str,
        source: Box<ProgramError>,
        hint: &'static str,
    },
    /// Attaching the TC egress program failed.
    #[error("cannot attach the TC egress program to {iface} ({path}): {source}")]
    AttachTc {
        iface: String,
        path: &'static str,
        source: Box<ProgramError>,
    },
    /// DETECTOR_TC_ATTACH names no attach path.
    #[error("DETECTOR_TC_ATTACH must be tcx or netlink, not {0:?}")]
    TcPath(String),
    /// The running kernel is older than the programs need.
    #[error("this kernel ({running}) is too old: the detector needs Linux 5.12 or newer (BPF ring buffers, mmap-able arrays, atomic compare-and-exchange)")]
    OldKernel { running: String },
    /// BPF_PROG_TEST_RUN failed.
    #[error("test run of {program} failed: {source}")]
    TestRun {
        program: &'static str,
        source: Box<ProgramError>,
    },
    /// Mapping the flow table into memory failed.
    #[error("cannot mmap the flow table: {0}")]
    Mmap(#[source] std::io::Error),
    /// The flow table's capacity is 0 or beyond the largest supported.
    #[error("flow_table_size {0} is out of range: it must be 1 to {MAX_FLOW_TABLE_SIZE} flows")]
    FlowTableSize(u32),
    /// The kernel could not allocate the flow table's maps.
    /// (The kernel's reason follows as the error's source.)
    #[error("cannot create the flow table for {flows} flows ({mib} MiB of kernel memory; lower flow_table_size, --flow-table-size)")]
    FlowTableMemory {
        flows: u32,
        mib: u64,
        source: Box<EbpfError>,
    },
    /// The pin directory cannot be made or read.
    #[error("cannot use the bpffs pin directory {dir}: {source}")]
    PinDir { dir: String, source: std::io::Error },
    /// Pinning a link failed.
    #[error("cannot pin the {program} link at {path}: {reason}")]
    PinLink {
        program: &'static str,
        path: String,
        reason: String,
    },
    /// Reading or writing a map failed.
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<MapError>,
    },
}

/// How XDP is attached.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native where the driver supports it, else generic.
    Auto,
    /// In the driver (native XDP): fastest; needs driver support.
    Drv,
    /// Generic XDP in the network stack: works on every interface.
    Skb,
}

impl XdpAttachMode {
    fn aya(self) -> XdpMode {
        match self {
            Self::Auto | Self::Drv => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Drv => "drv",
            Self::Skb => "skb",
        }
    }
}

/// How the TC egress program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttachPath {
    /// A TCX link (kernels since 6.6).
    Tcx,
    /// A clsact qdisc and a filter, through netlink (every kernel).
    Netlink,
}

impl TcAttachPath {
    /// Forces a path (`tcx` or `netlink`), for tests and odd kernels.
    pub const ENV: &'static str = "DETECTOR_TC_ATTACH";

    /// TCX where the kernel has it, unless [`Self::ENV`] says otherwise.
    pub fn choose() -> Result<Self, CaptureError> {
        match std::env::var(Self::ENV).ok().as_deref() {
            Some("tcx") => Ok(Self::Tcx),
            Some("netlink") => Ok(Self::Netlink),
            Some(other) => Err(CaptureError::TcPath(other.to_string())),
            None => Ok(
                if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
                    Self::Tcx
                } else {
                    Self::Netlink
                },
            ),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

/// The oldest kernel the programs load on: BPF ring buffers (5.8), mmap-able
/// arrays (5.5) and the atomic compare-and-exchange the flow table's slot
/// claims use (BPF ISA v3, 5.12) are the newest features they need.
pub const MIN_KERNEL: (u8, u8) = (5, 12);

/// Fails with a clear error on a kernel older than [`MIN_KERNEL`].
pub fn check_kernel() -> Result<(), CaptureError> {
    let (major, minor) = MIN_KERNEL;
    match KernelVersion::current() {
        Ok(v) if v < KernelVersion::new(major, minor, 0) => Err(CaptureError::OldKernel {
            running: format!("{v:?}"),
        }),
        // An unreadable version is not proof of an old kernel: loading says.
        _ => Ok(()),
    }
}

/// Fails with a clear error when `iface` does not exist (before anything is
/// loaded, pinned or journaled for it).
pub fn check_interface(iface: &str) -> Result<(), CaptureError> {
    nix_if_index(iface)
        .map(drop)
        .ok_or_else(|| CaptureError::NoInterface(iface.to_string()))
}

/// Where and how the programs were attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// `drv` or `skb`: what `auto` resolved to.
    pub xdp_mode: XdpAttachMode,
    pub tc_path: TcAttachPath,
    /// The programs took over the previous agent's attachments in place
    /// (pinned links, or the netlink filter replaced): no packet was missed.
    #[serde(skip)]
    pub adopted: bool,
    /// The maps' [`detector_common::MAP_LAYOUT_VERSION`] (0: a journal
    /// that did not say).
    #[serde(default)]
    pub map_layout: u32,
}

/// The loaded programs and their maps.
pub struct Kernel {
    ebpf: Ebpf,
    slots: SlotTable,
    layout: FlowTableLayout,
    config: DetectorConfig,
    watched: StdHashMap<EndpointKey, WatchedEndpoint>,
    /// Where the maps (and links, once attached) are pinned, if they are.
    pin_dir: Option<std::path::PathBuf>,
    /// The maps were a previous agent's (their counts go on).
    maps_adopted: bool,
}

/// How full the flow maps are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowTableUsage {
    /// Live slots of the flow table.
    pub slots: u64,
    /// Flows of watched endpoints in their overflow map (never evicted).
    pub watched_overflow: u64,
    /// Other flows in the LRU overflow map.
    pub overflow: u64,
}

/// Outcome counters summed over CPUs, `[hook][counter]`.
pub type Counters = [[u64; COUNTERS_PER_HOOK as usize]; HOOKS as usize];

impl Kernel {
    /// Loads the object with its flow maps sized for `cfg.flow_table_size`
    /// flows, writes the configuration and loads (does not attach) the
    /// programs.
    pub fn load(cfg: &DetectorConfig) -> Result<Self, CaptureError> {
        Self::load_with(cfg, None)
    }

    /// As [`Kernel::load`], with every map pinned under `pin_dir` (for the
    /// interface `iface`): maps a previous agent pinned there are adopted
    /// when this build shapes them the same and `pinned_layout` (their
    /// layout version, from that agent's journal) is this build's, else
    /// removed with a warning.
    pub fn load_pinned(
        cfg: &DetectorConfig,
        pin_dir: &Path,
        iface: &str,
        pinned_layout: Option<u32>,
    ) -> Result<Self, CaptureError> {
        let layout = FlowTableLayout::new(cfg.flow_table_size)
            .ok_or(CaptureError::FlowTableSize(cfg.flow_table_size))?;
        let pin_error = |source| CaptureError::PinDir {
            dir: pin_dir.display().to_string(),
            source,
        };
        if pins::ensure_bpffs(pin_dir).map_err(pin_error)? {
            tracing::info!("mounted bpffs on /sys/fs/bpf (for the pins that outlive a restart)");
        }
        let mut found = pins::inspect(pin_dir, &pins::map_shapes(&layout));
        let ours = detector_common::MAP_LAYOUT_VERSION;
        if found == pins::Found::Compatible && pinned_layout != Some(ours) {
            found = pins::Found::Foreign(match pinned_layout {
                Some(theirs) => format!("map layout version {theirs}, this build's is {ours}"),
                None => "no journal says which build pinned them".into(),
            });
        }
        if let pins::Found::Foreign(why) = &found {
            tracing::warn!(
                dir = %pin_dir.display(),
                "the pinned maps are not this build's ({why}): removing them and starting clean"
            );
            pins::remove(pin_dir, iface).map_err(pin_error)?;
        }
        std::fs::create_dir_all(pin_dir).map_err(pin_error)?;
        let mut kernel = Self::load_with(cfg, Some(pin_dir))?;
        kernel.maps_adopted = found == pins::Found::Compatible;
        if kernel.maps_adopted {
            // The previous agent's watched endpoints: the first sync removes
            // the ones no call announces any more.
            let watched: HashMap<_, EndpointKey, WatchedEndpoint> =
                typed_map(&kernel.ebpf, WATCHED_MAP)?;
            kernel.watched = watched.iter().filter_map(Result::ok).collect();
        }
        Ok(kernel)
    }

    /// The maps were pinned by a previous agent and adopted.
    pub fn maps_adopted(&self) -> bool {
        self.maps_adopted
    }

    fn load_with(cfg: &DetectorConfig, pin_dir: Option<&Path>) -> Result<Self, CaptureError> {
        if EBPF_OBJECT.is_empty() {
            return Err(CaptureError::NotBuilt);
        }
        let layout = FlowTableLayout::new(cfg.flow_table_size)
            .ok_or(CaptureError::FlowTableSize(cfg.flow_table_size))?;
        raise_memlock_once();
        let mut loader = EbpfLoader::new();
        let pin_paths: Vec<(&'static str, std::path::PathBuf)> = match pin_dir {
            Some(dir) => pins::map_shapes(&layout)
                .iter()
                .map(|m| (m.name, dir.join(m.name)))
                .collect(),
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .map_max_entries(FLOW_SLOTS_MAP, layout.slots)
            .map_max_entries(WATCHED_FLOWS_MAP, layout.watched_overflow)
            .map_max_entries(FLOWS_MAP, layout.overflow)
            .map_max_entries(WATCHED_MAP, layout.watched_endpoints)
            .load(EBPF_OBJECT)
            .map_err(|e| match &e {
                EbpfError::MapError(MapError::CreateError { io_error, .. })
                    if io_error.raw_os_error() == Some(libc::EPERM) =>
                {
                    CaptureError::Permission
                }
                EbpfError::MapError(MapError::CreateError { name, io_error, .. })
                    if [FLOW_SLOTS_MAP, WATCHED_FLOWS_MAP, FLOWS_MAP, WATCHED_MAP]
                        .contains(&name.as_str())
                        && matches!(io_error.raw_os_error(), Some(libc::ENOMEM | libc::E2BIG)) =>
                {
                    CaptureError::FlowTableMemory {
                        flows: layout.capacity,
                        mib: layout.slot_bytes().div_ceil(1 << 20),
                        source: Box::new(e),
                    }
                }
                _ => CaptureError::Object(Box::new(e)),
            })?;
        let slots = match ebpf.map(FLOW_SLOTS_MAP) {
            Some(Map::Array(data)) => SlotTable::map(data, &layout).map_err(CaptureError::Mmap)?,
            _ => return Err(CaptureError::Missing(FLOW_SLOTS_MAP)),
        };
        let mut kernel = Self {
            ebpf,
            slots,
            layout,
            config: *cfg,
            watched: StdHashMap::new(),
            pin_dir: pin_dir.map(Path::to_path_buf),
            maps_adopted: false,
        };
        kernel.configure(cfg)?;
        kernel.load_programs(&[XDP_PROGRAM], &[TC_PROGRAM])?;
        Ok(kernel)
    }

    /// Also loads the benchmark's programs (baselines and in-order variants),
    /// for BPF_PROG_TEST_RUN; the agent does not need them.
    pub fn load_benchmarks(&mut self) -> Result<(), CaptureError> {
        self.load_programs(
            &[
                BASELINE_PROGRAM,
                BASELINE_KTIME_PROGRAM,
                BENCH_IN_ORDER_PROGRAM,
                BENCH_ADVANCE_PROGRAM,
            ],
            &[
                BASELINE_TC_PROGRAM,
                BENCH_IN_ORDER_TC_PROGRAM,
                BENCH_ADVANCE_TC_PROGRAM,
            ],
        )
    }

    fn load_programs(
        &mut self,
        xdp: &[&'static str],
        tc: &[&'static str],
    ) -> Result<(), CaptureError> {
        for &name in xdp {
            let prog: &mut Xdp = self.program(name)?;
            prog.load().map_err(|e| verifier_error(name, e))?;
        }
        for &name in tc {
            let prog: &mut SchedClassifier = self.program(name)?;
            prog.load().map_err(|e| verifier_error(name, e))?;
        }
        Ok(())
    }

    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, CaptureError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program>,
    {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(CaptureError::Missing(name))
    }

    /// Runs one of the programs on `frame` with BPF_PROG_TEST_RUN, `repeat`
    /// times; returns the verdict and the kernel-measured time per run.
    pub fn test_run(
        &self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunResult, CaptureError> {
        let prog = self
            .ebpf
            .program(program)
            .ok_or(CaptureError::Missing(program))?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let result = match prog {
            Program::Xdp(p) => p.test_run(opts),
            Program::SchedClassifier(p) => p.test_run(opts),
            _ => return Err(CaptureError::Missing(program)),
        };
        result.map_err(|source| CaptureError::TestRun {
            program,
            source: Box::new(source),
        })
    }

    /// Writes the detector configuration.
    pub fn configure(&mut self, cfg: &DetectorConfig) -> Result<(), CaptureError> {
        let mut array: Array<_, DetectorConfig> = typed_map_mut(&mut self.ebpf, CONFIG_MAP)?;
        array.set(0, cfg, 0).map_err(map_error(CONFIG_MAP))
    }

    /// Attaches XDP (ingress) and TC (egress) to `iface`; returns how.
    /// `auto` tries native XDP and falls back to generic with one warning.
    ///
    /// Unpinned ([`Kernel::load`]), dropping the `Kernel` detaches both.
    /// Pinned ([`Kernel::load_pinned`]), the attachments outlive the agent:
    /// the links are pinned beside the maps (the netlink filter stays), and
    /// `previous` (how the last agent attached, from its journal) lets this
    /// one take them over in place when the mode is the one asked for.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: XdpAttachMode,
        previous: Option<Attachment>,
    ) -> Result<Attachment, CaptureError> {
        if nix_if_index(iface).is_none() {
            return Err(CaptureError::NoInterface(iface.to_string()));
        }
        let tc_path = TcAttachPath::choose()?;
        let Some(dir) = self.pin_dir.clone() else {
            let xdp_mode = self.attach_xdp(iface, mode)?.1;
            self.attach_tc(iface, tc_path, None)?;
            return Ok(Attachment {
                xdp_mode,
                tc_path,
                adopted: false,
                map_layout: detector_common::MAP_LAYOUT_VERSION,
            });
        };
        let xdp_pin = dir.join(pins::XDP_LINK_PIN);
        let tc_pin = dir.join(pins::TC_LINK_PIN);
        // The previous links are taken over only when they are what this
        // agent would attach; else they go (the maps stay, counts go on).
        let keep_xdp = previous
            .filter(|p| mode == XdpAttachMode::Auto || p.xdp_mode == mode)
            .filter(|_| xdp_pin.exists());
        let keep_tc = previous.filter(|p| p.tc_path == tc_path);
        let adopted_xdp = keep_xdp.and_then(|previous| {
            self.adopt_xdp(&xdp_pin)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "cannot take over the pinned XDP link; attaching anew")
                })
                .ok()
                .map(|()| previous.xdp_mode)
        });
        let (xdp_mode, xdp_adopted) = match adopted_xdp {
            Some(mode) => (mode, true),
            None => {
                remove_pin(&xdp_pin);
                let (id, xdp_mode) = self.attach_xdp(iface, mode)?;
                let xdp: &mut Xdp = self.program(XDP_PROGRAM)?;
                let link = xdp
                    .take_link(id)
                    .map_err(|e| attach_xdp_error(iface, xdp_mode, e))?;
                pin_link("XDP", link.try_into(), &xdp_pin)?;
                (xdp_mode, false)
            }
        };
        self.finish_pinned_attach(iface, tc_path, keep_tc, &tc_pin, xdp_mode, xdp_adopted)
    }

    fn finish_pinned_attach(
        &mut self,
        iface: &str,
        tc_path: TcAttachPath,
        keep_tc: Option<Attachment>,
        tc_pin: &Path,
        xdp_mode: XdpAttachMode,
        xdp_adopted: bool,
    ) -> Result<Attachment, CaptureError> {
        let tc_adopted = match tc_path {
            TcAttachPath::Tcx => {
                pins::detach_netlink_filter(iface);
                let adopted = keep_tc.is_some()
                    && tc_pin.exists()
                    && self
                        .adopt_tcx(tc_pin)
                        .inspect_err(|e| tracing::warn!(error = %e, "cannot take over the pinned TC link; attaching anew"))
                        .is_ok();
                if !adopted {
                    remove_pin(tc_pin);
                    let id = self.attach_tc(iface, tc_path, None)?;
                    let tc: &mut SchedClassifier = self.program(TC_PROGRAM)?;
                    let link = tc
                        .take_link(id)
                        .map_err(|e| attach_tc_error(iface, tc_path, e))?;
                    pin_link("TC", link.try_into(), tc_pin)?;
                }
                adopted
            }
            TcAttachPath::Netlink => {
                remove_pin(tc_pin);
                let fixed = NlOptions {
                    priority: pins::TC_FILTER_PRIORITY,
                    handle: pins::TC_FILTER_HANDLE,
                    classid: None,
                };
                let (id, adopted) = match self.attach_tc(iface, tc_path, Some(fixed)) {
                    Ok(id) => (id, false),
                    // The previous agent's filter: replaced in place.
                    Err(_) => {
                        let old = SchedClassifierLink::attached(
                            iface,
                            TcAttachType::Egress,
                            pins::TC_FILTER_PRIORITY,
                            pins::TC_FILTER_HANDLE,
                            None,
                        )
                        .map_err(|e| attach_tc_error(iface, tc_path, ProgramError::IOError(e)))?;
                        let tc: &mut SchedClassifier = self.program(TC_PROGRAM)?;
                        let id = tc
                            .attach_to_link(old)
                            .map_err(|e| attach_tc_error(iface, tc_path, e))?;
                        (id, keep_tc.is_some())
                    }
                };
                // Stays attached when the agent stops: `--cleanup` removes it.
                let tc: &mut SchedClassifier = self.program(TC_PROGRAM)?;
                let link = tc
                    .take_link(id)
                    .map_err(|e| attach_tc_error(iface, tc_path, e))?;
                std::mem::forget(link);
                adopted
            }
        };
        Ok(Attachment {
            xdp_mode,
            tc_path,
            adopted: xdp_adopted && tc_adopted,
            map_layout: detector_common::MAP_LAYOUT_VERSION,
        })
    }

    /// Points the pinned XDP link at this agent's program.
    fn adopt_xdp(&mut self, pin: &Path) -> Result<(), CaptureError> {
        let fail = |e: String| CaptureError::PinDir {
            dir: pin.display().to_string(),
            source: std::io::Error::other(e),
        };
        let link = PinnedLink::from_pin(pin).map_err(|e| fail(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| fail(e.to_string()))?;
        let xdp: &mut Xdp = self.program(XDP_PROGRAM)?;
        let id = xdp.attach_to_link(link).map_err(|e| fail(e.to_string()))?;
        // Our handle on it goes; the pin keeps it attached.
        let link = xdp.take_link(id).map_err(|e| fail(e.to_string()))?;
        drop(FdLink::try_from(link));
        Ok(())
    }

    /// Points the pinned TCX link at this agent's program.
    fn adopt_tcx(&mut self, pin: &Path) -> Result<(), CaptureError> {
        let fail = |e: String| CaptureError::PinDir {
            dir: pin.display().to_string(),
            source: std::io::Error::other(e),
        };
        let link = PinnedLink::from_pin(pin).map_err(|e| fail(e.to_string()))?;
        let link =
            SchedClassifierLink::try_from(FdLink::from(link)).map_err(|e| fail(e.to_string()))?;
        let tc: &mut SchedClassifier = self.program(TC_PROGRAM)?;
        let id = tc.attach_to_link(link).map_err(|e| fail(e.to_string()))?;
        let link = tc.take_link(id).map_err(|e| fail(e.to_string()))?;
        drop(FdLink::try_from(link));
        Ok(())
    }

    fn attach_xdp(
        &mut self,
        iface: &str,
        mode: XdpAttachMode,
    ) -> Result<(aya::programs::xdp::XdpLinkId, XdpAttachMode), CaptureError> {
        let xdp: &mut Xdp = self.program(XDP_PROGRAM)?;
        match mode {
            XdpAttachMode::Auto => match xdp.attach(iface, XdpMode::Driver) {
                Ok(id) => Ok((id, XdpAttachMode::Drv)),
                Err(native) => {
                    tracing::warn!(
                        iface,
                        error = %native,
                        "native XDP is not available on this interface; using generic (skb) XDP, which is slower"
                    );
                    let id = xdp
                        .attach(iface, XdpMode::Skb)
                        .map_err(|e| attach_xdp_error(iface, XdpAttachMode::Skb, e))?;
                    Ok((id, XdpAttachMode::Skb))
                }
            },
            forced => {
                let id = xdp
                    .attach(iface, forced.aya())
                    .map_err(|e| attach_xdp_error(iface, forced, e))?;
                Ok((id, forced))
            }
        }
    }

    /// Attaches the TC program; `netlink` fixes the filter's priority and
    /// handle (else the kernel picks them).
    fn attach_tc(
        &mut self,
        iface: &str,
        path: TcAttachPath,
        netlink: Option<NlOptions>,
    ) -> Result<aya::programs::tc::SchedClassifierLinkId, CaptureError> {
        if path == TcAttachPath::Netlink {
            // The qdisc may be there already (another program, a previous run).
            if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
                tracing::debug!(iface, error = %e, "clsact qdisc not added (it may exist)");
            }
        }
        let tc: &mut SchedClassifier = self.program(TC_PROGRAM)?;
        let options = match path {
            TcAttachPath::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
            TcAttachPath::Netlink => TcAttachOptions::Netlink(netlink.unwrap_or_default()),
        };
        tc.attach_with_options(iface, TcAttachType::Egress, options)
            .map_err(|e| attach_tc_error(iface, path, e))
    }

    /// Makes the kernel's map of watched endpoints equal `desired` (learnt
    /// from SDP), and tells the programs whether to consult it.
    pub fn sync_watched(
        &mut self,
        desired: &StdHashMap<EndpointKey, WatchedEndpoint>,
    ) -> Result<(), CaptureError> {
        if *desired == self.watched {
            return Ok(());
        }
        let mut watched: HashMap<_, EndpointKey, WatchedEndpoint> =
            typed_map_mut(&mut self.ebpf, WATCHED_MAP)?;
        for key in self.watched.keys().filter(|k| !desired.contains_key(*k)) {
            match watched.remove(key) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(source) => return Err(map_error(WATCHED_MAP)(source)),
            }
        }
        let mut rates_changed = false;
        for (key, value) in desired {
            let before = self.watched.get(key);
            if before != Some(value) {
                watched
                    .insert(key, value, 0)
                    .map_err(map_error(WATCHED_MAP))?;
                rates_changed |= before.copied().unwrap_or_default().rates != value.rates;
            }
        }
        self.watched.clone_from(desired);
        let mut cfg = self.config;
        if rates_changed {
            // Flows already in the table take their declared rates again.
            cfg.rates_generation = cfg.rates_generation.wrapping_add(1);
        }
        if desired.is_empty() {
            cfg.flags &= !CONFIG_F_WATCHED;
        } else {
            cfg.flags |= CONFIG_F_WATCHED;
        }
        if cfg != self.config {
            self.configure(&cfg)?;
            self.config = cfg;
        }
        Ok(())
    }

    /// Flows the flow table is sized for (`flow_table_size`): up to this
    /// many, none fails to find a place.
    pub fn flow_table_capacity(&self) -> u32 {
        self.layout.capacity
    }

    /// The sizes of the flow maps.
    pub fn flow_table_layout(&self) -> FlowTableLayout {
        self.layout
    }

    /// How many flows each flow map holds (one pass over the slots, a
    /// syscall per overflowed flow).
    pub fn flow_table_usage(&self) -> Result<FlowTableUsage, CaptureError> {
        let entries = |name: &'static str| -> Result<u64, CaptureError> {
            let map: HashMap<_, FlowKey, FlowStats> = typed_map(&self.ebpf, name)?;
            Ok(map.keys().filter(Result::is_ok).count() as u64)
        };
        Ok(FlowTableUsage {
            slots: self.slots.live_count() as u64,
            watched_overflow: entries(WATCHED_FLOWS_MAP)?,
            overflow: entries(FLOWS_MAP)?,
        })
    }

    /// Every flow: the flow table's, then the overflow maps'. Linear: one
    /// pass over the mapped slots, and two syscalls per overflowed flow.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowStats)>, CaptureError> {
        // Room for a full table up front (untouched room costs nothing).
        let mut out = Vec::with_capacity(self.layout.capacity as usize);
        self.flows_into(&mut out)?;
        Ok(out)
    }

    /// As [`Kernel::flows`], into `out` (cleared first). A poller that
    /// keeps `out` from one poll to the next saves most of the cost on a
    /// large table: a fresh vector of a full default table's flows (44 MB)
    /// page-faults its way in every time, which takes longer than reading
    /// the slots.
    pub fn flows_into(&self, out: &mut Vec<(FlowKey, FlowStats)>) -> Result<(), CaptureError> {
        out.clear();
        out.extend(self.slots.flows());
        for name in [WATCHED_FLOWS_MAP, FLOWS_MAP] {
            let overflow: HashMap<_, FlowKey, FlowStats> = typed_map(&self.ebpf, name)?;
            for entry in overflow.iter() {
                match entry {
                    // A flow is in one place only, unless two CPUs raced on
                    // its first packets; the table's entry wins.
                    Ok((key, stats)) => {
                        if !self.slots.contains(&key) {
                            out.push((key, stats));
                        }
                    }
                    // An entry evicted (or expired) between listing its key
                    // and reading it.
                    Err(MapError::KeyNotFound) => {}
                    Err(source) => return Err(map_error(name)(source)),
                }
            }
        }
        Ok(())
    }

    /// Removes flow entries (idle ones the agent expires).
    pub fn remove_flows(&mut self, keys: &[FlowKey]) -> Result<(), CaptureError> {
        let mut keys: Vec<FlowKey> = keys
            .iter()
            .filter(|k| !self.slots.free(k))
            .copied()
            .collect();
        for name in [WATCHED_FLOWS_MAP, FLOWS_MAP] {
            if keys.is_empty() {
                break;
            }
            let mut flows: HashMap<_, FlowKey, FlowStats> = typed_map_mut(&mut self.ebpf, name)?;
            let mut left = Vec::new();
            for key in keys {
                match flows.remove(&key) {
                    Ok(()) => {}
                    Err(e) if not_found(&e) => left.push(key),
                    Err(source) => return Err(map_error(name)(source)),
                }
            }
            keys = left;
        }
        Ok(())
    }

    /// Outcome counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, CaptureError> {
        let array: PerCpuArray<_, u64> = typed_map(&self.ebpf, COUNTERS_MAP)?;
        let mut out: Counters = [[0; COUNTERS_PER_HOOK as usize]; HOOKS as usize];
        for index in 0..COUNTERS_LEN {
            let values = array.get(&index, 0).map_err(map_error(COUNTERS_MAP))?;
            let hook = (index / COUNTERS_PER_HOOK) as usize;
            let counter = (index % COUNTERS_PER_HOOK) as usize;
            out[hook][counter] = values.iter().sum();
        }
        Ok(out)
    }

    /// Takes the SIP ring buffer out (for its own reader task).
    pub fn take_sip_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self
            .ebpf
            .take_map(SIP_RING_MAP)
            .ok_or(CaptureError::Missing(SIP_RING_MAP))?;
        RingBuf::try_from(map).map_err(map_error(SIP_RING_MAP))
    }

    /// Takes the RTCP ring buffer out (for the reader task).
    pub fn take_rtcp_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        use detector_common::rtcp::RTCP_RING_MAP;
        let map = self
            .ebpf
            .take_map(RTCP_RING_MAP)
            .ok_or(CaptureError::Missing(RTCP_RING_MAP))?;
        RingBuf::try_from(map).map_err(map_error(RTCP_RING_MAP))
    }

    /// Names of the maps in the object (for checks that the shared constants
    /// match the kernel side).
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(name, _)| name.to_string()).collect()
    }
}

/// Counters by name (`xdp_rtp`, `tc_sip_truncated`, ...), for status views.
pub fn describe_counters(c: &Counters) -> StdHashMap<String, u64> {
    let mut out = StdHashMap::new();
    for (hook, name) in [(0usize, "xdp"), (1, "tc")] {
        out.insert(
            format!("{name}_packets"),
            detector_common::counters::packets(&c[hook]),
        );
        for (index, outcome) in detector_common::counters::OUTCOMES
            .into_iter()
            .chain(detector_common::counters::EVENTS)
        {
            out.insert(format!("{name}_{outcome}"), c[hook][index as usize]);
        }
    }
    out
}

/// One of the object's maps as its type (`Array`, `HashMap`, ...), to read.
fn typed_map<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<&'a Map, Error = MapError>,
{
    let map = ebpf.map(name).ok_or(CaptureError::Missing(name))?;
    T::try_from(map).map_err(map_error(name))
}

/// As [`typed_map`], to write.
fn typed_map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or(CaptureError::Missing(name))?;
    T::try_from(map).map_err(map_error(name))
}

/// The key was not in the map (a lookup says so with `KeyNotFound`, a
/// delete with the syscall's ENOENT).
fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> CaptureError {
    move |source| CaptureError::Map {
        map,
        source: Box::new(source),
    }
}

fn attach_xdp_error(iface: &str, mode: XdpAttachMode, source: ProgramError) -> CaptureError {
    CaptureError::AttachXdp {
        iface: iface.to_string(),
        mode: mode.as_str(),
        source: Box::new(source),
        hint: if mode == XdpAttachMode::Drv {
            " (the driver may not support native XDP: try --xdp-mode skb or auto)"
        } else {
            ""
        },
    }
}

fn attach_tc_error(iface: &str, path: TcAttachPath, source: ProgramError) -> CaptureError {
    CaptureError::AttachTc {
        iface: iface.to_string(),
        path: path.as_str(),
        source: Box::new(source),
    }
}

/// Pins a link just attached at `path`; the pin keeps it attached after
/// the agent's handle on it closes.
fn pin_link(
    program: &'static str,
    link: Result<FdLink, aya::programs::links::LinkError>,
    path: &Path,
) -> Result<(), CaptureError> {
    let error = |reason: String| CaptureError::PinLink {
        program,
        path: path.display().to_string(),
        reason,
    };
    let link = link.map_err(|e| error(e.to_string()))?;
    link.pin(path).map(drop).map_err(|e| error(e.to_string()))
}

/// Removes a pin that may not exist.
fn remove_pin(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(pin = %path.display(), error = %e, "cannot remove a stale pin"),
    }
}

fn verifier_error(program: &'static str, source: ProgramError) -> CaptureError {
    match &source {
        ProgramError::LoadError { verifier_log, .. } => CaptureError::Verifier {
            program,
            log: verifier_log.to_string(),
            source: Box::new(source),
        },
        ProgramError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EPERM) => {
            CaptureError::Permission
        }
        _ => CaptureError::Verifier {
            program,
            log: String::new(),
            source: Box::new(source),
        },
    }
}

fn nix_if_index(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Before 5.11 BPF memory counted against RLIMIT_MEMLOCK; since then it is
/// charged to the cgroup. Raising it is harmless when allowed and pointless
/// when not (no CAP_SYS_RESOURCE), so a failure is only logged, once.
fn raise_memlock_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let limit = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: a plain syscall with a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
            tracing::debug!("cannot raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
        }
    });
}
