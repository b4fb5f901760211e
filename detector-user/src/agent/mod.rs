//! The agent: loads and attaches the programs, then runs four tasks.
//!
//! - the **poller** owns the kernel handle: it reads the flow table and
//!   counters every poll interval, expires idle flows, keeps the kernel's
//!   watched endpoints in step, and sends what it read to the engine;
//! - the **SIP reader** drains the kernel's ring buffers (SIP's and RTCP's)
//!   as they fill and sends the frames to the engine;
//! - the **engine** (a thread of its own) owns dialogs, flows and detection,
//!   takes both feeds in arrival order, writes call records and publishes a
//!   snapshot after every poll;
//! - the **API** serves that snapshot and the metrics.
//!
//! No reader holds a lock the engine or the SIP reader waits on, and the SIP
//! reader never waits for a poll. On shutdown the feeds stop, the engine
//! drains what they sent, and every task is awaited under a grace period.

mod engine_task;
pub mod journal;
mod poller;
mod sip_reader;

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};

use crate::{
    calls::streams::TimeBase,
    config::AgentConfig,
    kernel::Kernel,
    metrics::Metrics,
    view::{AgentView, Health, Intake, Snapshot, TaskState},
};

/// What the engine is fed, in arrival order.
#[derive(Debug)]
pub enum EngineInput {
    /// SIP frames from the ring: (Unix seconds, Ethernet frame).
    Sip(Vec<(f64, Vec<u8>)>),
    /// RTCP frames from their ring, the same way.
    Rtcp(Vec<(f64, Vec<u8>)>),
    /// The flow table as read by one poll (boxed: the counters are large).
    Poll(Box<PollInput>),
}

/// The flows as read from the kernel.
pub type FlowList = Vec<(
    detector_common::flow::FlowKey,
    detector_common::flow::FlowStats,
)>;

/// One poll's reading of the kernel.
#[derive(Debug)]
pub struct PollInput {
    /// Live flows (idle ones already removed).
    pub flows: FlowList,
    pub counters: crate::kernel::Counters,
    /// Idle flows removed by this poll.
    pub expired: usize,
    pub time: TimeBase,
    pub now: f64,
    /// How long reading the maps took.
    pub read_s: f64,
}

/// Inputs queued for the engine: SIP batches and polls. When the engine
/// falls this far behind, the SIP reader waits and the kernel's ring buffer
/// absorbs (and counts) the rest.
pub const ENGINE_QUEUE: usize = 4096;

pub const TASK_POLLER: &str = "poller";
pub const TASK_SIP_READER: &str = "sip_reader";
pub const TASK_ENGINE: &str = "engine";
pub const TASK_API: &str = "api";

/// Tunes glibc's malloc for a long-running agent whose large buffers (a
/// poll's flow list, an API answer about 20,000 calls: tens of MB) come
/// and go: at most two arenas (each thread's own arena otherwise keeps
/// what it freed), and a fixed mmap threshold, so a large buffer is always
/// mapped and returned whole when freed (glibc otherwise raises the
/// threshold after such frees and serves the next one from a heap it cannot
/// shrink). Measured at 20,000 calls: about 30 MB less resident. Call it
/// before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// `detector agent --cleanup`: detaches the programs from the interface,
/// removes their pins and the journal of calls in progress; returns what
/// was removed.
pub fn cleanup(cfg: &AgentConfig) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let dir = cfg.pin_dir();
    let mut removed: Vec<String> = crate::kernel::pins::remove(&dir, &cfg.iface)
        .with_context(|| format!("cannot remove the pins under {}", dir.display()))?
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();
    let journal = cfg.journal_path();
    match std::fs::remove_file(&journal) {
        Ok(()) => removed.push(journal.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot remove {}", journal.display()));
        }
    }
    Ok(removed)
}

/// Runs the agent until `shutdown` resolves. The programs stay attached
/// and their maps pinned for the next agent (`cleanup` removes them).
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    cfg.validate()?;
    crate::kernel::check_kernel()?;
    crate::kernel::check_interface(&cfg.iface)?;
    let (mut journal, recovered) = journal::Journal::open(&cfg.journal_path())?;
    if let Some(damage) = &recovered.damage {
        tracing::warn!(
            journal = %cfg.journal_path().display(),
            "the journal of calls in progress was not read whole ({damage})"
        );
    }
    let mut kernel = Kernel::load_pinned(
        &cfg.kernel_config(),
        &cfg.pin_dir(),
        &cfg.iface,
        recovered.attachment.map(|a| a.map_layout),
    )?;
    let attachment = kernel.attach(&cfg.iface, cfg.xdp_mode, recovered.attachment)?;
    journal.attachment(&attachment);
    journal.sync()?;
    let ring = kernel.take_sip_ring()?;
    let rtcp_ring = kernel.take_rtcp_ring()?;
    tracing::info!(
        iface = %cfg.iface,
        xdp_mode = attachment.xdp_mode.as_str(),
        tc_attach = attachment.tc_path.as_str(),
        rtp_ports = %format!("{}-{}", cfg.rtp_ports.min, cfg.rtp_ports.max),
        sip_ports = ?cfg.sip_ports,
        maps_adopted = kernel.maps_adopted(),
        programs_adopted = attachment.adopted,
        pins = %cfg.pin_dir().display(),
        "programs attached (XDP ingress, TC egress)"
    );
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, "API listening");
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) if addr != cfg.listen => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
            tracing::info!(listen = %addr, "metrics listening");
            Some(l)
        }
        _ => None,
    };
    let calls_log = match &cfg.calls_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the calls log {}", path.display()))?,
        ),
        None => None,
    };

    let metrics = Arc::new(Metrics::new());
    metrics
        .flow_table_capacity
        .set(i64::from(kernel.flow_table_capacity()));
    let health = Arc::new(Health::new(&[
        TASK_POLLER,
        TASK_SIP_READER,
        TASK_ENGINE,
        TASK_API,
    ]));
    let intake = Arc::new(Intake::default());
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (input_tx, input_rx) = mpsc::channel(ENGINE_QUEUE);
    let (watched_tx, watched_rx) = watch::channel(Arc::default());
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel();
    let maps_adopted = kernel.maps_adopted();
    let (engine, resumed_calls) = engine_task::spawn(
        &cfg,
        input_rx,
        engine_task::Outputs {
            snapshot: snapshot_tx,
            watched: watched_tx,
            recycle: recycle_tx,
            metrics: metrics.clone(),
            intake: intake.clone(),
            health: health.clone(),
            calls_log,
        },
        engine_task::State {
            journal,
            recovered,
            calls_log_path: cfg.calls_log.clone(),
            maps_adopted,
        },
    )?;
    let view = AgentView {
        iface: cfg.iface.clone(),
        xdp_mode: attachment.xdp_mode,
        tc_path: attachment.tc_path,
        restart: crate::view::RestartView {
            maps_adopted,
            programs_adopted: attachment.adopted,
            resumed_calls,
        },
        started: std::time::Instant::now(),
        flow_table_capacity: u64::from(kernel.flow_table_capacity()),
        snapshot: snapshot_rx,
        intake: intake.clone(),
        health: health.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let poller = tokio::spawn(supervised(
        TASK_POLLER,
        health.clone(),
        poller::run(
            kernel,
            cfg.clone(),
            input_tx.clone(),
            watched_rx,
            recycle_rx,
            health.clone(),
            stop_rx.clone(),
        ),
    ));
    let sip = tokio::spawn(supervised(
        TASK_SIP_READER,
        health.clone(),
        sip_reader::run(ring, rtcp_ring, input_tx, intake, stop_rx.clone()),
    ));
    health.set(TASK_API, TaskState::Running);
    let api = tokio::spawn(serve(
        listener,
        crate::api::router(view, metrics.clone()),
        stop_rx.clone(),
    ));
    let metrics_api = metrics_listener.map(|l| {
        tokio::spawn(serve(
            l,
            crate::api::metrics_router(metrics),
            stop_rx.clone(),
        ))
    });

    shutdown.await;
    tracing::info!("stopping: draining the SIP reader, the poller and the engine");
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(5);
    // The poller owns the kernel handle; the programs stay attached (pinned).
    let poller = tokio::time::timeout(grace, poller).await;
    let _ = tokio::time::timeout(grace, sip).await;
    // With both feeds closed the engine drains its queue and returns.
    match tokio::time::timeout(grace, tokio::task::spawn_blocking(move || engine.join())).await {
        Ok(Ok(Ok(()))) => {}
        _ => tracing::warn!("the engine did not finish in time; ended calls may be unrecorded"),
    }
    let _ = tokio::time::timeout(grace, api).await;
    if let Some(task) = metrics_api {
        let _ = tokio::time::timeout(grace, task).await;
    }
    match poller {
        Ok(Ok(())) => tracing::info!(
            pins = %cfg.pin_dir().display(),
            "stopped; the programs stay attached and keep counting for the next start (`detector agent --cleanup` removes them)"
        ),
        _ => tracing::warn!("poller did not stop in time"),
    }
    Ok(())
}

/// Runs a task; whatever way it ends while the agent runs, its health says
/// so (a task that stops early makes `/readyz` fail and names it).
async fn supervised(
    name: &'static str,
    health: Arc<Health>,
    task: impl std::future::Future<Output = Result<(), String>>,
) {
    health.set(name, TaskState::Running);
    match task.await {
        Ok(()) => health.set(name, TaskState::Stopped),
        Err(why) => {
            tracing::error!(task = name, error = %why, "task failed");
            health.set(name, TaskState::Failed(why));
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// The kernel's monotonic clock and the real-time clock, read together.
#[derive(Clone, Copy)]
pub struct Clock {
    pub mono_ns: u64,
    pub real_ns: u64,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            mono_ns: clock_ns(libc::CLOCK_MONOTONIC),
            real_ns: clock_ns(libc::CLOCK_REALTIME),
        }
    }

    pub fn time_base(self) -> TimeBase {
        TimeBase::Live {
            mono_ns: self.mono_ns,
            real_ns: self.real_ns,
        }
    }

    /// Unix seconds of a kernel timestamp.
    pub fn to_epoch(self, mono_ns: u64) -> f64 {
        self.time_base().epoch(mono_ns)
    }

    pub fn real_epoch(self) -> f64 {
        self.real_ns as f64 / 1e9
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
