//! The guest: qemu with the accelerator that works here, its serial log, forwarded
//! ports, and the agent that runs commands inside.

use super::*;

/// KVM when it runs a guest here, TCG otherwise. Some hosts have a /dev/kvm
/// that hangs a normal kernel, so KVM is proven by booting the kernel to its
/// "no root" panic within seconds.
pub(crate) fn accel(arch: Arch, kernel: &Path) -> &'static str {
    static KVM: OnceLock<bool> = OnceLock::new();
    if let Ok(forced) = std::env::var("HIL_ACCEL") {
        return if forced == "kvm" { "kvm" } else { "tcg" };
    }
    if arch != Arch::X86_64 || !cfg!(target_arch = "x86_64") {
        return "tcg";
    }
    let works = *KVM.get_or_init(|| {
        let t = Instant::now();
        let openable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let works = openable
            && Command::new("timeout")
                .arg("15")
                .arg("qemu-system-x86_64")
                .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults"])
                .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
                .arg("-kernel")
                .arg(kernel)
                .args(["-append", "console=ttyS0 panic=-1"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Kernel panic"));
        report(&format!(
            "KVM probe: {} ({:.1} s)",
            if works {
                "works"
            } else {
                "unusable here, using TCG"
            },
            t.elapsed().as_secs_f64()
        ));
        works
    });
    if works {
        "kvm"
    } else {
        "tcg"
    }
}

/// The running guest: qemu, its serial log, and the forwarded ports.
pub(crate) struct Guest {
    pub(crate) qemu: Child,
    pub(crate) dir: PathBuf,
    pub(crate) agent: SocketAddr,
    pub(crate) http: SocketAddr,
}

impl Guest {
    /// What the guest's screen shows, by QMP `screendump` (a PPM): its size
    /// and RGB pixels.
    pub(crate) async fn screendump(&self) -> Result<((usize, usize), Vec<u8>)> {
        let file = self.dir.join("screendump.ppm");
        let _ = std::fs::remove_file(&file);
        let stream = tokio::net::UnixStream::connect(self.dir.join("qmp.sock")).await?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        lines.next_line().await?; // the greeting
        write
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .await?;
        qmp_return(&mut lines).await?;
        let cmd = json!({"execute": "screendump", "arguments": {"filename": file}});
        write.write_all(format!("{cmd}\n").as_bytes()).await?;
        qmp_return(&mut lines).await?;
        let data = std::fs::read(&file)?;
        parse_ppm(&data).ok_or_else(|| anyhow!("screendump: not a P6 PPM"))
    }
}

type QmpLines = tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>;

/// Read QMP replies until the command's `return` (events skipped).
async fn qmp_return(lines: &mut QmpLines) -> Result<()> {
    loop {
        let line = lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow!("QMP closed"))?;
        let v: Value = serde_json::from_str(&line)?;
        if v.get("return").is_some() {
            return Ok(());
        }
        if let Some(e) = v.get("error") {
            bail!("QMP: {e}");
        }
    }
}

/// A binary PPM (P6, maxval 255): size and RGB.
fn parse_ppm(data: &[u8]) -> Option<((usize, usize), Vec<u8>)> {
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while data.get(at)?.is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while !data.get(at)?.is_ascii_whitespace() {
            at += 1;
        }
        fields.push(std::str::from_utf8(&data[start..at]).ok()?);
    }
    let (w, h): (usize, usize) = (fields[1].parse().ok()?, fields[2].parse().ok()?);
    if fields[0] != "P6" || fields[3] != "255" {
        return None;
    }
    let pixels = data.get(at + 1..at + 1 + w * h * 3)?;
    Some(((w, h), pixels.to_vec()))
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

impl Guest {
    pub(crate) fn share(&self) -> PathBuf {
        self.dir.join("share")
    }

    pub(crate) fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
    }

    pub(crate) fn device_log(&self) -> String {
        std::fs::read_to_string(self.share().join("device.log")).unwrap_or_default()
    }

    /// Run a shell command in the guest: (exit status, output).
    pub(crate) async fn sh(&self, cmd: &str) -> Result<(i32, String)> {
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(self.agent).await?;
            s.write_all(format!("{cmd}\n").as_bytes()).await?;
            let mut lines = BufReader::new(s).lines();
            let mut out = String::new();
            while let Some(line) = lines.next_line().await? {
                if let Some(code) = line.strip_prefix("HIL-EXIT ") {
                    return Ok((code.trim().parse().unwrap_or(-1), out));
                }
                out.push_str(&line);
                out.push('\n');
            }
            Err(anyhow!("agent closed without an exit status"))
        };
        tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .map_err(|_| anyhow!("guest command timed out: {cmd}"))?
            .with_context(|| format!("guest command: {cmd}"))
    }

    /// Run a command that must succeed; its output.
    pub(crate) async fn ok(&self, cmd: &str) -> Result<String> {
        let (code, out) = self.sh(cmd).await?;
        ensure!(code == 0, "`{cmd}` exited {code}: {out}");
        Ok(out)
    }

    pub(crate) async fn status(&self) -> Result<Value> {
        let out = self.ok("callbox ctl status").await?;
        serde_json::from_str(&out).with_context(|| format!("status JSON: {out}"))
    }

    /// Poll the daemon's status until `done` holds: the time it took and
    /// that status.
    pub(crate) async fn wait_status(
        &self,
        what: &str,
        secs: u64,
        done: impl Fn(&Value) -> bool,
    ) -> Result<(Duration, Value)> {
        let t = Instant::now();
        loop {
            // The control socket appears once the daemon is up.
            let s = match self.status().await {
                Ok(s) if done(&s) => return Ok((t.elapsed(), s)),
                Ok(s) => s.to_string(),
                Err(e) => format!("{e:#}"),
            };
            if t.elapsed() > Duration::from_secs(secs) {
                bail!("{what}: not within {secs} s; status {s}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn wait_state(&self, state: &str, secs: u64) -> Result<Duration> {
        let what = format!("state {state}");
        Ok(self
            .wait_status(&what, secs, |s| s["state"] == state)
            .await?
            .0)
    }

    /// A gpio-sim line's level: what the daemon drives on an LED.
    pub(crate) async fn line(&self, name: &str) -> Result<u8> {
        let out = self.ok(&format!("cat /run/gpio/{name}/value")).await?;
        out.trim().parse().with_context(|| format!("{name}: {out}"))
    }

    pub(crate) async fn leds(&self) -> Result<(u8, u8)> {
        Ok((self.line("LED_CALL").await?, self.line("LED_BANNED").await?))
    }

    /// Press a button: the line is pulled up (pressed) for `hold`, then down.
    pub(crate) async fn press(&self, name: &str, hold: Duration) -> Result<()> {
        self.ok(&format!(
            "echo pull-up > /run/gpio/{name}/pull; sleep {:.3}; echo pull-down > /run/gpio/{name}/pull",
            hold.as_secs_f64()
        ))
        .await
        .map(drop)
    }
}

/// What the guest boots from: the test's initramfs with its own /init, or
/// a Debian disk image with systemd (and the initramfs that mounts it).
pub(crate) enum Medium<'a> {
    Initramfs(&'a Path),
    Disk { initrd: &'a Path, image: &'a Path },
}

pub(crate) fn boot(
    arch: Arch,
    prepared: &Path,
    medium: Medium<'_>,
    dir: &Path,
    media_port: u16,
) -> Result<Guest> {
    let agent_port = free_port(false);
    let http_port = free_port(false);
    let kernel = prepared.join("vmlinux");
    let accel = accel(arch, &kernel);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut cmd = match arch {
        Arch::X86_64 => {
            let mut c = Command::new("qemu-system-x86_64");
            // PVH boot of the ELF kernel with qboot: no BIOS, no decompressor.
            c.args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
                .args(["-bios", "/usr/share/qemu/qboot.rom"]);
            c
        }
        Arch::Arm64 => {
            let mut c = Command::new("qemu-system-aarch64");
            c.args(["-M", "virt", "-cpu", "cortex-a72"]);
            c
        }
    };
    let console = if arch == Arch::X86_64 {
        "ttyS0"
    } else {
        "ttyAMA0"
    };
    let share = dir.join("share");
    let serial = std::fs::File::create(dir.join("serial.log"))?;
    cmd.args(["-accel", accel, "-smp", "2", "-m", "1024", "-nodefaults"])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel);
    let mut append = format!("console={console} panic=-1 quiet hil.time={now}");
    match medium {
        Medium::Initramfs(initrd) => {
            cmd.arg("-initrd").arg(initrd);
        }
        Medium::Disk { initrd, image } => {
            cmd.arg("-initrd")
                .arg(initrd)
                .arg("-drive")
                .arg(format!("file={},if=virtio,format=raw", image.display()));
            append.push_str(" net.ifnames=0 systemd.show_status=0 rw");
        }
    }
    cmd.arg("-append")
        .arg(append)
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{agent_port}-:{GUEST_AGENT},\
             hostfwd=tcp:127.0.0.1:{http_port}-:{GUEST_HTTP},\
             hostfwd=udp:127.0.0.1:{media_port}-:{media_port}"
        ))
        .args(["-device", "virtio-net-pci,netdev=n0"])
        // The board's screen (Debian's bochs DRM driver), read back over QMP.
        .args(["-device", "bochs-display"])
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join("qmp.sock").display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=share,security_model=none,id=share",
            share.display()
        ))
        .stdin(Stdio::null())
        .stdout(serial.try_clone()?)
        .stderr(serial);
    let qemu = cmd.spawn().context("starting qemu")?;
    report(&format!("{}: booting ({accel})", arch.name()));
    Ok(Guest {
        qemu,
        dir: dir.to_owned(),
        agent: SocketAddr::from((Ipv4Addr::LOCALHOST, agent_port)),
        http: SocketAddr::from((Ipv4Addr::LOCALHOST, http_port)),
    })
}
