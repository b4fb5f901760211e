//! What the agent publishes for readers (the API, the CLI through it, and
//! the metrics scrape): a [`Snapshot`] the engine swaps in after every poll,
//! the SIP intake counters and each task's health. Readers take an `Arc` and
//! never hold a lock the engine or the SIP reader waits on.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use detector_common::flow::{FlowKey, FlowStats};
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    calls::{
        detect::Flag,
        engine::LiveCall,
        records::CallReport,
        streams::{StreamRecord, TimeBase},
        CallDirection,
    },
    kernel::{Counters, TcAttachPath, XdpAttachMode},
};

/// Ended calls kept for the API.
pub const KEEP_ENDED: usize = 1000;
/// Events kept for the API.
pub const KEEP_EVENTS: usize = 10_000;

/// Something operators want to hear about.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    FlagRaised {
        call_id: String,
        flag: Flag,
    },
    FlagCleared {
        call_id: String,
        flag: Flag,
    },
    CallEnded {
        call_id: String,
        bucket: Option<&'static str>,
        end_epoch: Option<f64>,
    },
}

/// The kernel side as of the last poll.
#[derive(Clone, Debug, Default)]
pub struct KernelView {
    pub counters: Counters,
    /// Flows that vanished from the kernel's maps without the agent
    /// expiring them (evicted), since start.
    pub evictions: u64,
    /// Idle flows the agent removed, since start.
    pub expired: u64,
    pub watched_endpoints: usize,
}

/// The state after one poll. Immutable once published.
#[derive(Debug)]
pub struct Snapshot {
    /// The poll's instant (Unix seconds) and the flows' clock.
    pub now: f64,
    pub time: TimeBase,
    /// Every live flow (RTP and RTCP) as the kernel had it.
    pub flows: Arc<Vec<(FlowKey, FlowStats)>>,
    /// Calls up now.
    pub calls: Vec<LiveCall>,
    /// The flows of every call up, as positions in `flows` with their
    /// direction in the call; a call holds its range ([`Snapshot::flows_of`]).
    pub call_flows: Vec<(u32, CallDirection)>,
    /// The most recent ended calls, oldest first, at most [`KEEP_ENDED`].
    pub ended: Arc<VecDeque<Arc<CallReport>>>,
    /// Flag and call-end events, numbered, oldest first, at most [`KEEP_EVENTS`].
    pub events: Arc<VecDeque<(u64, Arc<AgentEvent>)>>,
    pub next_event: u64,
    pub kernel: KernelView,
    pub polls: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            now: 0.0,
            time: TimeBase::Capture,
            flows: Arc::default(),
            calls: Vec::new(),
            call_flows: Vec::new(),
            ended: Arc::default(),
            events: Arc::default(),
            next_event: 0,
            kernel: KernelView::default(),
            polls: 0,
        }
    }
}

impl Snapshot {
    /// A live call's flows: positions in `flows`, with their direction.
    pub fn flows_of(&self, live: &LiveCall) -> &[(u32, CallDirection)] {
        self.call_flows
            .get(live.flows.start as usize..live.flows.end as usize)
            .unwrap_or_default()
    }

    /// A live call's report, built on demand (readers pay for it, not the
    /// engine's poll).
    pub fn report(&self, live: &LiveCall) -> CallReport {
        let flows = self.flows_of(live);
        let mut mine: Vec<(&FlowKey, &FlowStats, CallDirection)> = flows
            .iter()
            .filter_map(|(i, d)| self.flows.get(*i as usize).map(|(k, s)| (k, s, *d)))
            .collect();
        mine.sort_unstable_by_key(|(k, s, _)| (s.first_seen_ns, **k));
        let mut streams = Vec::with_capacity(mine.len());
        let mut rtcp = Vec::new();
        for (key, stats, direction) in mine {
            let record = (StreamRecord::new(key, stats, self.time), direction);
            if key.kind == detector_common::flow::KIND_RTP {
                streams.push(record);
            } else {
                rtcp.push(record);
            }
        }
        let mut report = CallReport::new(
            live.call.clone(),
            live.flags.clone(),
            &streams,
            &rtcp,
            self.now,
        );
        report.set_quality(&live.quality);
        report
    }

    /// RTP flows, oldest first.
    pub fn rtp_flows(&self) -> Vec<(usize, &(FlowKey, FlowStats))> {
        let mut out: Vec<_> = self
            .flows
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| k.kind == detector_common::flow::KIND_RTP)
            .collect();
        out.sort_by_key(|(_, (k, s))| (s.first_seen_ns, *k));
        out
    }
}

/// SIP and RTCP intake, counted by the reader and the engine as it happens.
#[derive(Debug, Default)]
pub struct Intake {
    pub sip_frames: AtomicU64,
    pub sip_messages: AtomicU64,
    pub sip_parse_errors: AtomicU64,
    /// What SIP reassembly dropped (totals): IP fragments, TCP bytes.
    pub sip_fragments_dropped: AtomicU64,
    pub sip_tcp_bytes_dropped: AtomicU64,
    /// RTCP packets read for their reports, and those that were not a valid
    /// compound (SRTCP, damage: counted for liveness only).
    pub rtcp_packets: AtomicU64,
    pub rtcp_undecodable: AtomicU64,
}

impl Intake {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Where a task is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    Starting,
    Running,
    /// It failed (or stopped while the agent was running): why.
    Failed(String),
    Stopped,
}

/// Each task's state, for `/readyz` and `detector status`.
#[derive(Debug)]
pub struct Health {
    tasks: Mutex<Vec<(&'static str, TaskState)>>,
    /// The last poll's error, if it failed.
    last_poll_error: Mutex<Option<String>>,
}

impl Health {
    pub fn new(tasks: &[&'static str]) -> Self {
        Self {
            tasks: Mutex::new(tasks.iter().map(|t| (*t, TaskState::Starting)).collect()),
            last_poll_error: Mutex::new(None),
        }
    }

    pub fn set(&self, task: &'static str, state: TaskState) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        match tasks.iter_mut().find(|(t, _)| *t == task) {
            Some((_, s)) => *s = state,
            None => tasks.push((task, state)),
        }
    }

    pub fn tasks(&self) -> Vec<(&'static str, TaskState)> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_poll_error(&self, error: Option<String>) {
        *self
            .last_poll_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = error;
    }

    pub fn poll_error(&self) -> Option<String> {
        self.last_poll_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why the agent is not ready, if it is not.
    pub fn not_ready(&self, polls: u64) -> Option<String> {
        for (task, state) in self.tasks() {
            match state {
                TaskState::Running => {}
                TaskState::Starting => return Some(format!("{task} is starting")),
                TaskState::Failed(why) => return Some(format!("{task} failed: {why}")),
                TaskState::Stopped => return Some(format!("{task} stopped")),
            }
        }
        if let Some(error) = self.poll_error() {
            return Some(error);
        }
        (polls == 0).then(|| "maps not read yet".to_string())
    }
}

/// Everything a reader needs, cheap to clone.
#[derive(Clone, Debug)]
pub struct AgentView {
    pub iface: String,
    /// The mode in use (`auto` resolved).
    pub xdp_mode: XdpAttachMode,
    pub tc_path: TcAttachPath,
    pub restart: RestartView,
    pub started: Instant,
    pub flow_table_capacity: u64,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub intake: Arc<Intake>,
    pub health: Arc<Health>,
}

/// What this agent took over from the one before it.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RestartView {
    /// The kernel's maps (its counts go on).
    pub maps_adopted: bool,
    /// The attached programs, replaced in place (no packet missed).
    pub programs_adopted: bool,
    /// Calls in progress resumed from the journal.
    pub resumed_calls: usize,
}

impl AgentView {
    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }
}
