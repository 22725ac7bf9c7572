//! `mxguard check`: audit domains and print reports.

use futures_util::StreamExt;
use std::path::Path;
use std::sync::Arc;

use mxguard_audit::{CheckOptions, GatherError, Report, Severity, SmtpOptions};
use mxguard_dns::HickoryResolver;
use rustls::RootCertStore;
use serde::Serialize;

use crate::cli::{CheckConfig, Format};
use crate::output;
use crate::render;
use crate::{Exit, Failure};

/// A domain that could not be checked, as it appears in JSON output.
#[derive(Debug, Serialize)]
struct ErrorRecord<'a> {
    schema_version: u32,
    domain: &'a str,
    error: ErrorBody,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    kind: &'static str,
    message: String,
}

fn error_record<'a>(domain: &'a str, err: &GatherError) -> ErrorRecord<'a> {
    let kind = match err {
        GatherError::ResolverUnreachable { .. } => "resolver-unreachable",
        GatherError::MxLookup { .. } => "mx-lookup-failed",
        _ => "check-failed",
    };
    ErrorRecord {
        schema_version: mxguard_audit::SCHEMA_VERSION,
        domain,
        error: ErrorBody {
            kind,
            message: err.to_string(),
        },
    }
}

/// The resolver for a check: each DNS question, retries included, fits
/// inside `--timeout`.
pub fn resolver(cfg: &CheckConfig) -> Result<HickoryResolver, Failure> {
    HickoryResolver::new(&cfg.resolver, cfg.timeout)
        .map_err(|e| Failure::Usage(format!("DNS resolver: {e}")))
}

/// The roots a server certificate must chain to: the PEM file given, or
/// the system's trust store.
pub fn trust_roots(ca_file: Option<&Path>) -> Result<RootCertStore, Failure> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Failure::Usage(format!("--ca-file {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Failure::Usage(format!(
                    "--ca-file {}: no usable CA certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!("system trust store: {e}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system CA certificates found: every certificate will count as untrusted (use --ca-file)"
                );
            }
        }
    }
    Ok(roots)
}

/// Run `check` and return the exit status the contract asks for.
pub async fn run(cfg: CheckConfig) -> Result<Exit, Failure> {
    let resolver = resolver(&cfg)?;
    let smtp = match &cfg.smtp {
        None => None,
        Some(s) => Some(SmtpOptions {
            port: s.port,
            helo: s.helo.clone(),
            mail_from: s.mail_from.clone(),
            timeout: cfg.timeout,
            deadline: s.deadline,
            roots: Arc::new(trust_roots(s.ca_file.as_deref())?),
        }),
    };
    let opts = CheckOptions {
        allow_private: cfg.allow_private,
        smtp,
    };
    let opts = &opts;
    let results = futures_util::stream::iter(cfg.domains.iter())
        .map(|domain| {
            let resolver = &resolver;
            async move {
                (
                    domain.as_str(),
                    mxguard_audit::check_domain(resolver, domain, opts.clone()).await,
                )
            }
        })
        .buffered(cfg.jobs);
    emit(results, cfg.format, cfg.domains.len(), &|_| None).await
}

/// Print results as they arrive (in input order) and work out the exit code.
/// `caption` may give a line to print above a domain's text report.
pub async fn emit<'a, S, R>(
    results: S,
    format: Format,
    count: usize,
    caption: &dyn Fn(&str) -> Option<&'static str>,
) -> Result<Exit, Failure>
where
    S: futures_util::Stream<Item = (&'a str, Result<R, GatherError>)>,
    R: std::borrow::Borrow<Report>,
{
    let mut results = std::pin::pin!(results);
    let mut worst: Option<Severity> = None;
    let mut failed = false;
    let mut collected: Vec<serde_json::Value> = Vec::new();
    let mut first = true;
    while let Some((domain, result)) = results.next().await {
        match &result {
            Ok(report) => {
                let report = report.borrow();
                worst = worst.max(report.worst());
                match format {
                    Format::Text => {
                        let sep = if first { "" } else { "\n" };
                        let cap = caption(domain).map(render::caption).unwrap_or_default();
                        output::write_styled(&format!("{sep}{cap}{}", render::report(report)))?;
                    }
                    Format::Jsonl => output::write_plain(&format!("{}\n", to_json(report)?))?,
                    Format::Json => collected.push(serde_json::to_value(report).map_err(json_err)?),
                }
            }
            Err(err) => {
                failed = true;
                eprintln!("error: {err}");
                match format {
                    Format::Text => {}
                    Format::Jsonl => {
                        output::write_plain(&format!("{}\n", to_json(&error_record(domain, err))?))?
                    }
                    Format::Json => collected
                        .push(serde_json::to_value(error_record(domain, err)).map_err(json_err)?),
                }
                if err.is_resolver_unreachable() {
                    // Nothing else will get an answer either: stop asking.
                    break;
                }
            }
        }
        first = false;
    }
    if format == Format::Json {
        let value = if count == 1 && collected.len() == 1 {
            collected.pop().unwrap_or_default()
        } else {
            serde_json::Value::Array(collected)
        };
        let text = serde_json::to_string_pretty(&value).map_err(json_err)?;
        output::write_plain(&format!("{text}\n"))?;
    }
    Ok(if failed {
        Exit::Error
    } else if worst >= Some(Severity::Warning) {
        Exit::Findings
    } else {
        Exit::Clean
    })
}

fn to_json<T: Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string(value).map_err(json_err)
}

fn json_err(e: serde_json::Error) -> Failure {
    Failure::Internal(format!("serialising JSON: {e}"))
}
