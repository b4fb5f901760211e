//! Pins on bpffs, so the kernel keeps counting through an agent restart:
//! every map under `<pin dir>/`, and the XDP and TCX links as
//! [`XDP_LINK_PIN`] and [`TC_LINK_PIN`]. A new agent adopts them: the maps
//! are reused (a stream's counters go on), and its own programs replace the
//! old ones through the pinned links (`bpf_link_update`, atomic: no packet
//! goes uncounted). The clsact/netlink TC path has no link to pin: its
//! filter has a fixed priority and handle ([`TC_FILTER_PRIORITY`],
//! [`TC_FILTER_HANDLE`]), stays attached when the agent stops, and is
//! replaced in place by the next one.
//!
//! Pins made by another build (a map of another size or shape) are not
//! adopted: they are removed, with one log line, and the agent starts clean.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::MapInfo,
    programs::{tc::TcHandle, TcAttachType},
};
use detector_common::{
    config::{DetectorConfig, CONFIG_MAP},
    counters::{COUNTERS_LEN, COUNTERS_MAP},
    flow::{
        EndpointKey, FlowKey, FlowSlot, FlowStats, FlowTableLayout, WatchedEndpoint, FLOWS_MAP,
        FLOW_SLOTS_MAP, WATCHED_FLOWS_MAP, WATCHED_MAP,
    },
    rtcp::{RTCP_RING_BYTES, RTCP_RING_MAP},
    sip::{SIP_RING_BYTES, SIP_RING_MAP},
};

/// The pin of the XDP program's link.
pub const XDP_LINK_PIN: &str = "link_xdp";
/// The pin of the TC program's TCX link.
pub const TC_LINK_PIN: &str = "link_tc";
/// The netlink TC filter's priority and handle: fixed, so a restarted agent
/// finds its predecessor's filter and replaces it instead of adding another.
pub const TC_FILTER_PRIORITY: u16 = 0xde7;
pub const TC_FILTER_HANDLE: TcHandle = TcHandle::new(0, 0xde7);

/// A map of the object as this build creates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn size<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// Every map of the object, as this build shapes it for `layout`. All are
/// pinned (a test checks the object has no other).
pub fn map_shapes(layout: &FlowTableLayout) -> [MapShape; 8] {
    let shape = |name, key_size, value_size, max_entries| MapShape {
        name,
        key_size,
        value_size,
        max_entries,
    };
    [
        shape(FLOW_SLOTS_MAP, 4, size::<FlowSlot>(), layout.slots),
        shape(
            WATCHED_FLOWS_MAP,
            size::<FlowKey>(),
            size::<FlowStats>(),
            layout.watched_overflow,
        ),
        shape(
            FLOWS_MAP,
            size::<FlowKey>(),
            size::<FlowStats>(),
            layout.overflow,
        ),
        shape(
            WATCHED_MAP,
            size::<EndpointKey>(),
            size::<WatchedEndpoint>(),
            layout.watched_endpoints,
        ),
        shape(COUNTERS_MAP, 4, 8, COUNTERS_LEN),
        shape(CONFIG_MAP, 4, size::<DetectorConfig>(), 1),
        shape(SIP_RING_MAP, 0, 0, SIP_RING_BYTES),
        shape(RTCP_RING_MAP, 0, 0, RTCP_RING_BYTES),
    ]
}

/// `statfs`'s magic number of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted by convention.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Whether `path` (or its nearest existing ancestor) lives on bpffs.
fn on_bpffs(path: &Path) -> bool {
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return false;
    };
    let Ok(c_path) = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed struct the call fills.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = stat.f_type as i64;
    magic == BPF_FS_MAGIC
}

/// Makes sure `dir` can hold pins: bpffs is mounted on /sys/fs/bpf when
/// it is not (as bpftool does; systemd mounts it at boot, a bare VM or
/// container may not). Returns whether it mounted it.
pub fn ensure_bpffs(dir: &Path) -> io::Result<bool> {
    if on_bpffs(dir) {
        return Ok(false);
    }
    let mount = Path::new(BPFFS_MOUNT);
    if !dir.starts_with(mount) || !mount.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not on a bpffs (mount one: mount -t bpf bpf DIR)",
            dir.display()
        )));
    }
    let target = std::ffi::CString::new(BPFFS_MOUNT).map_err(io::Error::other)?;
    let kind = c"bpf";
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// What was found under the pin directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No pins: a first start (or after `--cleanup`).
    Nothing,
    /// Every map pinned with this build's shape: adopt them.
    Compatible,
    /// Pins this build cannot use; why.
    Foreign(String),
}

/// Checks the pins under `dir` against this build's maps.
pub fn inspect(dir: &Path, shapes: &[MapShape]) -> Found {
    let mut present = 0;
    for shape in shapes {
        let path = dir.join(shape.name);
        if !path.exists() {
            continue;
        }
        present += 1;
        let info = match MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(e) => return Found::Foreign(format!("{} cannot be opened: {e}", path.display())),
        };
        let theirs = MapShape {
            name: shape.name,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if theirs != *shape {
            return Found::Foreign(format!(
                "map {} is {}/{}/{} (key/value bytes, entries), this build's is {}/{}/{}",
                shape.name,
                theirs.key_size,
                theirs.value_size,
                theirs.max_entries,
                shape.key_size,
                shape.value_size,
                shape.max_entries
            ));
        }
    }
    match present {
        0 => Found::Nothing,
        n if n == shapes.len() => Found::Compatible,
        n => Found::Foreign(format!("{n} of the {} maps are pinned", shapes.len())),
    }
}

/// Removes every pin under `dir` (links first: the programs detach once
/// no agent holds them), and the netlink TC filter on `iface` if there is
/// one. Returns what was removed.
pub fn remove(dir: &Path, iface: &str) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if dir.exists() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        entries.sort_by_key(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
        });
        for path in entries {
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
        std::fs::remove_dir(dir)?;
    }
    if detach_netlink_filter(iface) {
        removed.push(PathBuf::from(format!("tc filter on {iface} egress")));
    }
    Ok(removed)
}

/// Detaches this agent's netlink TC filter from `iface`; whether there was
/// one.
pub fn detach_netlink_filter(iface: &str) -> bool {
    use aya::programs::{links::Link, tc::SchedClassifierLink};
    SchedClassifierLink::attached(
        iface,
        TcAttachType::Egress,
        TC_FILTER_PRIORITY,
        TC_FILTER_HANDLE,
        None,
    )
    .ok()
    .is_some_and(|link| link.detach().is_ok())
}
