//! The local HTTP API.

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

use crate::agent::{SharedMetrics, SharedState};

/// The API, with /metrics.
pub fn router(state: SharedState, metrics: SharedMetrics) -> Router {
    let metrics_route = metrics_router(metrics);
    Router::new()
        .route("/api/flows", get(flows))
        .route("/api/calls", get(calls))
        .route("/api/events", get(events))
        .route("/api/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
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

async fn flows(State(state): State<SharedState>) -> Response {
    let st = state.read().expect("state lock");
    Json(json!({ "flows": st.flows })).into_response()
}

#[derive(serde::Deserialize)]
struct CallsQuery {
    flagged: Option<bool>,
}

/// Calls up now, then recently ended ones (newest last).
async fn calls(State(state): State<SharedState>, Query(q): Query<CallsQuery>) -> Response {
    let st = state.read().expect("state lock");
    let flagged = q.flagged.unwrap_or(false);
    let calls: Vec<&crate::records::CallReport> = st
        .ended_calls
        .iter()
        .chain(st.calls.iter())
        .filter(|c| !flagged || !c.flags.is_empty())
        .collect();
    Json(json!({ "calls": calls })).into_response()
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    since: Option<u64>,
}

/// Flag and call-end events after the `since` cursor.
async fn events(State(state): State<SharedState>, Query(q): Query<EventsQuery>) -> Response {
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

async fn status(State(state): State<SharedState>) -> Response {
    let st = state.read().expect("state lock");
    let counters = crate::capture::describe_counters(&st.counters);
    Json(json!({
        "iface": st.iface,
        "xdp_mode": st.xdp_mode,
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
