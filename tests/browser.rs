//! Browser end-to-end tests: Debian's Chromium, headless, driven by
//! playwright-core (tests/browser/*.mjs), against `callbox demo`, all
//! inside a fresh network namespace that has only `lo`, so every ICE
//! candidate is 127.0.0.1 and no traffic leaves the machine.
//! Prerequisites come from `scripts/deps.sh` (chromium, npm packages).

mod common;

use std::path::{Path, PathBuf};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// One browser scenario at a time: two Chromiums with real-time media on a
/// 2-core machine would measure the machine, not callbox.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_script(script: &str) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = browser_dir();
    let chromium =
        std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/lib/chromium/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/deps.sh (installs Debian's chromium)"
    );
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run scripts/deps.sh (npm ci in tests/browser)"
    );
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("browser-artifacts")
        .join(script.trim_end_matches(".mjs"));
    let summary = artifacts.join("failures.txt");
    let _ = std::fs::remove_file(&summary);
    let status = common::in_loopback_netns(&format!("exec node {script}"))
        .current_dir(&dir)
        .env("CALLBOX_BIN", env!("CARGO_BIN_EXE_callbox"))
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .status()
        .expect("unshare runs (util-linux)");
    // The script names its failed scenarios in failures.txt; a crash leaves none.
    let failures = std::fs::read_to_string(&summary)
        .unwrap_or_else(|_| format!("no failures.txt: the script itself ended with {status}\n"));
    assert!(
        status.success(),
        "{script} failed; artifacts in {}\n{failures}",
        artifacts.display()
    );
}

#[test]
fn device_and_chromium_call_each_other() {
    run_script("device_call.mjs");
}

#[test]
fn browsers_call_through_the_room_service() {
    run_script("calls.mjs");
}

#[test]
fn chromium_calls_the_device_over_ice_tcp_when_udp_is_dropped() {
    run_script("firewall.mjs");
}

#[test]
fn chromium_hears_the_rooms_network_quality_and_it_follows_loss() {
    run_script("network_quality.mjs");
}
