//! The local HTTP API.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

use crate::agent::SharedState;

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/api/flows", get(flows))
        .route("/api/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(not_found)
        .with_state(state)
}

async fn flows(State(state): State<SharedState>) -> Response {
    let st = state.read().expect("state lock");
    Json(json!({ "flows": st.flows })).into_response()
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
