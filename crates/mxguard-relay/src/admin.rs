//! The admin listener: `/metrics` for Prometheus and the queue commands
//! `mxguard queue` sends, over HTTP on a loopback address.
//!
//! Queue commands need `Authorization: Bearer <token>`; the token is made
//! at start and written to `<spool>/admin.token` (mode 0600), so whoever can
//! read the spool can steer the queue and nobody else. `/metrics` is open:
//! it says nothing about message contents or addresses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mxguard_queue::{QueueId, Spool, SpoolError};
use rand::Rng;
use serde::Serialize;

use crate::delivery::{Delivery, QueueItem, queue_item};
use crate::metrics::Metrics;

/// The token file's name in the spool directory.
pub const TOKEN_FILE: &str = "admin.token";

#[derive(Debug, Clone)]
struct Admin {
    token: Arc<String>,
    spool: Arc<dyn Spool>,
    delivery: Arc<Delivery>,
    metrics: Arc<Metrics>,
}

/// Make a fresh token and write it where `mxguard queue` looks.
pub fn write_token(spool_dir: &Path) -> std::io::Result<(String, PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::rng().random::<u8>()))
        .collect();
    let path = spool_dir.join(TOKEN_FILE);
    let tmp = spool_dir.join(format!("{TOKEN_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok((token, path))
}

/// The admin routes.
pub fn router(
    token: String,
    spool: Arc<dyn Spool>,
    delivery: Arc<Delivery>,
    metrics: Arc<Metrics>,
) -> Router {
    let state = Admin {
        token: Arc::new(token),
        spool,
        delivery,
        metrics,
    };
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/queue", get(list))
        .route("/queue/flush", post(flush_all))
        .route("/queue/{id}", get(show).delete(delete))
        .route("/queue/{id}/flush", post(flush_one))
        .route("/queue/{id}/hold", post(hold))
        .route("/queue/{id}/release", post(release))
        .with_state(state)
}

#[derive(Debug, Serialize)]
struct Problem {
    error: String,
}

/// A refusal or failure, answered as `{"error": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(Problem { error: self.error })).into_response()
    }
}

fn problem(status: StatusCode, error: impl Into<String>) -> ApiError {
    ApiError {
        status,
        error: error.into(),
    }
}

fn authorised(a: &Admin, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant-time enough for a loopback listener: compare every byte.
    let want = a.token.as_bytes();
    let ok = given.len() == want.len()
        && given
            .bytes()
            .zip(want.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0;
    if ok {
        Ok(())
    } else {
        Err(problem(
            StatusCode::UNAUTHORIZED,
            format!("missing or wrong token (see {TOKEN_FILE} in the spool directory)"),
        ))
    }
}

fn parse_id(text: &str) -> Result<QueueId, ApiError> {
    text.parse().map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not a queue id"),
        )
    })
}

fn spool_error(e: SpoolError) -> ApiError {
    problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(spool_error),
        Err(e) => Err(problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn metrics_text(State(a): State<Admin>) -> Response {
    let oldest = a.delivery.oldest_arrival();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        a.metrics.render(oldest),
    )
        .into_response()
}

async fn list(
    State(a): State<Admin>,
    headers: HeaderMap,
) -> Result<axum::Json<Vec<QueueItem>>, ApiError> {
    authorised(&a, &headers)?;
    let spool = a.spool.clone();
    let entries = blocking(move || spool.list()).await?;
    Ok(axum::Json(entries.iter().map(queue_item).collect()))
}

/// One message: its queue entry and its header section.
#[derive(Debug, Serialize)]
struct Shown {
    #[serde(flatten)]
    item: QueueItem,
    headers: String,
}

async fn show(
    State(a): State<Admin>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<Shown>, ApiError> {
    authorised(&a, &headers)?;
    let id = parse_id(&id)?;
    let spool = a.spool.clone();
    let found = tokio::task::spawn_blocking(move || {
        let (envelope, bytes) = spool.read(&id)?;
        let state = spool.state(&id)?;
        Ok::<_, SpoolError>((envelope, bytes, state))
    })
    .await
    .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (envelope, bytes, state) = match found {
        Ok(f) => f,
        Err(SpoolError::NotFound(id)) => {
            return Err(problem(
                StatusCode::NOT_FOUND,
                format!("{id} is not in the queue"),
            ));
        }
        Err(e) => return Err(spool_error(e)),
    };
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(bytes.len());
    let entry = mxguard_queue::Entry {
        size: bytes.len() as u64,
        envelope,
        state,
    };
    Ok(axum::Json(Shown {
        item: queue_item(&entry),
        headers: String::from_utf8_lossy(&bytes[..end]).into_owned(),
    }))
}

#[derive(Debug, Serialize)]
struct Done {
    done: String,
    messages: usize,
}

fn done(what: &str, n: usize) -> axum::Json<Done> {
    axum::Json(Done {
        done: what.to_owned(),
        messages: n,
    })
}

async fn flush_all(
    State(a): State<Admin>,
    headers: HeaderMap,
) -> Result<axum::Json<Done>, ApiError> {
    authorised(&a, &headers)?;
    Ok(done("flush", a.delivery.flush(None)))
}

async fn flush_one(
    State(a): State<Admin>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<Done>, ApiError> {
    authorised(&a, &headers)?;
    let id = parse_id(&id)?;
    match a.delivery.flush(Some(&id)) {
        0 => Err(problem(
            StatusCode::NOT_FOUND,
            format!("{id} is not waiting in the queue (held, being delivered, or gone)"),
        )),
        n => Ok(done("flush", n)),
    }
}

type Op = fn(&Delivery, &QueueId) -> Result<bool, SpoolError>;

async fn run_op(
    a: Admin,
    headers: HeaderMap,
    id: String,
    what: &'static str,
    op: Op,
) -> Result<axum::Json<Done>, ApiError> {
    authorised(&a, &headers)?;
    let id = parse_id(&id)?;
    let delivery = a.delivery.clone();
    let shown = id.clone();
    match blocking(move || op(&delivery, &id)).await? {
        true => Ok(done(what, 1)),
        false => Err(problem(
            StatusCode::NOT_FOUND,
            format!("{shown} is not in the queue"),
        )),
    }
}

async fn hold(
    State(a): State<Admin>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<Done>, ApiError> {
    run_op(a, headers, id, "hold", Delivery::hold).await
}

async fn release(
    State(a): State<Admin>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<Done>, ApiError> {
    run_op(a, headers, id, "release", Delivery::release).await
}

async fn delete(
    State(a): State<Admin>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<Done>, ApiError> {
    run_op(a, headers, id, "delete", Delivery::delete).await
}
