//! End to end in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`): `mxguard demo --web` serves the lab; the browser
//! reaches the input by keyboard, checks a domain whose backup accepts mail
//! for users who do not exist, and must show the verdict, the backup drawn
//! as the problem host in the route diagram, and the `backscatter-risk`
//! finding — streamed in by the page's script. Then the outage panel. A
//! screenshot of the result is saved in the test's output folder
//! (`CARGO_TARGET_TMPDIR`).
//!
//! Without chromium and chromedriver the test prints a `SKIP` line and
//! passes, unless `MXGUARD_INTEROP=1` (as `.ci/run` sets): then it fails.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::webdriver::Browser;

const TEST: &str = "e2e_web";
const WAIT: Duration = Duration::from_secs(40);

/// `mxguard demo --web` on a free port; killed when dropped.
struct DemoWeb {
    child: Child,
    url: String,
}

impl DemoWeb {
    fn start() -> DemoWeb {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mxguard"))
            .args(["demo", "--web", "--listen", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting mxguard demo --web");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.trim().strip_prefix("http://") {
                    let _ = tx.send(format!("http://{url}"));
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("demo --web printed no URL within 20 s");
        DemoWeb { child, url }
    }
}

impl Drop for DemoWeb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_page_shows_a_backscatter_backup_as_the_problem() {
    let Some(browser) = Browser::start_or_skip(TEST) else {
        return;
    };
    let demo = DemoWeb::start();
    browser.goto(&demo.url);
    assert!(browser.title().contains("mxguard"), "{}", browser.title());

    // The input has a label, and the keyboard gets to it: the skip link,
    // the home link, then the input.
    let label = browser
        .find("label[for=domain]")
        .expect("a label for the input");
    assert_eq!(label.text(), "Domain to check");
    let input = browser.find("#domain").expect("the input");
    browser.send_keys_to_active("\u{E004}");
    assert_eq!(browser.active_element().text(), "Skip to the result");
    browser.send_keys_to_active("\u{E004}");
    browser.send_keys_to_active("\u{E004}");
    assert!(
        browser.active_element().same_as(&input),
        "three Tabs should reach the domain input"
    );
    browser.send_keys_to_active("backscatter.lab");
    browser.send_keys_to_active("\u{E007}");

    // The script streams the check in; the verdict comes first.
    let verdict = browser
        .wait_for_text("#verdict h2", "liability", WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", browser.page_source()));
    assert_eq!(verdict.text(), "The backup MX is a liability");
    assert!(
        browser
            .current_url()
            .ends_with("/check?domain=backscatter.lab"),
        "{}",
        browser.current_url()
    );
    let summary = browser.find("#verdict .summary").unwrap().text();
    assert!(
        summary.contains("mx2.backscatter.lab accepts mail for recipients that do not exist"),
        "{summary}"
    );
    // The diagram: the backup is the highlighted host, the primary is not.
    let problem = browser
        .find("#route-svg g.host.problem")
        .expect("a highlighted host in the diagram");
    assert_eq!(
        problem.attr("data-host").as_deref(),
        Some("mx2.backscatter.lab")
    );
    assert_eq!(problem.attr("data-role").as_deref(), Some("backup"));
    assert_eq!(browser.find_all("#route-svg g.host.problem").len(), 1);
    assert!(
        browser
            .find("#route-svg g.host[data-host='mx.backscatter.lab']")
            .is_ok()
    );
    // Drawn in red: the stylesheet's colour for a problem host.
    let stroke = browser.execute(
        "return getComputedStyle(document.querySelector('#route-svg g.host.problem rect')).stroke;",
        vec![],
    );
    assert_eq!(stroke, "rgb(179, 38, 30)", "{stroke}");
    // The finding, with its evidence.
    let finding = browser
        .find("[data-finding='backscatter-risk']")
        .expect("the backscatter-risk finding");
    let text = finding.text();
    assert!(text.contains("mx2.backscatter.lab"), "{text}");
    assert!(text.contains("RCPT TO:<"), "{text}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-web-backscatter.png");
    let png = browser.screenshot_png(&shot);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    eprintln!("{TEST}: screenshot saved to {}", shot.display());

    // The outage panel: six days, with a backup.
    browser
        .execute(
            "document.getElementById('outage-length').value = '6d'; document.getElementById('outage-backup').checked = true;",
            vec![],
        );
    let started = Instant::now();
    browser
        .find("#outage-form button")
        .expect("the outage panel's button")
        .click();
    let headline = browser
        .wait_for_text(
            "#outage-result .sim-headline",
            "With the backup MX none does",
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", browser.page_source()));
    assert!(
        headline.text().contains("senders return the message"),
        "{}",
        headline.text()
    );
    assert!(
        browser
            .find("#outage-result svg.timeline g.lane[data-sender='Postfix']")
            .is_ok()
    );
    assert!(started.elapsed() < WAIT);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-web-outage.png");
    browser.screenshot_png(&shot);
    drop(demo);
}
