//! The local HTTP API.

use std::{collections::HashSet, net::IpAddr};

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

use crate::{
    agent::{SharedMetrics, SharedState},
    flows::StreamRecord,
    records::CallReport,
};

/// The API, with /metrics.
pub fn router(state: SharedState, metrics: SharedMetrics) -> Router {
    let metrics_route = metrics_router(metrics);
    Router::new()
        .route("/api/flows", get(flows))
        .route("/api/calls", get(calls))
        .route("/api/calls/{call_id}", get(call))
        .route("/api/events", get(events))
        .route("/api/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
        .merge(metrics_route)
}

/// /metrics alone (for --metrics-listen).
pub fn metrics_router(metrics: SharedMetrics) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the
/// classic text format.
async fn render_metrics(
    State(metrics): State<SharedMetrics>,
    headers: axum::http::HeaderMap,
) -> Response {
    let wants_openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let metrics = metrics.lock().expect("metrics lock");
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowsQuery {
    /// Only flows of calls with an open flag.
    flagged: Option<bool>,
    /// Only flows of this call.
    call: Option<String>,
}

/// Streams that belong to a call, by identity.
fn stream_ids<'a>(
    calls: impl Iterator<Item = &'a CallReport>,
) -> HashSet<(IpAddr, u16, IpAddr, u16, String)> {
    calls
        .flat_map(|c| c.streams.iter())
        .map(|s| (s.src, s.sport, s.dst, s.dport, s.ssrc.clone()))
        .collect()
}

async fn flows(
    State(state): State<SharedState>,
    q: Result<Query<FlowsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    let st = state.read().expect("state lock");
    let keep = if q.flagged.unwrap_or(false) || q.call.is_some() {
        let calls = st.calls.iter().chain(st.ended_calls.iter()).filter(|c| {
            q.call.as_ref().is_none_or(|id| &c.call.call_id == id)
                && (!q.flagged.unwrap_or(false) || c.flagged())
        });
        Some(stream_ids(calls))
    } else {
        None
    };
    let flows: Vec<&StreamRecord> = st
        .flows
        .iter()
        .filter(|f| {
            keep.as_ref()
                .is_none_or(|ids| ids.contains(&(f.src, f.sport, f.dst, f.dport, f.ssrc.clone())))
        })
        .collect();
    Json(json!({ "flows": flows })).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    /// Only calls with a flag still open.
    flagged: Option<bool>,
    /// trying, early, confirmed or ended.
    state: Option<String>,
}

/// Calls up now, then recently ended ones (newest last).
async fn calls(
    State(state): State<SharedState>,
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
    let st = state.read().expect("state lock");
    let flagged = q.flagged.unwrap_or(false);
    let calls: Vec<&CallReport> = st
        .ended_calls
        .iter()
        .chain(st.calls.iter())
        .filter(|c| !flagged || c.flagged())
        .filter(|c| {
            wanted_state.as_ref().is_none_or(|s| {
                serde_json::to_value(c.call.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .as_deref()
                    == Some(s.as_str())
            })
        })
        .collect();
    Json(json!({ "calls": calls })).into_response()
}

/// One call, up or recently ended, with its streams, flag timeline and SDP.
async fn call(State(state): State<SharedState>, Path(call_id): Path<String>) -> Response {
    let st = state.read().expect("state lock");
    let found = st
        .calls
        .iter()
        .chain(st.ended_calls.iter().rev())
        .find(|c| c.call.call_id == call_id);
    match found {
        Some(c) => Json(json!({ "call": c })).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no call {call_id:?} (up now or among the last ended)"),
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<u64>,
}

/// Flag and call-end events after the `since` cursor.
async fn events(
    State(state): State<SharedState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    let st = state.read().expect("state lock");
    let since = q.since.unwrap_or(0);
    let events: Vec<serde_json::Value> = st
        .events
        .iter()
        .filter(|(id, _)| *id > since)
        .map(|(id, e)| {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["id"] = json!(id);
            v
        })
        .collect();
    Json(json!({ "events": events, "next": st.next_event })).into_response()
}

/// Ready once the programs are attached and the maps were read without error.
async fn readyz(State(state): State<SharedState>) -> Response {
    let st = state.read().expect("state lock");
    if st.polls > 0 && st.last_poll_error.is_none() {
        Json(json!({ "ready": true })).into_response()
    } else {
        let why = st
            .last_poll_error
            .clone()
            .unwrap_or_else(|| "maps not read yet".into());
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "error": why })),
        )
            .into_response()
    }
}

async fn status(State(state): State<SharedState>) -> Response {
    let st = state.read().expect("state lock");
    let counters = crate::capture::describe_counters(&st.counters);
    Json(json!({
        "iface": st.iface,
        "xdp_mode": st.xdp_mode,
        "programs": [
            { "name": crate::capture::XDP_PROGRAM, "hook": "xdp", "direction": "ingress" },
            { "name": crate::capture::TC_PROGRAM, "hook": "tc", "direction": "egress" },
        ],
        "flow_table_capacity": detector_common::flow::FLOW_TABLE_CAPACITY,
        "flow_table_entries": st.flows.len() + st.rtcp_flows,
        "uptime_s": st.started.elapsed().as_secs(),
        "flows": st.flows.len(),
        "rtcp_flows": st.rtcp_flows,
        "evictions": st.evictions,
        "expired": st.expired,
        "sip_frames": st.sip_frames,
        "sip_messages": st.sip_messages,
        "sip_parse_errors": st.sip_parse_errors,
        "calls": st.calls.len(),
        "watched_endpoints": st.watched_endpoints,
        "polls": st.polls,
        "last_poll_error": st.last_poll_error,
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
