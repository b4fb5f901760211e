//! One future that resolves on SIGINT or SIGTERM.

use tokio::signal::unix::{signal, SignalKind};

/// Waits for SIGINT or SIGTERM and logs which came.
pub async fn signalled() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
    Ok(())
}
