//! The WebDriver harness (`common::webdriver`) against a tiny page served
//! from a thread: typing, Enter, clicking, Tab focus, scripts, screenshots.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::webdriver::{Browser, base64_decode};
use serde_json::json;

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>webdriver selftest</title></head>
<body>
<form id="f" onsubmit="event.preventDefault();
  document.getElementById('out').textContent = 'Hello, ' + document.getElementById('name').value;">
  <label for="name">Your name</label>
  <input id="name" name="name" autocomplete="off">
  <button id="go" type="submit">Greet</button>
</form>
<p id="out"></p>
</body></html>
"#;

/// Serve `PAGE` at `/` (404 elsewhere) on 127.0.0.1; its URL. The thread
/// lives as long as the test process.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(s) => s,
                Err(_) => continue,
            });
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(n) if n > 2 => {}
                    _ => break,
                }
            }
            let (status, body) = match request.split_whitespace().nth(1) {
                Some("/") => ("200 OK", PAGE),
                _ => ("404 Not Found", "not found\n"),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/")
}

#[test]
fn base64_decoder() {
    assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
    assert_eq!(base64_decode("aGVs\nbG8").unwrap(), b"hello");
    assert_eq!(base64_decode("").unwrap(), b"");
    assert_eq!(base64_decode("/+8=").unwrap(), [0xff, 0xef]);
    assert!(base64_decode("a*b").is_err());
}

#[test]
fn drives_a_page_in_headless_chromium() {
    const TEST: &str = "drives_a_page_in_headless_chromium";
    let started = Instant::now();
    let Some(b) = Browser::start_or_skip(TEST) else {
        return;
    };
    let up = started.elapsed();
    let url = serve();
    let wait = Duration::from_secs(10);

    b.goto(&url);
    assert_eq!(b.title(), "webdriver selftest");
    assert_eq!(b.current_url(), url);
    assert!(b.page_source().contains(r#"id="out""#));
    assert_eq!(b.find_all("label").len(), 1);
    let label = b.execute(
        "return document.getElementById(arguments[0]).labels[0].textContent;",
        vec![json!("name")],
    );
    assert_eq!(label, "Your name");
    assert_eq!(b.execute("return arguments[0] + 1;", vec![json!(41)]), 42);

    let missing = b.find("#missing").err().expect("#missing found");
    assert!(missing.contains("no such element"), "{missing}");
    assert!(b.wait_for("#missing", Duration::from_millis(200)).is_err());

    // Type and press Enter: the form's handler writes the greeting.
    let input = b.wait_for("#name", wait).unwrap();
    input.send_keys("Ada");
    input.press_enter();
    let out = b.wait_for_text("#out", "Hello, Ada", wait).unwrap();
    assert_eq!(out.text(), "Hello, Ada");

    // Clear, type again, click the button.
    input.clear();
    input.send_keys("Grace");
    assert_eq!(input.prop("value"), "Grace");
    assert_eq!(input.attr("name").as_deref(), Some("name"));
    assert_eq!(input.attr("no-such-attribute"), None);
    b.find("#go").unwrap().click();
    b.wait_for_text("#out", "Hello, Grace", wait).unwrap();

    // Keyboard: focus the input, Tab to the button, Enter on it.
    input.click();
    assert!(b.active_element().same_as(&input));
    b.send_keys_to_active("\u{E004}");
    let focused = b.active_element();
    assert_eq!(focused.attr("id").as_deref(), Some("go"));
    assert!(focused.same_as(&b.find("#go").unwrap()));
    input.clear();
    input.send_keys("Tab");
    b.execute("document.getElementById('go').focus();", vec![]);
    b.send_keys_to_active("\u{E007}");
    b.wait_for_text("#out", "Hello, Tab", wait).unwrap();

    let err = b.wait_for_text("#out", "never", Duration::from_millis(200));
    let err = err.err().expect("found text that is not there");
    assert!(err.contains("Hello, Tab"), "{err}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webdriver-selftest.png");
    let png = b.screenshot_png(&shot);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(std::fs::read(&shot).unwrap(), png);
    drop(b);
    eprintln!(
        "{TEST}: browser up in {up:?}, whole test {:?}, screenshot {} ({} bytes)",
        started.elapsed(),
        shot.display(),
        png.len()
    );
}
