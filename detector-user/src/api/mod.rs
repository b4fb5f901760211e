//! The local HTTP API.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

use crate::{
    calls::{records::CallReport, streams::StreamRecord},
    metrics::Metrics,
    view::{AgentView, Snapshot},
};

/// The API, with /metrics.
pub fn router(view: AgentView, metrics: Arc<Metrics>) -> Router {
    let metrics_route = metrics_routes(metrics);
    Router::new()
        .route("/api/flows", get(flows))
        .route("/api/calls", get(calls))
        .route("/api/calls/{call_id}", get(call))
        .route("/api/events", get(events))
        .route("/api/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(view)
        .merge(metrics_route)
}

/// /metrics alone (for --metrics-listen); other paths get the JSON 404.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    metrics_routes(metrics).fallback(not_found)
}

fn metrics_routes(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the
/// classic text format.
async fn render_metrics(
    State(metrics): State<Arc<Metrics>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let wants_openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if wants_openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode_prometheus(),
        )
    };
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A JSON error with a 4xx/5xx status.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn bad_query(rejection: &QueryRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("bad query: {}", rejection.body_text()),
    )
}

/// JSON, pretty when asked (`?pretty=true`, what `detector ... --json`
/// prints as it comes); serialised straight from the snapshot's objects.
fn json_response(value: &impl serde::Serialize, pretty: bool) -> Response {
    let body = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    match body {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                bytes,
            )
                .into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Runs a reader's work on the blocking pool: building and serialising
/// thousands of calls must not hold a runtime worker (the SIP reader runs
/// there).
async fn off_runtime(work: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowsQuery {
    /// Only flows of calls with an open flag.
    flagged: Option<bool>,
    /// Only flows of this call.
    call: Option<String>,
    pretty: Option<bool>,
}

/// A stream's identity in call records.
type StreamId = (IpAddr, u16, IpAddr, u16, String);

async fn flows(
    State(view): State<AgentView>,
    q: Result<Query<FlowsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    let snap = view.snapshot();
    off_runtime(move || {
        let flagged = q.flagged.unwrap_or(false);
        let filtered = flagged || q.call.is_some();
        let wanted = |call_id: &str, is_flagged: bool| {
            q.call.as_deref().is_none_or(|id| id == call_id) && (!flagged || is_flagged)
        };
        let mut indices: HashSet<u32> = HashSet::new();
        let mut ended_ids: HashSet<StreamId> = HashSet::new();
        if filtered {
            for live in &snap.calls {
                let open = live.flags.iter().any(|f| f.cleared_epoch.is_none());
                if wanted(&live.call.call_id, open) {
                    indices.extend(snap.flows_of(live).iter().map(|(i, _)| *i));
                }
            }
            for report in snap.ended.iter() {
                if wanted(&report.call.call_id, report.flagged()) {
                    ended_ids.extend(
                        report
                            .streams
                            .iter()
                            .map(|s| (s.src, s.sport, s.dst, s.dport, s.ssrc.clone())),
                    );
                }
            }
        }
        let record = |(key, stats): &(
            detector_common::flow::FlowKey,
            detector_common::flow::FlowStats,
        )| StreamRecord::new(key, stats, snap.time);
        let picks: Vec<usize> = snap
            .rtp_flows()
            .into_iter()
            .filter(|(i, flow)| {
                !filtered || indices.contains(&(*i as u32)) || {
                    let f = record(flow);
                    ended_ids.contains(&(f.src, f.sport, f.dst, f.dport, f.ssrc))
                }
            })
            .map(|(i, _)| i)
            .collect();
        if q.pretty.unwrap_or(false) {
            #[derive(serde::Serialize)]
            struct FlowsBody {
                flows: Vec<StreamRecord>,
            }
            let flows = picks.iter().map(|&i| record(&snap.flows[i])).collect();
            return json_response(&FlowsBody { flows }, true);
        }
        stream_list(Arc::new(FlowsAnswer { snap, picks }))
    })
    .await
}

/// `/api/flows`: RTP flows picked from one snapshot (positions in its flow
/// list).
struct FlowsAnswer {
    snap: Arc<Snapshot>,
    picks: Vec<usize>,
}

impl StreamedList for FlowsAnswer {
    const FIELD: &'static str = "flows";
    /// About 400 bytes.
    const BYTES_PER_ITEM: usize = 640;

    fn len(&self) -> usize {
        self.picks.len()
    }

    fn write(&self, index: usize, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let (key, stats) = &self.snap.flows[self.picks[index]];
        serde_json::to_writer(out, &StreamRecord::new(key, stats, self.snap.time))
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    /// Only calls with a flag still open.
    flagged: Option<bool>,
    /// trying, early, confirmed or ended.
    state: Option<String>,
    pretty: Option<bool>,
}

#[derive(serde::Serialize)]
struct CallsBody<'a> {
    calls: Vec<&'a CallReport>,
}

/// Calls up now, then recently ended ones (newest last).
async fn calls(
    State(view): State<AgentView>,
    q: Result<Query<CallsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    let wanted_state = match q.state.as_deref() {
        None => None,
        Some(s @ ("trying" | "early" | "confirmed" | "ended")) => Some(s.to_string()),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("state must be trying, early, confirmed or ended, not {other:?}"),
            )
        }
    };
    let filter = CallFilter {
        flagged: q.flagged.unwrap_or(false),
        state: wanted_state,
    };
    let snap = view.snapshot();
    if q.pretty.unwrap_or(false) {
        return off_runtime(move || {
            let calls: Vec<CallReport> = filter
                .picks(&snap)
                .iter()
                .map(|p| p.item(&snap).report(&snap))
                .collect();
            json_response(
                &CallsBody {
                    calls: calls.iter().collect(),
                },
                true,
            )
        })
        .await;
    }
    let picks = filter.picks(&snap);
    stream_list(Arc::new(CallsAnswer { snap, picks }))
}

/// Which calls `/api/calls` lists.
#[derive(Clone)]
struct CallFilter {
    /// Only calls with a flag still open.
    flagged: bool,
    /// Only calls in this state.
    state: Option<String>,
}

impl CallFilter {
    /// Recently ended calls (oldest first), then the calls up now.
    fn picks(&self, snap: &Snapshot) -> Vec<CallPick> {
        let state_ok = |state| self.state.as_deref().is_none_or(|s| state_name(state) == s);
        let ended = snap
            .ended
            .iter()
            .enumerate()
            .filter(|(_, c)| (!self.flagged || c.flagged()) && state_ok(c.call.state))
            .map(|(i, _)| CallPick::Ended(i));
        let live = snap
            .calls
            .iter()
            .enumerate()
            .filter(|(_, c)| !self.flagged || c.flags.iter().any(|f| f.cleared_epoch.is_none()))
            .filter(|(_, c)| state_ok(c.call.state))
            .map(|(i, _)| CallPick::Live(i));
        ended.chain(live).collect()
    }
}

/// A call an answer lists: its place in the snapshot's ended or live calls.
#[derive(Clone, Copy)]
enum CallPick {
    Ended(usize),
    Live(usize),
}

impl CallPick {
    fn item(self, snap: &Snapshot) -> CallItem<'_> {
        match self {
            Self::Ended(i) => CallItem::Ended(&snap.ended[i]),
            Self::Live(i) => CallItem::Live(&snap.calls[i]),
        }
    }
}

/// `/api/calls`: the calls picked from one snapshot.
struct CallsAnswer {
    snap: Arc<Snapshot>,
    picks: Vec<CallPick>,
}

impl StreamedList for CallsAnswer {
    const FIELD: &'static str = "calls";
    /// About 1,450 bytes with its voice quality.
    const BYTES_PER_ITEM: usize = 2048;

    fn len(&self) -> usize {
        self.picks.len()
    }

    fn write(&self, index: usize, out: &mut Vec<u8>) -> serde_json::Result<()> {
        self.picks[index].item(&self.snap).write(&self.snap, out)
    }
}

/// A call to list: ended (its record is made) or live (built on demand).
enum CallItem<'a> {
    Ended(&'a Arc<CallReport>),
    Live(&'a crate::calls::engine::LiveCall),
}

impl CallItem<'_> {
    fn report(&self, snap: &Snapshot) -> CallReport {
        match self {
            Self::Ended(c) => CallReport::clone(c),
            Self::Live(c) => snap.report(c),
        }
    }

    fn write(&self, snap: &Snapshot, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            Self::Ended(c) => serde_json::to_writer(out, &***c),
            Self::Live(c) => {
                let fields = c
                    .call_json
                    .get_or_init(|| crate::calls::records::call_fields_json(&c.call));
                snap.report(c).write_json_with(fields, out)
            }
        }
    }
}

/// What a streamed answer lists: `{"FIELD":[item, ...]}`.
trait StreamedList: Send + Sync + 'static {
    const FIELD: &'static str;
    /// More than an item takes in JSON, so a chunk's buffer never grows by
    /// copying.
    const BYTES_PER_ITEM: usize;
    fn len(&self) -> usize;
    fn write(&self, index: usize, out: &mut Vec<u8>) -> serde_json::Result<()>;
}

/// Items per chunk of a streamed answer: small enough that an answer for
/// tens of thousands of calls or flows never sits whole in memory.
const ITEMS_PER_CHUNK: usize = 256;
/// Threads serialising one answer, each writing every `WRITERS`th chunk.
const WRITERS: usize = 2;
/// Chunks a writer may have made ahead of the client.
const CHUNKS_AHEAD: usize = 2;

/// A chunk of an answer, or why it could not be made.
type Chunk = std::io::Result<Vec<u8>>;

/// The list as JSON, streamed in chunks as the writers make them: the
/// answer's memory is a few chunks whatever its length, and a client that
/// goes away stops the writers.
fn stream_list<L: StreamedList>(list: Arc<L>) -> Response {
    let mut chunks = Vec::with_capacity(WRITERS);
    for writer in 0..WRITERS {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
        let list = list.clone();
        tokio::task::spawn_blocking(move || write_chunks(&*list, writer, &tx));
        chunks.push(rx);
    }
    let body = axum::body::Body::from_stream(InOrder { chunks, next: 0 });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Writes chunks `writer`, `writer + WRITERS`, ... of the answer to `tx`.
fn write_chunks<L: StreamedList>(list: &L, writer: usize, tx: &tokio::sync::mpsc::Sender<Chunk>) {
    let len = list.len();
    let last = len.div_ceil(ITEMS_PER_CHUNK).max(1) - 1;
    for index in (writer..=last).step_by(WRITERS) {
        let items = index * ITEMS_PER_CHUNK..len.min((index + 1) * ITEMS_PER_CHUNK);
        let mut out = Vec::with_capacity(items.len() * L::BYTES_PER_ITEM + 32);
        if index == 0 {
            out.extend_from_slice(format!("{{\"{}\":[", L::FIELD).as_bytes());
        }
        let mut result = Ok(());
        for item in items {
            if item > 0 {
                out.push(b',');
            }
            result = list.write(item, &mut out);
            if result.is_err() {
                break;
            }
        }
        if index == last {
            out.extend_from_slice(b"]}\n");
        }
        let chunk = result.map(|()| out).map_err(std::io::Error::other);
        if tx.blocking_send(chunk).is_err() {
            return;
        }
    }
}

/// The writers' chunks in the answer's order: chunk `k` comes from writer
/// `k % WRITERS`, so when that writer has none, the answer is complete.
struct InOrder {
    chunks: Vec<tokio::sync::mpsc::Receiver<Chunk>>,
    next: usize,
}

impl futures_core::Stream for InOrder {
    type Item = Chunk;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Chunk>> {
        let next = self.next;
        let polled = self.chunks[next].poll_recv(cx);
        if let std::task::Poll::Ready(Some(_)) = &polled {
            self.next = (next + 1) % self.chunks.len();
        }
        polled
    }
}

fn state_name(state: crate::calls::CallState) -> &'static str {
    use crate::calls::CallState;
    match state {
        CallState::Trying => "trying",
        CallState::Early => "early",
        CallState::Confirmed => "confirmed",
        CallState::Ended => "ended",
    }
}

/// One call, up or recently ended, with its streams, flag timeline and SDP.
async fn call(State(view): State<AgentView>, Path(call_id): Path<String>) -> Response {
    let snap = view.snapshot();
    off_runtime(move || {
        let live = snap
            .calls
            .iter()
            .find(|c| c.call.call_id == call_id)
            .map(|c| snap.report(c));
        let found = live.as_ref().or_else(|| {
            snap.ended
                .iter()
                .rev()
                .find(|c| c.call.call_id == call_id)
                .map(|c| &**c)
        });
        match found {
            Some(c) => json_response(&json!({ "call": c }), false),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no call {call_id:?} (up now or among the last ended)"),
            ),
        }
    })
    .await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<u64>,
}

/// Flag and call-end events after the `since` cursor.
async fn events(
    State(view): State<AgentView>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    let snap = view.snapshot();
    let since = q.since.unwrap_or(0);
    let events: Vec<serde_json::Value> = snap
        .events
        .iter()
        .filter(|(id, _)| *id > since)
        .map(|(id, e)| {
            let mut v = serde_json::to_value(&**e).unwrap_or_default();
            v["id"] = json!(id);
            v
        })
        .collect();
    json_response(&json!({ "events": events, "next": snap.next_event }), false)
}

/// Ready once every task runs and the maps were read without error.
async fn readyz(State(view): State<AgentView>) -> Response {
    let snap = view.snapshot();
    match view.health.not_ready(snap.polls) {
        None => Json(json!({ "ready": true })).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "error": why })),
        )
            .into_response(),
    }
}

async fn status(State(view): State<AgentView>) -> Response {
    let snap: Arc<Snapshot> = view.snapshot();
    let counters = crate::kernel::describe_counters(&snap.kernel.counters);
    let rtp = snap
        .flows
        .iter()
        .filter(|(k, _)| k.kind == detector_common::flow::KIND_RTP)
        .count();
    let tasks: serde_json::Map<String, serde_json::Value> = view
        .health
        .tasks()
        .into_iter()
        .map(|(task, state)| {
            let text = match state {
                crate::view::TaskState::Starting => "starting".to_string(),
                crate::view::TaskState::Running => "running".to_string(),
                crate::view::TaskState::Stopped => "stopped".to_string(),
                crate::view::TaskState::Failed(why) => format!("failed: {why}"),
            };
            (task.to_string(), json!(text))
        })
        .collect();
    use crate::view::Intake;
    Json(json!({
        "version": crate::version(),
        "iface": view.iface,
        "xdp_mode": view.xdp_mode,
        "tc_attach": view.tc_path,
        "restart": view.restart,
        "programs": [
            { "name": crate::kernel::XDP_PROGRAM, "hook": "xdp", "direction": "ingress" },
            { "name": crate::kernel::TC_PROGRAM, "hook": "tc", "direction": "egress" },
        ],
        "flow_table_capacity": view.flow_table_capacity,
        "flow_table_entries": snap.flows.len(),
        "uptime_s": view.started.elapsed().as_secs(),
        "flows": rtp,
        "rtcp_flows": snap.flows.len() - rtp,
        "evictions": snap.kernel.evictions,
        "expired": snap.kernel.expired,
        "sip_frames": Intake::get(&view.intake.sip_frames),
        "sip_messages": Intake::get(&view.intake.sip_messages),
        "sip_parse_errors": Intake::get(&view.intake.sip_parse_errors),
        "sip_fragments_dropped": Intake::get(&view.intake.sip_fragments_dropped),
        "sip_tcp_bytes_dropped": Intake::get(&view.intake.sip_tcp_bytes_dropped),
        "rtcp_packets": Intake::get(&view.intake.rtcp_packets),
        "rtcp_undecodable": Intake::get(&view.intake.rtcp_undecodable),
        "calls": snap.calls.len(),
        "watched_endpoints": snap.kernel.watched_endpoints,
        "polls": snap.polls,
        "last_poll_error": view.health.poll_error(),
        "tasks": tasks,
        "counters": counters,
    }))
    .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "no such endpoint" })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `router` on a loopback port and GETs `path`: (status, body).
    async fn get(router: Router, path: &str) -> (u16, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// An answer larger than a chunk comes whole and in order: every call
    /// once, the chunks joined into one JSON document.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_stream_in_order_across_chunks() {
        use crate::calls::{detect::DetectConfig, engine::Retention, streams::TimeBase, Engine};
        let mut engine = Engine::new(DetectConfig::default(), 3600.0, Retention::Report);
        let calls = 2 * WRITERS * ITEMS_PER_CHUNK + 7;
        for i in 0..calls {
            let invite = format!(
                "INVITE sip:b@x SIP/2.0\r\nCall-ID: call-{i}\r\nCSeq: 1 INVITE\r\n\
                 From: <sip:a@x>;tag=a\r\nTo: <sip:b@x>\r\nContent-Length: 0\r\n\r\n"
            );
            engine.on_sip_bytes(invite.as_bytes(), 1000.0);
        }
        engine.poll(&[], TimeBase::Capture, 1001.0);
        let (live, call_flows) = engine.live_calls();
        let expected: Vec<String> = live.iter().map(|c| c.call.call_id.clone()).collect();
        let snapshot = Snapshot {
            calls: live,
            call_flows,
            ..Snapshot::default()
        };
        let (status, body) = get(
            router(view_of(snapshot), Arc::new(Metrics::new())),
            "/api/calls",
        )
        .await;
        assert_eq!(status, 200);
        let json = unchunk(&body);
        let answer: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
        let got: Vec<&str> = answer["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .map(|c| c["call_id"].as_str().expect("call_id"))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(got.len(), calls);
    }

    /// The JSON between the size lines of a chunked HTTP body.
    fn unchunk(body: &str) -> String {
        let mut json = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size, 16).expect("chunk size");
            if size == 0 {
                break;
            }
            json.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        json
    }

    /// A view of `snapshot` for the router.
    fn view_of(snapshot: Snapshot) -> AgentView {
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(snapshot));
        AgentView {
            iface: "eth0".into(),
            xdp_mode: crate::kernel::XdpAttachMode::Skb,
            tc_path: crate::kernel::TcAttachPath::Tcx,
            restart: crate::view::RestartView::default(),
            started: std::time::Instant::now(),
            flow_table_capacity: 0,
            snapshot: rx,
            intake: Arc::default(),
            health: Arc::new(crate::view::Health::new(&[])),
        }
    }

    /// Every RTP flow once, oldest first, across chunks; RTCP flows are
    /// not listed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flows_stream_in_order_across_chunks() {
        use detector_common::flow::{FlowKey, FlowStats, KIND_RTCP, KIND_RTP};
        let rtp = 3 * ITEMS_PER_CHUNK + 1;
        let flows: Vec<(FlowKey, FlowStats)> = (0..rtp + 10)
            .map(|i| {
                let key = FlowKey {
                    ssrc: i as u32,
                    kind: if i < rtp { KIND_RTP } else { KIND_RTCP },
                    ..FlowKey::default()
                };
                // Listed in reverse: the answer sorts by first packet.
                let stats = FlowStats {
                    first_seen_ns: (10_000 - i) as u64,
                    ..FlowStats::default()
                };
                (key, stats)
            })
            .collect();
        let snapshot = Snapshot {
            flows: Arc::new(flows),
            ..Snapshot::default()
        };
        let metrics = Arc::new(Metrics::new());
        let (status, body) = get(router(view_of(snapshot), metrics), "/api/flows").await;
        assert_eq!(status, 200);
        let answer: serde_json::Value =
            serde_json::from_str(&unchunk(&body)).expect("one JSON document");
        let ssrcs: Vec<String> = answer["flows"]
            .as_array()
            .expect("flows")
            .iter()
            .map(|f| f["ssrc"].as_str().expect("ssrc").to_string())
            .collect();
        let expected: Vec<String> = (0..rtp).rev().map(|i| format!("0x{i:08X}")).collect();
        assert_eq!(ssrcs, expected);
    }

    /// `--metrics-listen` serves /metrics and answers any other path as
    /// the API does: 404 with a JSON error, not an empty body.
    #[tokio::test]
    async fn metrics_listener_answers_unknown_paths_with_a_json_404() {
        let metrics = Arc::new(Metrics::new());
        let (status, body) = get(metrics_router(metrics.clone()), "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("detector_build_info"), "{body}");
        for path in ["/api/calls", "/nothing"] {
            let (status, body) = get(metrics_router(metrics.clone()), path).await;
            assert_eq!(status, 404, "{path}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["error"], "no such endpoint", "{path}: {body}");
        }
    }
}
