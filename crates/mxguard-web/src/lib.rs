//! `mxguard web`: `check` and `simulate` as a web page and a JSON API.
//!
//! One input (a domain); the result streams in as the probes finish
//! (server-sent events), and the same page works as a plain form without
//! JavaScript. Every asset is embedded; the page loads nothing from
//! elsewhere. Safe to expose: domain names are validated (IDNs become
//! A-labels), private and reserved addresses are never probed unless the
//! server was started for a lab (`allow_private`), each client gets a
//! rate limit, checks at once are capped, every check has a deadline, and
//! errors are messages, never traces. No business logic lives here: the
//! audit is `mxguard-audit`'s, the simulation `mxguard-sim`'s.

pub mod html;
pub mod limits;
pub mod svg;
pub mod timeline;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use mxguard_audit::report::Address;
use mxguard_audit::{CheckOptions, Progress, Report, SmtpOptions};
use mxguard_dns::{HickoryResolver, ResolverSpec};
use serde::Deserialize;

use crate::limits::{Capacity, PerClient, RateLimit};

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");
const OPENAPI: &str = include_str!("assets/openapi.json");

/// How the server checks domains and protects itself.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub resolver: ResolverSpec,
    /// Each DNS question's time limit.
    pub dns_timeout: Duration,
    /// The SMTP probe settings (port, EHLO name, sender, timeouts, roots).
    pub smtp: SmtpOptions,
    /// Probe private, loopback and reserved addresses (labs only).
    pub allow_private: bool,
    /// Checks (and simulations) a client may start per minute, and at once.
    pub rate_per_minute: u32,
    pub rate_burst: u32,
    /// Checks running at once, over all clients.
    pub max_checks: usize,
    /// The most one check may take, DNS and SMTP together.
    pub check_timeout: Duration,
}

/// Why a request got no result, as the page and the API say it.
#[derive(Debug, Clone, PartialEq)]
pub enum WebError {
    BadRequest(String),
    RateLimited(Duration),
    Busy,
    Timeout(Duration),
    CheckFailed(String),
}

impl WebError {
    fn status(&self) -> StatusCode {
        match self {
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            WebError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            WebError::CheckFailed(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            WebError::BadRequest(_) => "bad-request",
            WebError::RateLimited(_) => "rate-limited",
            WebError::Busy => "busy",
            WebError::Timeout(_) => "timeout",
            WebError::CheckFailed(_) => "check-failed",
        }
    }

    /// The message for a person.
    pub fn message(&self) -> String {
        match self {
            WebError::BadRequest(m) | WebError::CheckFailed(m) => m.clone(),
            WebError::RateLimited(wait) => format!(
                "Too many checks from your address; try again in {} s.",
                wait.as_secs().max(1)
            ),
            WebError::Busy => {
                "The server is running as many checks as it allows; try again in a few seconds."
                    .into()
            }
            WebError::Timeout(limit) => format!(
                "The check took longer than {} s and was stopped; the domain's servers may be slow or unreachable.",
                limit.as_secs()
            ),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            WebError::RateLimited(wait) => Some(wait.as_secs().max(1)),
            WebError::Busy => Some(5),
            _ => None,
        }
    }

    fn with_retry_after(&self, mut response: Response) -> Response {
        if let Some(secs) = self.retry_after()
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }

    /// The API's answer: `{"error": {"kind", "message"}}`.
    fn json(&self) -> Response {
        let body = serde_json::json!({"error": {"kind": self.kind(), "message": self.message()}});
        self.with_retry_after((self.status(), axum::Json(body)).into_response())
    }

    /// The page's answer: the form and the message.
    fn page(&self, domain: &str) -> Response {
        let body = html::page("mxguard — error", domain, &html::error(&self.message()));
        self.with_retry_after((self.status(), Html(body)).into_response())
    }
}

/// Shared by every request.
#[derive(Debug)]
struct AppState {
    cfg: WebConfig,
    resolver: HickoryResolver,
    rate: RateLimit,
    capacity: Capacity,
    per_client: Arc<PerClient>,
}

/// Checks one client may have running at once.
const CHECKS_PER_CLIENT: usize = 2;

/// The application, ready to serve (with `ConnectInfo<SocketAddr>`, for
/// the per-client limits: see [`serve`]).
pub fn app(cfg: WebConfig) -> Result<Router, String> {
    let resolver = HickoryResolver::new(&cfg.resolver, cfg.dns_timeout)
        .map_err(|e| format!("DNS resolver: {e}"))?;
    let state = Arc::new(AppState {
        rate: RateLimit::new(cfg.rate_per_minute, cfg.rate_burst),
        capacity: Capacity::new(cfg.max_checks),
        per_client: Arc::new(PerClient::default()),
        resolver,
        cfg,
    });
    Ok(Router::new()
        .route("/", get(index))
        .route("/check", get(check_page))
        .route("/events", get(check_events))
        .route("/simulate", get(simulate_page))
        .route("/api/check", get(api_check))
        .route("/api/simulate", get(api_simulate))
        .route("/api/openapi.json", get(openapi))
        .route("/assets/style.css", get(style))
        .route("/assets/app.js", get(script))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state))
}

/// Every answer says: load nothing from elsewhere, run no inline script,
/// do not sniff types, do not pass the URL (with its domain) on.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: WebConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let router = app(cfg)?;
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|e| format!("serving: {e}"))
}

#[derive(Debug, Deserialize)]
struct DomainQuery {
    domain: Option<String>,
}

/// Names that never resolve on the public internet (RFC 6761, 6762, 8375,
/// 9476, and the TLDs in common private use): a public checker would only
/// reach its own network's DNS with them.
const PRIVATE_SUFFIXES: [&str; 14] = [
    "localhost",
    "local",
    "internal",
    "intranet",
    "lan",
    "home",
    "corp",
    "private",
    "test",
    "example",
    "invalid",
    "onion",
    "alt",
    "home.arpa",
];

fn private_name(ascii: &str) -> bool {
    PRIVATE_SUFFIXES
        .iter()
        .any(|s| ascii == *s || ascii.ends_with(&format!(".{s}")))
        || ascii.ends_with(".in-addr.arpa")
        || ascii.ends_with(".ip6.arpa")
}

/// The domain asked for, as an A-label name; names of private networks
/// only with `allow_private`.
fn domain_for(q: &DomainQuery, allow_private: bool) -> Result<String, WebError> {
    let ascii = domain_of(q)?;
    if !allow_private && private_name(&ascii) {
        return Err(WebError::BadRequest(format!(
            "{ascii} is a name for private networks, not a domain on the internet; this server checks public domains only."
        )));
    }
    Ok(ascii)
}

/// The domain asked for, as an A-label name.
fn domain_of(q: &DomainQuery) -> Result<String, WebError> {
    let raw = q.domain.as_deref().unwrap_or("").trim();
    if raw.is_empty() {
        return Err(WebError::BadRequest(
            "Enter a domain name, such as example.com.".into(),
        ));
    }
    if raw.len() > 300 {
        return Err(WebError::BadRequest(
            "That is too long for a domain name.".into(),
        ));
    }
    let ascii = mxguard_dns::net::parse_domain(raw).map_err(WebError::BadRequest)?;
    if !ascii.contains('.') {
        return Err(WebError::BadRequest(format!(
            "{ascii:?} is a single label, not a domain on the internet."
        )));
    }
    Ok(ascii)
}

fn client(addr: &SocketAddr) -> IpAddr {
    // An IPv4 client seen on a dual-stack socket counts as itself.
    match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

impl AppState {
    fn admit(&self, from: &SocketAddr) -> Result<(), WebError> {
        self.rate.take(client(from)).map_err(WebError::RateLimited)
    }

    fn options(&self) -> CheckOptions {
        CheckOptions {
            allow_private: self.cfg.allow_private,
            smtp: Some(self.cfg.smtp.clone()),
        }
    }

    /// One check, under the cap and the deadline.
    async fn check(
        &self,
        from: &SocketAddr,
        domain: &str,
        observe: &(dyn Fn(Progress<'_>) + Sync),
    ) -> Result<Report, WebError> {
        let _mine = self
            .per_client
            .try_start(from.ip(), CHECKS_PER_CLIENT)
            .ok_or(WebError::Busy)?;
        let _permit = self.capacity.try_start().ok_or(WebError::Busy)?;
        let limit = self.cfg.check_timeout;
        let run =
            mxguard_audit::check_domain_observed(&self.resolver, domain, self.options(), observe);
        match tokio::time::timeout(limit, run).await {
            Err(_) => Err(WebError::Timeout(limit)),
            Ok(Err(e)) => {
                // The detail names this server's resolver: for the log,
                // not for the public.
                tracing::warn!(target: "mxguard::web", %domain, error = %e, "check failed");
                let why = if e.is_resolver_unreachable() {
                    "the DNS resolver did not answer in time; try again later"
                } else {
                    "its MX records could not be looked up (its name servers gave an error or no answer)"
                };
                Err(WebError::CheckFailed(format!("{domain}: {why}.")))
            }
            Ok(Ok(report)) => Ok(report),
        }
    }
}

async fn index() -> Html<String> {
    Html(html::page(
        "mxguard — MX lookup and backup MX check",
        "",
        &html::intro(),
    ))
}

async fn not_found() -> Response {
    let body = html::page(
        "mxguard — not found",
        "",
        &html::error("There is no such page."),
    );
    (StatusCode::NOT_FOUND, Html(body)).into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The plain form's answer: the whole result page, once the check is done.
async fn check_page(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Query(q): Query<DomainQuery>,
) -> Response {
    let typed = q.domain.clone().unwrap_or_default();
    let domain = match domain_for(&q, state.cfg.allow_private) {
        Ok(d) => d,
        Err(e) => return e.page(&typed),
    };
    if let Err(e) = state.admit(&from) {
        return e.page(&typed);
    }
    match state.check(&from, &domain, &|_| {}).await {
        Ok(report) => Html(html::page(
            &format!("mxguard — {domain}"),
            &domain,
            &html::result(&report),
        ))
        .into_response(),
        Err(e) => e.page(&typed),
    }
}

/// The same check as events: `planned` (hosts table, probes pending), a
/// `probe` per address (its row), then `result` (the whole result) or
/// `failure` (a message). Each event's data is an HTML fragment, except
/// `probe`, whose data is `{"id": row id, "html": row}`.
async fn check_events(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Query(q): Query<DomainQuery>,
) -> Response {
    let started =
        domain_for(&q, state.cfg.allow_private).and_then(|d| state.admit(&from).map(|()| d));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    match started {
        Err(e) => {
            let _ = tx.send(
                Event::default()
                    .event("failure")
                    .data(html::error(&e.message())),
            );
        }
        Ok(domain) => {
            let state = state.clone();
            tokio::spawn(async move {
                // The planned addresses, to draw each row when its probe
                // comes in.
                let planned: Mutex<
                    HashMap<(String, IpAddr), (mxguard_audit::report::MxHost, Address)>,
                > = Mutex::new(HashMap::new());
                let observe = |p: Progress<'_>| match p {
                    Progress::Planned(facts) => {
                        let mut map = planned.lock().unwrap_or_else(|e| e.into_inner());
                        for h in &facts.hosts {
                            // The host without its addresses: a row needs
                            // only its own.
                            let bare = mxguard_audit::report::MxHost {
                                preference: h.preference,
                                exchange: h.exchange.clone(),
                                role: h.role,
                                cname_chain: Vec::new(),
                                ip_literal: h.ip_literal,
                                addresses: Vec::new(),
                                addresses_omitted: 0,
                                lookup_errors: Vec::new(),
                            };
                            for a in &h.addresses {
                                map.insert((h.exchange.clone(), a.ip), (bare.clone(), a.clone()));
                            }
                        }
                        let _ = tx.send(
                            Event::default()
                                .event("planned")
                                .data(html::planned(&facts.domain, &facts.hosts)),
                        );
                    }
                    Progress::Probed { host, ip, probe } => {
                        let map = planned.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some((h, a)) = map.get(&(host.to_owned(), ip)) {
                            let mut a = a.clone();
                            a.smtp = Some(Box::new(probe.clone()));
                            let data = serde_json::json!({
                                "id": html::row_id(host, &ip),
                                "html": html::host_row(h, &a, false),
                            });
                            let _ = tx.send(Event::default().event("probe").data(data.to_string()));
                        }
                    }
                };
                // A browser that goes away stops its check: the answers
                // would go to nobody.
                let outcome = tokio::select! {
                    r = state.check(&from, &domain, &observe) => r,
                    () = tx.closed() => return,
                };
                let event = match outcome {
                    Ok(report) => Event::default().event("result").data(html::result(&report)),
                    Err(e) => Event::default()
                        .event("failure")
                        .data(html::error(&e.message())),
                };
                let _ = tx.send(event);
            });
        }
    }
    Sse::new(EventStream(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// The receiving end of a check's events, as a stream that ends when the
/// check does.
struct EventStream(tokio::sync::mpsc::UnboundedReceiver<Event>);

impl Stream for EventStream {
    type Item = Result<Event, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|e| e.map(Ok))
    }
}

async fn api_check(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Query(q): Query<DomainQuery>,
) -> Response {
    let domain = match domain_for(&q, state.cfg.allow_private) {
        Ok(d) => d,
        Err(e) => return e.json(),
    };
    if let Err(e) = state.admit(&from) {
        return e.json();
    }
    match state.check(&from, &domain, &|_| {}).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => e.json(),
    }
}

#[derive(Debug, Deserialize)]
struct SimQuery {
    outage: Option<String>,
    start: Option<String>,
    profile: Option<String>,
    backup: Option<String>,
    /// `1`: only the panel's fragment, for the page's script.
    fragment: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("1" | "true" | "on" | "yes"))
}

/// A simulation from query parameters.
fn simulate(q: &SimQuery) -> Result<mxguard_sim::Report, WebError> {
    let duration = |name: &str, v: Option<&str>| -> Result<u64, WebError> {
        let text =
            v.ok_or_else(|| WebError::BadRequest(format!("`{name}` is missing (e.g. {name}=6h)")))?;
        mxguard_sim::parse_duration(text)
            .map(|d| d.0)
            .map_err(|e| WebError::BadRequest(format!("{name}: {e}")))
    };
    let outage = duration("outage", q.outage.as_deref())?;
    if outage > 60 * 86_400 {
        return Err(WebError::BadRequest("outage: at most 60 days".into()));
    }
    let start = match q.start.as_deref() {
        Some(s) if !s.is_empty() => duration("start", Some(s))?,
        _ => 0,
    };
    let scenario = mxguard_sim::Scenario::new(outage, start).map_err(WebError::BadRequest)?;
    let all = mxguard_sim::builtin();
    let profiles = match q.profile.as_deref().filter(|p| !p.is_empty()) {
        None => all,
        Some(list) => {
            if list.len() > 1000 {
                return Err(WebError::BadRequest("profile: the list is too long".into()));
            }
            let mut out: Vec<mxguard_sim::Profile> = Vec::new();
            for id in list.split(',').map(str::trim) {
                match all.iter().find(|p| p.id == id) {
                    // Each sender once.
                    Some(p) if out.iter().any(|q| q.id == p.id) => {}
                    Some(p) => out.push(p.clone()),
                    None => {
                        return Err(WebError::BadRequest(format!(
                            "profile: no sender `{id}`; known: {}",
                            all.iter()
                                .map(|p| p.id.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
            out
        }
    };
    let backup = truthy(&q.backup).then(mxguard_sim::Backup::default);
    Ok(mxguard_sim::report(scenario, &profiles, backup.as_ref()))
}

/// A simulation is CPU work: it runs off the async workers, so that it
/// never holds up other requests.
async fn simulate_off_runtime(q: SimQuery) -> Result<mxguard_sim::Report, WebError> {
    tokio::task::spawn_blocking(move || simulate(&q))
        .await
        .unwrap_or_else(|_| Err(WebError::CheckFailed("the simulation failed".into())))
}

async fn api_simulate(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Query(q): Query<SimQuery>,
) -> Response {
    if let Err(e) = state.admit(&from) {
        return e.json();
    }
    match simulate_off_runtime(q).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => e.json(),
    }
}

async fn simulate_page(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Query(q): Query<SimQuery>,
) -> Response {
    let fragment = truthy(&q.fragment);
    let chosen = q.outage.clone().unwrap_or_else(|| "6h".into());
    let backup = truthy(&q.backup);
    let result = match state.admit(&from) {
        Ok(()) => simulate_off_runtime(q).await,
        Err(e) => Err(e),
    };
    match (result, fragment) {
        (Ok(r), true) => Html(timeline::fragment(&r)).into_response(),
        (Ok(r), false) => Html(html::page(
            "mxguard — outage simulation",
            "",
            &format!(
                "{}{}",
                html::outage_panel_with(&chosen, backup),
                timeline::fragment(&r)
            ),
        ))
        .into_response(),
        (Err(e), true) => (e.status(), Html(html::error(&e.message()))).into_response(),
        (Err(e), false) => e.page(""),
    }
}
