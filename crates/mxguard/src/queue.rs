//! `mxguard queue`: the relay's queue, through its admin listener (or, for
//! `list` and `show`, straight from a spool directory).

use std::path::Path;
use std::time::{Duration, SystemTime};

use mxguard_relay::Config;
use mxguard_relay::delivery::QueueItem;
use serde_json::Value;

use crate::cli::{QueueAction, QueueArgs, QueueFormat};
use crate::{Exit, Failure};

pub async fn run(args: QueueArgs) -> Result<Exit, Failure> {
    tokio::task::spawn_blocking(move || run_blocking(args))
        .await
        .map_err(|e| Failure::Internal(e.to_string()))?
}

fn run_blocking(args: QueueArgs) -> Result<Exit, Failure> {
    let value = match (&args.config, &args.spool) {
        (_, Some(dir)) => offline(dir, &args.action)?,
        (Some(file), None) => online(file, &args.action)?,
        (None, None) => {
            return Err(Failure::Usage(
                "give --config FILE (the running relay) or --spool DIR (a spool on disk)".into(),
            ));
        }
    };
    let out = match args.format {
        QueueFormat::Json => serde_json::to_string_pretty(&value).unwrap_or_default(),
        QueueFormat::Text => text(&args.action, &value),
    };
    println!("{out}");
    Ok(Exit::Clean)
}

fn offline(dir: &Path, action: &QueueAction) -> Result<Value, Failure> {
    let entries = mxguard_queue::FsSpool::inspect(dir)
        .map_err(|e| Failure::Usage(format!("spool {}: {e}", dir.display())))?;
    let items: Vec<QueueItem> = entries
        .iter()
        .map(mxguard_relay::delivery::queue_item)
        .collect();
    match action {
        QueueAction::List => Ok(serde_json::to_value(items).unwrap_or_default()),
        QueueAction::Show { id } => items
            .into_iter()
            .find(|i| i.id == *id)
            .map(|i| serde_json::to_value(i).unwrap_or_default())
            .ok_or_else(|| Failure::Usage(format!("{id} is not in {}", dir.display()))),
        _ => Err(Failure::Usage(
            "only list and show work on a spool directory; give --config to steer the running relay"
                .into(),
        )),
    }
}

fn online(file: &Path, action: &QueueAction) -> Result<Value, Failure> {
    match action {
        QueueAction::Show { id }
        | QueueAction::Flush { id: Some(id) }
        | QueueAction::Hold { id }
        | QueueAction::Release { id }
        | QueueAction::Delete { id } => {
            id.parse::<mxguard_queue::QueueId>()
                .map_err(|_| Failure::Usage(format!("{id:?} is not a queue id")))?;
        }
        QueueAction::List | QueueAction::Flush { id: None } => {}
    }
    let config =
        Config::load(file).map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    let addr = config.admin.listen.get_ref().clone();
    let token_path = config.spool.path.join(mxguard_relay::admin::TOKEN_FILE);
    let token = std::fs::read_to_string(&token_path).map_err(|e| {
        Failure::Usage(format!(
            "{}: {e} (is the relay running, and may you read its spool?)",
            token_path.display()
        ))
    })?;
    let (method, path) = match action {
        QueueAction::List => ("GET", "/queue".to_owned()),
        QueueAction::Show { id } => ("GET", format!("/queue/{id}")),
        QueueAction::Flush { id: None } => ("POST", "/queue/flush".to_owned()),
        QueueAction::Flush { id: Some(id) } => ("POST", format!("/queue/{id}/flush")),
        QueueAction::Hold { id } => ("POST", format!("/queue/{id}/hold")),
        QueueAction::Release { id } => ("POST", format!("/queue/{id}/release")),
        QueueAction::Delete { id } => ("DELETE", format!("/queue/{id}")),
    };
    let url = format!("http://{addr}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {}", token.trim());
    let response = match method {
        "GET" => agent.get(&url).header("Authorization", &auth).call(),
        "DELETE" => agent.delete(&url).header("Authorization", &auth).call(),
        _ => agent.post(&url).header("Authorization", &auth).send_empty(),
    };
    let mut response = response
        .map_err(|e| Failure::Usage(format!("the relay's admin listener at {addr}: {e}")))?;
    let status = response.status();
    let body: Value = match response.body_mut().read_json() {
        Ok(v) => v,
        Err(_) if !status.is_success() => {
            return Err(Failure::Usage(format!("the relay answered HTTP {status}")));
        }
        Err(e) => return Err(Failure::Usage(format!("the relay's answer: {e}"))),
    };
    if !status.is_success() {
        let msg = body["error"].as_str().unwrap_or("error").to_owned();
        return Err(Failure::Usage(msg));
    }
    Ok(body)
}

fn age(received: &str) -> String {
    humantime::parse_rfc3339(received)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| {
            let s = d.as_secs();
            match s {
                0..60 => format!("{s}s"),
                60..3600 => format!("{}m", s / 60),
                3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
                _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
            }
        })
        .unwrap_or_else(|| "?".into())
}

fn item_lines(v: &Value, out: &mut String) {
    let id = v["id"].as_str().unwrap_or("");
    let from = v["from"].as_str().unwrap_or("");
    let from = if from.is_empty() {
        "<>".to_owned()
    } else {
        format!("<{from}>")
    };
    let held = if v["held"].as_bool() == Some(true) {
        "  HELD"
    } else {
        ""
    };
    out.push_str(&format!(
        "{id}  {:>7}  {:>8}  {from}  attempts {}{held}\n",
        age(v["received_at"].as_str().unwrap_or("")),
        v["size"].as_u64().unwrap_or(0),
        v["attempts"].as_u64().unwrap_or(0),
    ));
    for r in v["recipients"].as_array().into_iter().flatten() {
        let last = r["last_reply"]
            .as_str()
            .map(|l| format!("  ({l})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "    {:<9} <{}>{last}\n",
            r["status"].as_str().unwrap_or(""),
            r["address"].as_str().unwrap_or("")
        ));
    }
}

fn text(action: &QueueAction, v: &Value) -> String {
    let mut out = String::new();
    match action {
        QueueAction::List => {
            let items = v.as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return "queue empty".into();
            }
            for i in &items {
                item_lines(i, &mut out);
            }
            out.push_str(&format!("{} message(s)", items.len()));
        }
        QueueAction::Show { .. } => {
            item_lines(v, &mut out);
            if let Some(h) = v["headers"].as_str() {
                out.push('\n');
                out.push_str(h.trim_end());
            }
        }
        _ => {
            out.push_str(&format!(
                "{}: {} message(s)",
                v["done"].as_str().unwrap_or("done"),
                v["messages"].as_u64().unwrap_or(0)
            ));
        }
    }
    out
}
