//! The packages on a real Debian 12 under systemd as PID 1: the guest's
//! root filesystem is made by mmdebstrap from Debian's archive
//! (`tests/hil/debian-image.sh`), on the same kernel and virtual board as
//! the other scenarios. The packages scripts/package.sh made are installed
//! with apt, provisioned, started, stalled, rebooted, upgraded and purged,
//! as an integrator would.

use super::*;

/// Runs the package scenarios on `arch`: how many failed.
pub(crate) async fn run(arch: Arch, prepared: &Path, build: &Build) -> Result<usize> {
    let dir = work_dir().join(format!("debian-{}", arch.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("share"))?;
    let (image, initrd) = (dir.join("root.img"), dir.join("initrd.gz"));
    let t = Instant::now();
    host::run(
        Command::new(repo().join("tests/hil/debian-image.sh"))
            .arg(arch.name())
            .arg(prepared)
            .arg(rootfs_cache())
            .arg(&image)
            .arg(&initrd)
            .stderr(Stdio::inherit()),
    )?;
    report(&format!(
        "{}: Debian 12 image (systemd) ready in {:.1} s",
        arch.name(),
        t.elapsed().as_secs_f64()
    ));
    let upgrade = package(arch, Some(UPGRADE_VERSION))?;
    for deb in build.debs.iter().chain(&upgrade.debs) {
        let name = deb.file_name().ok_or_else(|| anyhow!("no file name"))?;
        std::fs::copy(deb, dir.join("share").join(name))?;
    }
    let provisioned = provisioned_device()?;
    std::fs::write(dir.join("share/device.toml"), &provisioned.toml)?;
    std::fs::write(dir.join("share/usersig"), &provisioned.user_sig)?;
    let mut d = Debian {
        arch,
        prepared: prepared.to_owned(),
        image,
        initrd,
        dir,
        guest: None,
        user_sig: provisioned.user_sig,
    };
    d.boot().await?;
    let (mut ran, mut failed) = (0, 0);
    macro_rules! scenario {
        ($n:expr, $name:expr, $f:ident) => {
            ran += 1;
            let t = Instant::now();
            let result = d.$f().await;
            failed += usize::from(!report_scenario(
                &format!("{} debian {} {}", arch.name(), $n, $name),
                t,
                result,
            ));
        };
    }
    scenario!(1, "apt_install_then_ready_and_in_call", install_and_start);
    scenario!(2, "journal_has_priorities_and_no_secrets", journal);
    scenario!(3, "hardened_unit_reaches_the_devices", devices);
    scenario!(4, "watchdog_restarts_a_stalled_daemon", watchdog);
    scenario!(5, "boot_to_ready_and_first_rtp", reboot);
    scenario!(6, "upgrade_keeps_the_edited_config", upgrade_keeps_config);
    scenario!(7, "purge_removes_user_and_files", purge);
    if failed > 0 {
        if let Some(g) = &d.guest {
            if let Ok((_, log)) = g
                .sh("journalctl -b --no-pager -n 60 -u callbox -u callbox-room")
                .await
            {
                report(&format!("{}: journal (last 60 lines):\n{log}", arch.name()));
            }
        }
    }
    if let Some(g) = &d.guest {
        let _ = g.sh("systemctl poweroff --force --force").await;
    }
    report(&format!(
        "{}: {} of {ran} package scenarios passed, {:.1} s",
        arch.name(),
        ran - failed,
        t.elapsed().as_secs_f64()
    ));
    Ok(failed)
}

const UPGRADE_VERSION: &str = "0.1.0-2";
/// A line the integrator adds to the packaged config: it must survive an upgrade.
const LOCAL_EDIT: &str = "# provisioned for the front door";

/// Debian's root filesystems are downloads keyed by their package list:
/// kept outside the clone, like a package cache.
fn rootfs_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| work_dir().join("cache"));
    base.join("callbox/rootfs")
}

struct Provisioned {
    toml: String,
    user_sig: String,
}

/// The board's config as the HIL provisions it, with the userSig in its own
/// file (`/etc/callbox/usersig`) as the packaged config expects.
fn provisioned_device() -> Result<Provisioned> {
    let board = board(VIDEO_SIZE, &["YU12"], "openh264")?;
    let table: toml::Table = toml::from_str(&board.text())?;
    let user_sig = table
        .get("room")
        .and_then(|r| r.get("user_sig"))
        .and_then(|s| s.as_str())
        .ok_or_else(|| anyhow!("no user_sig in the provisioned config"))?
        .to_owned();
    let toml = board
        .unset("room", "user_sig")
        .set("room", "user_sig_file", "/etc/callbox/usersig")
        .text();
    Ok(Provisioned {
        toml: format!("{LOCAL_EDIT}\n{toml}"),
        user_sig,
    })
}

struct Debian {
    arch: Arch,
    prepared: PathBuf,
    image: PathBuf,
    initrd: PathBuf,
    dir: PathBuf,
    guest: Option<Guest>,
    user_sig: String,
}

impl Debian {
    fn guest(&self) -> Result<&Guest> {
        self.guest
            .as_ref()
            .ok_or_else(|| anyhow!("the guest is not running"))
    }

    /// Boot the image; the time until the agent answers.
    async fn boot(&mut self) -> Result<Duration> {
        if let Some(mut old) = self.guest.take() {
            // A reboot ends qemu (-no-reboot) once the guest has synced.
            let t = Instant::now();
            while old.qemu.try_wait()?.is_none() && t.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let t = Instant::now();
        let medium = Medium::Disk {
            initrd: &self.initrd,
            image: &self.image,
        };
        let guest = boot(
            self.arch,
            &self.prepared,
            medium,
            &self.dir,
            free_port(true),
        )?;
        let limit = Duration::from_secs(300);
        loop {
            if guest.sh("true").await.is_ok_and(|(c, _)| c == 0) {
                break;
            }
            ensure!(
                t.elapsed() < limit,
                "the Debian guest's agent did not answer in {} s; serial:\n{}",
                limit.as_secs(),
                guest.serial()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        report(&format!(
            "{}: Debian guest up (systemd, agent answering) in {:.1} s",
            self.arch.name(),
            t.elapsed().as_secs_f64()
        ));
        self.guest = Some(guest);
        Ok(t.elapsed())
    }

    /// `systemctl show` properties of a unit.
    async fn show(
        &self,
        unit: &str,
        props: &str,
    ) -> Result<std::collections::HashMap<String, String>> {
        let out = self
            .guest()?
            .ok(&format!("systemctl show -p {props} {unit}"))
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    async fn wait_active(
        &self,
        unit: &str,
        secs: u64,
    ) -> Result<std::collections::HashMap<String, String>> {
        let t = Instant::now();
        loop {
            let p = self
                .show(unit, "ActiveState,SubState,StatusText,NRestarts,MainPID,ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic")
                .await?;
            if p.get("ActiveState").map(String::as_str) == Some("active") {
                return Ok(p);
            }
            ensure!(
                t.elapsed() < Duration::from_secs(secs),
                "{unit} not active in {secs} s: {p:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Scenario 1: apt installs both packages (no network: their
    /// dependencies are in the image); the device's service is enabled, not
    /// started, until provisioned; started, it is `active (running)` only
    /// once the daemon said READY=1, and its STATUS line has the call state.
    async fn install_and_start(&mut self) -> Result<String> {
        let g = self.guest()?;
        let install = g
            .ok("cd /share && apt-get install -y -q --no-install-recommends ./callbox_0.1.0-1_*.deb ./callbox-room_0.1.0-1_*.deb 2>&1")
            .await?;
        ensure!(
            install.contains("provision the device") || install.contains("Provision the device"),
            "no provisioning hint: {install}"
        );
        let enabled = g.ok("systemctl is-enabled callbox callbox-room").await?;
        let (_, active) = g.sh("systemctl is-active callbox").await?;
        ensure!(
            enabled.lines().all(|l| l.trim() == "enabled") && active.trim() == "inactive",
            "after install: enabled {enabled:?}, active {active:?}"
        );
        let perms = g.ok("stat -c '%U:%G %a %n' /etc/callbox /etc/callbox/device.toml /etc/callbox-room/admin.key; id callbox; id callbox-room").await?;
        ensure!(
            perms.contains("root:callbox 750 /etc/callbox\n")
                && perms.contains("root:callbox 640 /etc/callbox/device.toml")
                && perms.contains("root:root 600 /etc/callbox-room/admin.key")
                && perms.contains("groups=")
                && perms.contains("(video)")
                && perms.contains("(audio)"),
            "users and permissions: {perms}"
        );
        // The room's media port may have its 8 MiB socket buffers at once.
        let rmem = g.ok("cat /proc/sys/net/core/rmem_max").await?;
        ensure!(
            rmem.trim() == "8388608",
            "net.core.rmem_max after install: {rmem}"
        );
        // Started before it is provisioned: the config error in the journal,
        // exit 78, and no restart loop.
        let _ = g.sh("systemctl start callbox").await;
        let unprovisioned = self
            .show("callbox", "ActiveState,Result,ExecMainStatus,NRestarts")
            .await?;
        let g = self.guest()?;
        let said = g
            .ok("journalctl -u callbox -b --no-pager | grep -m1 'room.user_sig_file' || true")
            .await?;
        ensure!(
            unprovisioned.get("ExecMainStatus").map(String::as_str) == Some("78")
                && unprovisioned.get("NRestarts").map(String::as_str) == Some("0")
                && said.contains("/etc/callbox/usersig"),
            "started unprovisioned: {unprovisioned:?}, journal {said:?}"
        );
        // The room: the app's key as root's file, handed over by LoadCredential=.
        g.ok(&format!("(umask 077; printf %s '{}' > /etc/callbox-room/app.key) && systemctl start callbox-room", callbox::room::local::DEMO_SECRET_KEY)).await?;
        self.wait_active("callbox-room", 30).await?;
        // Provision the device as the postinst says: config, userSig, start.
        let g = self.guest()?;
        g.ok("cp /share/device.toml /etc/callbox/device.toml && install -m 0640 -g callbox /share/usersig /etc/callbox/usersig && systemctl start callbox").await?;
        let p = self.wait_active("callbox", 60).await?;
        let started = micros(&p, "ExecMainStartTimestampMonotonic");
        let ready = micros(&p, "ActiveEnterTimestampMonotonic");
        let g = self.guest()?;
        let ready_logged = g
            .ok("journalctl -u callbox -b -o short-monotonic --no-pager | grep -m1 -i 'ready' || true")
            .await?;
        ensure!(ready > started, "active before the daemon started: {p:?}");
        let t = Instant::now();
        let status = loop {
            let s = self.show("callbox", "StatusText").await?;
            let text = s.get("StatusText").cloned().unwrap_or_default();
            if text.contains("in call") || t.elapsed() > Duration::from_secs(30) {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        ensure!(status.contains("in call"), "STATUS= says {status:?}");
        let systemctl = self
            .guest()?
            .ok("systemctl status callbox --no-pager | head -5")
            .await?;
        Ok(format!(
            "apt installed both packages; enabled, inactive until provisioned; started unprovisioned: exit 78, not restarted, journal: \"{}\"; provisioned and started: active {:.2} s after exec (READY=1){}; STATUS: \"{status}\"; {}",
            said.trim(),
            (ready - started) as f64 / 1e6,
            if ready_logged.trim().is_empty() { String::new() } else { format!(", journal: \"{}\"", ready_logged.trim()) },
            systemctl.lines().nth(2).unwrap_or_default().trim()
        ))
    }

    /// Scenario 2: the journal holds the daemon's log with syslog
    /// priorities, and not the userSig nor the app's key.
    async fn journal(&mut self) -> Result<String> {
        let g = self.guest()?;
        let json = g
            .ok("journalctl -u callbox -u callbox-room -b -o json --no-pager")
            .await?;
        let mut priorities = std::collections::BTreeMap::new();
        let mut lines = 0;
        for line in json.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_default();
            if let Some(p) = v["PRIORITY"].as_str() {
                *priorities.entry(p.to_owned()).or_insert(0) += 1;
                lines += 1;
            }
        }
        ensure!(
            lines > 5 && priorities.len() >= 2,
            "priorities in the journal: {priorities:?}"
        );
        let secrets = [
            self.user_sig.as_str(),
            callbox::room::local::DEMO_SECRET_KEY,
        ];
        ensure!(
            secrets.iter().all(|s| !json.contains(s)),
            "a secret is in the journal"
        );
        Ok(format!("{lines} entries, by priority {priorities:?}; neither the userSig nor the app key appears"))
    }

    /// Scenario 3: under the hardened unit (DevicePolicy=closed, its groups)
    /// the daemon has the camera, the sound card and the GPIO lines.
    async fn devices(&mut self) -> Result<String> {
        let g = self.guest()?;
        let t = Instant::now();
        let s = loop {
            let s = g.status().await?;
            if s["media"]["video_frames_encoded"].as_u64().unwrap_or(0) > 30
                || t.elapsed() > Duration::from_secs(20)
            {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let frames = s["media"]["video_frames_encoded"].as_u64().unwrap_or(0);
        let audio = s["media"]["audio_packets_sent"].as_u64().unwrap_or(0);
        let led = g.line("LED_CALL").await?;
        let chip = g
            .ok("stat -c '%n %G %a' /dev/$(cat /sys/kernel/config/gpio-sim/board/gpio-bank0/chip_name)")
            .await?;
        ensure!(
            frames > 30 && audio > 0 && led == 1,
            "frames {frames}, audio {audio}, LED_CALL {led}: {s}"
        );
        ensure!(
            chip.trim().ends_with(" callbox 660"),
            "gpio-sim's chip: {chip} (the udev rule)"
        );
        let security = g
            .ok("systemd-analyze security callbox --no-pager | tail -1")
            .await?;
        Ok(format!(
            "{frames} frames encoded from vivid, {audio} audio packets from snd-aloop, LED_CALL=1 on gpio-sim, {} (the udev rule); systemd-analyze security: {}",
            chip.trim(),
            security.trim()
        ))
    }

    /// Scenario 4: the daemon stopped dead (SIGSTOP): systemd's watchdog
    /// (WatchdogSec=10) kills it and restarts it (RestartSec=2), and it is
    /// back in the call.
    async fn watchdog(&mut self) -> Result<String> {
        let before = self.show("callbox", "MainPID,NRestarts").await?;
        let pid = before.get("MainPID").cloned().unwrap_or_default();
        let restarts: u32 = before
            .get("NRestarts")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        self.guest()?.ok(&format!("kill -STOP {pid}")).await?;
        let t = Instant::now();
        let p = loop {
            let p = self
                .show("callbox", "MainPID,NRestarts,ActiveState,Result")
                .await?;
            let n: u32 = p.get("NRestarts").and_then(|n| n.parse().ok()).unwrap_or(0);
            if n > restarts && p.get("ActiveState").map(String::as_str) == Some("active") {
                break p;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(40),
                "not restarted in 40 s: {p:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let restarted = t.elapsed();
        let back = self.guest()?.wait_state("in-call", 40).await?;
        let why = self
            .guest()?
            .ok("journalctl -u callbox -b --no-pager | grep -m1 -i watchdog || true")
            .await?;
        ensure!(
            restarted < Duration::from_secs(10 + 2 + 10),
            "restart took {restarted:?}"
        );
        Ok(format!(
            "SIGSTOP pid {pid} -> restarted (new pid {}) {:.1} s later (WatchdogSec 10 + RestartSec 2), in call again {:.1} s after that; journal: \"{}\"",
            p.get("MainPID").cloned().unwrap_or_default(),
            restarted.as_secs_f64(),
            back.as_secs_f64(),
            why.trim()
        ))
    }

    /// Scenario 5: reboot; the enabled service starts at boot: boot to
    /// READY=1 and to the first RTP packet (TCG: relative only).
    async fn reboot(&mut self) -> Result<String> {
        let _ = self.guest()?.sh("systemctl reboot").await;
        self.boot().await?;
        let p = self.wait_active("callbox", 120).await?;
        let ready_s = micros(&p, "ActiveEnterTimestampMonotonic") as f64 / 1e6;
        let started_s = micros(&p, "ExecMainStartTimestampMonotonic") as f64 / 1e6;
        self.guest()?
            .wait_status("first RTP", 60, |s| s["media"]["first_rtp_ms"].is_number())
            .await?;
        // The daemon's own clock, against the guest's uptime read with it:
        // exec and loading the binary (slow under TCG) come before its start.
        let out = self
            .guest()?
            .ok("cut -d' ' -f1 /proc/uptime && callbox ctl status")
            .await?;
        let (uptime, status) = out.split_once('\n').unwrap_or_default();
        let s: Value = serde_json::from_str(status).with_context(|| format!("status: {status}"))?;
        let own_start = uptime.trim().parse::<f64>().unwrap_or(f64::NAN)
            - s["uptime_s"].as_f64().unwrap_or(f64::NAN);
        let rtp_s = own_start + s["media"]["first_rtp_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0;
        let analyze = self.guest()?.ok("systemd-analyze time | head -1").await?;
        Ok(format!(
            "since boot: systemd started callbox at {started_s:.1} s, its main() ran at {own_start:.1} s, READY=1 seen by systemd at {ready_s:.1} s, first RTP at {rtp_s:.1} s; {}",
            analyze.trim()
        ))
    }

    /// Scenario 6: apt upgrades to a newer build: the integrator's edited
    /// config stays, the service is restarted on the new version and back
    /// in the call.
    async fn upgrade_keeps_config(&mut self) -> Result<String> {
        let before = self.show("callbox", "MainPID").await?;
        let g = self.guest()?;
        let out = g
            .ok(&format!(
                "cd /share && apt-get install -y -q ./callbox_{UPGRADE_VERSION}_*.deb 2>&1"
            ))
            .await?;
        let version = g.ok("dpkg-query -W -f='${Version}\\n' callbox").await?;
        let config = g
            .ok("head -1 /etc/callbox/device.toml; stat -c '%U:%G %a' /etc/callbox/device.toml")
            .await?;
        ensure!(
            version.trim() == UPGRADE_VERSION,
            "version {version}: {out}"
        );
        ensure!(
            config.starts_with(LOCAL_EDIT) && config.contains("root:callbox 640"),
            "the config after the upgrade: {config}"
        );
        let back = g.wait_state("in-call", 60).await?;
        let after = self.show("callbox", "MainPID").await?;
        ensure!(
            before.get("MainPID") != after.get("MainPID"),
            "not restarted by the upgrade: {after:?}"
        );
        Ok(format!(
            "upgraded to {UPGRADE_VERSION}; /etc/callbox/device.toml kept (\"{LOCAL_EDIT}\", root:callbox 640); restarted (pid {} -> {}), in call {:.1} s later",
            before.get("MainPID").cloned().unwrap_or_default(),
            after.get("MainPID").cloned().unwrap_or_default(),
            back.as_secs_f64()
        ))
    }

    /// Scenario 7: purge removes the services, their users and files.
    async fn purge(&mut self) -> Result<String> {
        let g = self.guest()?;
        g.ok("apt-get purge -y -q callbox callbox-room 2>&1")
            .await?;
        let left = g
            .ok("for p in /etc/callbox /etc/callbox-room /usr/bin/callbox /usr/lib/systemd/system/callbox.service /var/lib/callbox; do [ -e $p ] && echo $p; done; getent passwd callbox callbox-room; getent group callbox callbox-room; dpkg-statoverride --list | grep callbox; true")
            .await?;
        ensure!(left.trim().is_empty(), "left after purge: {left}");
        let (_, state) = g.sh("systemctl is-active callbox").await?;
        Ok(format!(
            "no files, users, groups or overrides left; callbox is {}",
            state.trim()
        ))
    }
}

fn micros(p: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    p.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}
