//! The `callbox` binary as a user runs it: userSig tools, and the room
//! service started from a config file (health answered, bad configs refused
//! with file, key and reason).

mod common;

use callbox::room::local::DeviceToml;
use common::free_port;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");
const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run callbox");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `callbox usersig gen` for dev-1 of the test app with the given validity.
fn gen_sig(expire: &str) -> (i32, String, String) {
    run(&[
        "usersig",
        "gen",
        "--sdkappid",
        "1400000000",
        "--key",
        KEY,
        "--userid",
        "dev-1",
        "--expire",
        expire,
    ])
}

#[test]
fn usersig_gen_then_verify_and_each_refusal() {
    let (code, sig, err) = gen_sig("600");
    assert_eq!(code, 0, "{err}");
    let sig = sig.trim();
    assert!(!sig.is_empty() && !sig.contains(['+', '/', '=']));

    let (code, out, _) = run(&[
        "usersig",
        "verify",
        "--sdkappid",
        "1400000000",
        "--key",
        KEY,
        "--userid",
        "dev-1",
        sig,
    ]);
    assert_eq!(code, 0);
    assert!(out.starts_with("valid: userId dev-1"), "{out}");

    let dir = std::env::temp_dir().join(format!("callbox-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let kf = key_file.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--sdkappid",
                "1400000000",
                "--key",
                "other",
                "--userid",
                "dev-1",
                sig,
            ],
            "invalid: bad signature",
        ),
        (
            &[
                "--sdkappid",
                "1400000001",
                "--key-file",
                kf,
                "--userid",
                "dev-1",
                sig,
            ],
            "invalid: wrong app",
        ),
        (
            &[
                "--sdkappid",
                "1400000000",
                "--key-file",
                kf,
                "--userid",
                "dev-2",
                sig,
            ],
            "invalid: wrong user",
        ),
        (
            &[
                "--sdkappid",
                "1400000000",
                "--key-file",
                kf,
                "--userid",
                "dev-1",
                "%%%",
            ],
            "invalid: bad encoding",
        ),
    ];
    for (args, reason) in cases {
        let mut a = vec!["usersig", "verify"];
        a.extend_from_slice(args);
        let (code, _, err) = run(&a);
        assert_eq!(code, 1, "{reason}");
        assert!(
            err.starts_with(reason) && err.lines().count() == 1,
            "{reason}: {err}"
        );
        assert!(!err.contains(KEY), "the key is never printed");
    }
    let (code, old, _) = gen_sig("0");
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_millis(1100));
    let (code, _, err) = run(&[
        "usersig",
        "verify",
        "--sdkappid",
        "1400000000",
        "--key",
        KEY,
        "--userid",
        "dev-1",
        old.trim(),
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("invalid: expired"), "{err}");
}

#[test]
fn room_serves_health_from_its_config_and_refuses_bad_configs() {
    let dir = std::env::temp_dir().join(format!("callbox-room-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (http, udp) = (free_port(false), free_port(false));
    let example = std::fs::read_to_string("config/room.toml")
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}"))
        .replace("127.0.0.1:50000", &format!("127.0.0.1:{udp}"));
    let file = dir.join("room.toml");
    // As shipped, the example's published sample keys are refused, with how to make real ones.
    std::fs::write(&file, &example).unwrap();
    let (code, _, err) = run(&["room", "--config", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    for key in ["admin.key", "apps[0].secret_key"] {
        assert!(
            err.contains(&format!(
                "room.toml: {key}: is a published sample key; generate one with `openssl rand -hex 32`"
            )),
            "{err}"
        );
    }
    let admin_key = "a0".repeat(16);
    let good = example
        .replace("change-me-please-0123456789", &admin_key)
        .replace(KEY, &"5e".repeat(32));
    std::fs::write(&file, &good).unwrap();
    let mut child = Command::new(BIN)
        .args(["room", "--config", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", http)) {
            use std::io::Write;
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            break r;
        }
        assert!(Instant::now() < deadline, "room service did not come up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    child.kill().unwrap();
    let _ = child.wait();
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        log.push_str(&line);
    }
    assert!(
        !log.contains(&"5e".repeat(32)) && !log.contains(&admin_key),
        "secrets stay out of the log"
    );

    let bad = good.replace("udp_listen", "udp_lisen");
    std::fs::write(&file, bad).unwrap();
    let (code, _, err) = run(&["room", "--config", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("room.toml: media.udp_lisen (line") && err.contains("unknown field"),
        "{err}"
    );
    let bad = good.replace(&admin_key, "short-admin-key");
    std::fs::write(&file, bad).unwrap();
    let (code, _, err) = run(&["room", "--config", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("room.toml: admin.key: must be at least 32 bytes; generate one with `openssl rand -hex 32`"),
        "{err}"
    );
    let (code, _, err) = run(&["room", "--config", "/nonexistent/room.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/room.toml: cannot read"), "{err}");
}

#[test]
fn device_refuses_bad_configs_naming_file_and_key() {
    // The shipped example parses; on this machine its userSig file is absent.
    let (code, _, err) = run(&["device", "--config", "config/device.toml"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "config/device.toml: room.user_sig_file: /etc/callbox/usersig is not a readable file"
        ),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("callbox-cli-device-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("device.toml");
    std::fs::write(
        &cfg,
        "[room]\nurl = \"http://x\"\nsdk_app_id = 1\nuser_id = \"a b\"\nuser_sig = \"s\"\nroom_id = 0\n[video]\nfps = 0\n\
         [call]\ndead_media_ms = 9000\n[gpio]\ncall_button = { line = 3 }\n[service]\nlog_level = \"loud\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["device", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    for key in [
        "room.url",
        "room.user_id",
        "room.room_id",
        "video.fps",
        "call.dead_media_ms",
        "gpio.call_button.chip",
        "gpio.hangup_button",
        "service.log_level",
    ] {
        assert!(
            err.contains(&format!("device.toml: {key}: ")),
            "{key} not named in:\n{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Both unit files pass `systemd-analyze verify` (with ExecStart pointed at
/// the built binary, which verify requires to exist); the device unit's
/// `systemd-analyze security` exposure is printed and kept low.
#[test]
fn systemd_units_verify() {
    let dir = std::env::temp_dir().join(format!("callbox-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (unit, path) in [
        ("callbox.service", "systemd/callbox.service"),
        ("callbox-room.service", "systemd/room/callbox-room.service"),
    ] {
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace("/usr/bin/callbox-room", BIN)
            .replace("/usr/bin/callbox", BIN);
        let path = dir.join(unit);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze (scripts/deps.sh installs it)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !err.contains(unit), "{unit}: {err}");
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(dir.join("callbox.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    println!(
        "callbox.service: {}",
        overall.trim_start_matches('→').trim()
    );
    let level: f64 = overall
        .split("callbox.service:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable: {overall}"));
    assert!(level <= 2.0, "exposure {level} (was 1.5 when written)");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GPIO line that is not there stops the daemon at startup, naming key,
/// line and where it looked; `callbox probe --config` reports the same.
#[test]
fn missing_gpio_line_is_a_startup_error_and_probe_reports_it() {
    let dir = std::env::temp_dir().join(format!("callbox-cli-gpio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("device.toml");
    let toml = DeviceToml::loopback("ws://127.0.0.1:9/ws", "d", 1, 60)
        .set("call", "buttons", "toggle")
        .set_toml("gpio", "call_button", r#"{ line = "BTN_NOPE" }"#)
        .unwrap()
        .set(
            "service",
            "control_socket",
            dir.join("control.sock").display().to_string(),
        );
    std::fs::write(&cfg, toml.text()).unwrap();
    let (code, _, err) = run(&["device", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "E_GPIO_NO_LINE: gpio.call_button: line \"BTN_NOPE\" not found on any GPIO chip"
        ),
        "{err}"
    );
    let (code, out, _) = run(&["probe", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Cameras (V4L2):") && out.contains("GPIO:"),
        "{out}"
    );
    assert!(
        out.contains("FAIL gpio.call_button: E_GPIO_NO_LINE"),
        "{out}"
    );
    let (code, out, _) = run(&["probe", "--json"]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["cameras"].is_array() && report["checks"] == serde_json::json!([]));
    // `callbox ctl` with no daemon: a clear error, non-zero exit.
    let (code, _, err) = run(&[
        "ctl",
        "--socket",
        dir.join("control.sock").to_str().unwrap(),
        "status",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("E_CONTROL_SOCKET") && err.contains("control.sock"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `callbox usersig gen-private-map-key` makes a key that opens exactly
/// its room with its privileges (checked with the library's verifier).
#[test]
fn gen_private_map_key_scopes_a_room() {
    let (code, out, err) = run(&[
        "usersig",
        "gen-private-map-key",
        "--sdkappid",
        "1400000000",
        "--key",
        KEY,
        "--userid",
        "dev-1",
        "--str-room-id",
        "front-door",
        "--privileges",
        "14",
    ]);
    assert_eq!(code, 0, "{err}");
    let now = callbox::usersig::unix_now();
    let door = callbox::protocol::RoomId::Str("front-door".into());
    let verify = |room: &callbox::protocol::RoomId| {
        callbox::private_map_key::verify(out.trim(), 1400000000, KEY, "dev-1", room, now)
    };
    assert_eq!(verify(&door), Ok(14));
    assert_eq!(
        verify(&callbox::protocol::RoomId::Str("back-door".into())),
        Err(callbox::private_map_key::PrivateMapKeyError::WrongRoom)
    );
}

fn write_wav(path: &std::path::Path, samples: &[i16], rate: u32, channels: u16) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}

fn read_wav(path: &std::path::Path) -> Vec<i16> {
    hound::WavReader::open(path)
        .unwrap()
        .into_samples::<i16>()
        .map(|s| s.unwrap())
        .collect()
}

fn power_db(x: &[i16]) -> f64 {
    let p = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64;
    10.0 * (p + 1e-9).log10()
}

/// `callbox audio process` runs the device's chain on recordings: a 60 ms
/// echo of a far end that talks in bursts is cancelled and its delay
/// reported; with everything off the microphone passes through; bad files
/// are named with what is wrong with them.
#[test]
fn audio_process_cancels_a_recorded_echo_and_names_bad_files() {
    let dir = std::env::temp_dir().join(format!("callbox-audio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = 48_000 * 10;
    let mut seed = 12345u64;
    let far: Vec<i16> = (0..n)
        .map(|i| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((seed >> 33) as f64 / (1u64 << 31) as f64) - 1.0;
            // Syllable-like bursts: 4 per second.
            let envelope = ((i as f64 / 48_000.0 * 4.0 * std::f64::consts::PI).sin()).max(0.0);
            (noise * envelope * 8000.0) as i16
        })
        .collect();
    let d = 48 * 60;
    let mic: Vec<i16> = (0..n)
        .map(|i| if i >= d { far[i - d] / 2 } else { 0 })
        .collect();
    let (f, m, o) = (
        dir.join("far.wav"),
        dir.join("mic.wav"),
        dir.join("out.wav"),
    );
    write_wav(&f, &far, 48_000, 1);
    write_wav(&m, &mic, 48_000, 1);
    let args = |extra: &[&str]| {
        let mut a = vec![
            "audio",
            "process",
            "--far",
            f.to_str().unwrap(),
            "--mic",
            m.to_str().unwrap(),
            "--out",
            o.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run_s = |a: Vec<String>| run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (code, out, err) = run_s(args(&[]));
    assert_eq!(code, 0, "{err}");
    let processed = read_wav(&o);
    assert_eq!(processed.len(), n, "same length out");
    let tail = 5 * 48_000..n;
    let removed = power_db(&mic[tail.clone()]) - power_db(&processed[tail.clone()]);
    println!(
        "{}; echo removed over the last 5 s: {removed:.1} dB",
        out.trim()
    );
    assert!(removed >= 25.0, "{removed:.1} dB: {out}");
    let delay: i32 = out
        .split("echo delay ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    assert!(
        (50..=70).contains(&delay),
        "reported delay {delay} ms: {out}"
    );
    let (code, _, err) = run_s(args(&[
        "--aec", "off", "--ns", "off", "--agc", "off", "--hpf", "off",
    ]));
    assert_eq!(code, 0, "{err}");
    let passed = read_wav(&o);
    let kept = power_db(&mic[tail.clone()]) - power_db(&passed[tail]);
    assert!(
        kept.abs() < 1.0,
        "off leaves the microphone as it is: {kept:.2} dB"
    );
    // Bad inputs, each named.
    write_wav(&m, &mic[..n / 2], 48_000, 1);
    let (code, _, err) = run_s(args(&[]));
    assert!(
        code != 0 && err.contains("must be the same length") && err.contains("mic.wav"),
        "{err}"
    );
    write_wav(&m, &mic, 44_100, 2);
    let (code, _, err) = run_s(args(&[]));
    assert!(
        code != 0
            && err.contains(
                "mic.wav: 44100 Hz, 2 channel(s), 16-bit; 48 kHz mono 16-bit WAV is needed"
            ),
        "{err}"
    );
    std::fs::write(&m, "not a wav").unwrap();
    let (code, _, err) = run_s(args(&[]));
    assert!(
        code != 0 && err.contains("mic.wav: not a readable WAV file"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
