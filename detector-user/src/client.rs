//! CLI commands that talk to a running agent.

use crate::flows::{render_table, StreamRecord};

pub const DEFAULT_AGENT: &str = "http://127.0.0.1:9477";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the agent's address.
    #[error("cannot reach the agent at {url}: is it running? Start it with `detector agent --iface IF` (or `cargo xtask run -- --iface IF`)")]
    Unreachable { url: String },
    /// The agent answered with an error.
    #[error("the agent at {url} answered: {detail}")]
    Agent { url: String, detail: String },
}

fn get_json(base: &str, path: &str) -> Result<serde_json::Value, ClientError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let response = ureq::get(&url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => ClientError::Agent {
            url: url.clone(),
            detail: format!("HTTP {code}"),
        },
        _ => ClientError::Unreachable {
            url: base.to_string(),
        },
    })?;
    response
        .into_body()
        .read_json()
        .map_err(|e| ClientError::Agent {
            url,
            detail: e.to_string(),
        })
}

/// `detector flows`.
pub fn flows(agent: &str, json: bool) -> Result<String, ClientError> {
    let value = get_json(agent, "/api/flows")?;
    if json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ));
    }
    let streams: Vec<StreamRecord> =
        serde_json::from_value(value["flows"].clone()).map_err(|e| ClientError::Agent {
            url: agent.to_string(),
            detail: e.to_string(),
        })?;
    if streams.is_empty() {
        return Ok("no RTP flows\n".into());
    }
    Ok(render_table(&streams))
}

/// `detector calls`.
pub fn calls(agent: &str, flagged: bool, json: bool) -> Result<String, ClientError> {
    let path = if flagged {
        "/api/calls?flagged=true"
    } else {
        "/api/calls"
    };
    let value = get_json(agent, path)?;
    if json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ));
    }
    let calls = value["calls"].as_array().cloned().unwrap_or_default();
    if calls.is_empty() {
        return Ok(if flagged {
            "no flagged calls\n".into()
        } else {
            "no calls\n".into()
        });
    }
    let mut out = format!(
        "{:<40} {:<10} {:<30} {}\n",
        "CALL-ID", "STATE", "BUCKET", "FLAGS"
    );
    for c in &calls {
        let flags: Vec<String> = c["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                let open = if f["cleared_epoch"].is_null() {
                    ""
                } else {
                    " (cleared)"
                };
                format!(
                    "{} {}{open}",
                    f["kind"].as_str().unwrap_or("?"),
                    f["direction"].as_str().unwrap_or("?")
                )
            })
            .collect();
        out.push_str(&format!(
            "{:<40} {:<10} {:<30} {}\n",
            c["call_id"].as_str().unwrap_or("?"),
            c["state"].as_str().unwrap_or("?"),
            c["bucket"].as_str().unwrap_or("-"),
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join(", ")
            }
        ));
    }
    Ok(out)
}
