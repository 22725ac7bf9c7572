//! `mxguard web`: the page and the JSON API (crate `mxguard-web`) on a
//! listener, until SIGTERM or Ctrl-C.

use std::sync::Arc;

use crate::cli::WebArgs;
use crate::{Exit, Failure, output};

pub async fn run(args: WebArgs) -> Result<Exit, Failure> {
    let roots = Arc::new(crate::check::trust_roots(args.probe.ca_file.as_deref())?);
    let allow_private = args.allow_private;
    let (listen, cfg) = args
        .into_config(roots)
        .map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::Usage(format!("--listen {listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Failure::Internal(format!("listener: {e}")))?;
    output::write_styled(&format!(
        "mxguard web on http://{bound}/ (API: /api/check?domain=…, /api/simulate?outage=…){}\n",
        if allow_private {
            "; probing private addresses (--allow-private): do not expose this"
        } else {
            ""
        }
    ))?;
    mxguard_web::serve(listener, cfg, stop_signal())
        .await
        .map_err(Failure::Internal)?;
    Ok(Exit::Clean)
}

/// Resolves on SIGTERM or SIGINT (or at once if they cannot be watched,
/// which would leave no way to stop the server cleanly).
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot watch SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
