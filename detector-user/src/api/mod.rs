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
        let flows: Vec<StreamRecord> = snap
            .rtp_flows()
            .into_iter()
            .map(|(i, (key, stats))| (i, StreamRecord::new(key, stats, snap.time)))
            .filter(|(i, f)| {
                !filtered
                    || indices.contains(&(*i as u32))
                    || ended_ids.contains(&(f.src, f.sport, f.dst, f.dport, f.ssrc.clone()))
            })
            .map(|(_, f)| f)
            .collect();
        // Straight from the records: a `json!` value of tens of thousands of
        // flows would be built only to be written out.
        #[derive(serde::Serialize)]
        struct FlowsBody {
            flows: Vec<StreamRecord>,
        }
        json_response(&FlowsBody { flows }, q.pretty.unwrap_or(false))
    })
    .await
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
    let snap = view.snapshot();
    off_runtime(move || {
        let flagged = q.flagged.unwrap_or(false);
        let state_ok = |state| {
            wanted_state
                .as_deref()
                .is_none_or(|s| state_name(state) == s)
        };
        let ended = snap
            .ended
            .iter()
            .filter(|c| (!flagged || c.flagged()) && state_ok(c.call.state))
            .map(CallItem::Ended);
        let live = snap
            .calls
            .iter()
            .filter(|c| !flagged || c.flags.iter().any(|f| f.cleared_epoch.is_none()))
            .filter(|c| state_ok(c.call.state))
            .map(CallItem::Live);
        let items: Vec<CallItem<'_>> = ended.chain(live).collect();
        if q.pretty.unwrap_or(false) {
            let calls: Vec<CallReport> = items.iter().map(|i| i.report(&snap)).collect();
            return json_response(
                &CallsBody {
                    calls: calls.iter().collect(),
                },
                true,
            );
        }
        json_bytes(calls_json(&snap, &items))
    })
    .await
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

/// `{"calls":[...]}` for tens of thousands of calls: each half built and
/// serialised on its own thread, into buffers sized up front.
fn calls_json(snap: &Snapshot, items: &[CallItem<'_>]) -> serde_json::Result<Vec<u8>> {
    /// More than one call takes in JSON (about 1,450 bytes with its voice
    /// quality), so the buffers never grow by copying: room never written
    /// costs no memory.
    const BYTES_PER_CALL: usize = 2048;
    let write_all = |part: &[CallItem<'_>], mut out: Vec<u8>| -> serde_json::Result<Vec<u8>> {
        for (i, item) in part.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            item.write(snap, &mut out)?;
        }
        Ok(out)
    };
    let (first, second) = items.split_at(items.len() / 2);
    // The first half's buffer has room for the whole answer (room never
    // written costs no memory), so the second half is appended to it in
    // place rather than both copied into a third.
    let mut head = Vec::with_capacity((items.len() + 64) * BYTES_PER_CALL);
    head.extend_from_slice(b"{\"calls\":[");
    let (a, b) = std::thread::scope(|scope| {
        let other =
            scope.spawn(|| write_all(second, Vec::with_capacity(second.len() * BYTES_PER_CALL)));
        let a = write_all(first, head);
        (a, other.join())
    });
    let b = b.unwrap_or_else(|_| Err(serde::ser::Error::custom("a serialising thread failed")));
    let (mut body, b) = (a?, b?);
    if !first.is_empty() && !b.is_empty() {
        body.push(b',');
    }
    body.extend_from_slice(&b);
    drop(b);
    body.extend_from_slice(b"]}\n");
    Ok(body)
}

fn json_bytes(body: serde_json::Result<Vec<u8>>) -> Response {
    match body {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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
