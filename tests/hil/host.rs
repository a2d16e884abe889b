//! The host side: the repository, the prepared kernels, the arm64 cross build, free ports.

use super::*;

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/hil`: the cross build and the prepared kernels live here.
pub(crate) fn work_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("hil")
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
}

pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn prepare(arch: Arch) -> Result<PathBuf> {
    let cache = work_dir().join("cache");
    let t = Instant::now();
    let out = run(Command::new(repo().join("tests/hil/prepare.sh"))
        .arg(&cache)
        .arg(arch.name())
        .stderr(Stdio::inherit()))?;
    let kabi = out
        .lines()
        .find_map(|l| l.strip_prefix("KABI="))
        .ok_or_else(|| anyhow!("prepare.sh printed no KABI"))?;
    report(&format!(
        "{}: kernel {kabi}, its modules and gpio-sim ready in {:.1} s (cached in {})",
        arch.name(),
        t.elapsed().as_secs_f64(),
        cache.display()
    ));
    Ok(cache.join(kabi).join(arch.name()))
}

/// Why the arm64 leg cannot run on this machine, if it cannot.
pub(crate) fn arm64_unavailable() -> Option<String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("aarch64-unknown-linux-gnu"))
        .unwrap_or(false);
    if !installed {
        let added = Command::new("rustup")
            .args(["target", "add", "aarch64-unknown-linux-gnu"])
            .status()
            .is_ok_and(|s| s.success());
        if !added {
            return Some("the Rust target aarch64-unknown-linux-gnu is not installed and `rustup target add` failed".into());
        }
    }
    for (tool, package) in [
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
        ("qemu-system-aarch64", "qemu-system-arm"),
    ] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(format!(
                "{tool} is missing (Debian package {package}; scripts/deps.sh installs it)"
            ));
        }
    }
    if !Path::new("/usr/lib/aarch64-linux-gnu/pkgconfig/alsa.pc").exists() {
        return Some("libasound2-dev:arm64 is missing (scripts/deps.sh installs it)".into());
    }
    None
}

/// The release build for `arch` and its Debian packages, made by
/// `scripts/package.sh` (as users make them; arm64 cross-built with
/// `cross/`): the binary both guests boot is the one the packages ship.
pub(crate) struct Build {
    pub(crate) binary: PathBuf,
    /// `callbox_*.deb` and `callbox-room_*.deb`.
    pub(crate) debs: Vec<PathBuf>,
}

pub(crate) fn package(arch: Arch, deb_version: Option<&str>) -> Result<Build> {
    let t = Instant::now();
    let dir = work_dir();
    let (deb_arch, triple) = match arch {
        Arch::X86_64 => ("amd64", "x86_64-unknown-linux-gnu"),
        Arch::Arm64 => ("arm64", "aarch64-unknown-linux-gnu"),
    };
    let mut cmd = Command::new(repo().join("scripts/package.sh"));
    cmd.arg(deb_arch)
        .env("CARGO_TARGET_DIR", &dir)
        .stderr(Stdio::inherit());
    if let Some(v) = deb_version {
        cmd.args(["--deb-version", v]);
    }
    let out = run(&mut cmd)?;
    let debs: Vec<PathBuf> = out
        .lines()
        .filter(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .collect();
    ensure!(debs.len() == 2, "package.sh printed {out}");
    for deb in &debs {
        check_file_list(deb)?;
    }
    let sizes: Vec<String> = debs
        .iter()
        .map(|d| {
            let kb = std::fs::metadata(d).map(|m| m.len() / 1024).unwrap_or(0);
            let installed = run(Command::new("dpkg-deb")
                .arg("-f")
                .arg(d)
                .arg("Installed-Size"))
            .unwrap_or_default();
            format!(
                "{} {kb} KiB (installed {} KiB)",
                d.file_name().unwrap_or_default().to_string_lossy(),
                installed.trim()
            )
        })
        .collect();
    report(&format!(
        "{}: release build and packages in {:.1} s: {}",
        arch.name(),
        t.elapsed().as_secs_f64(),
        sizes.join(", ")
    ));
    Ok(Build {
        binary: dir.join(triple).join("release/callbox"),
        debs,
    })
}

/// Why the Debian guest cannot be built here, if it cannot: mmdebstrap, and
/// for a foreign architecture qemu-user through binfmt_misc.
pub(crate) fn debian_unavailable(arch: Arch) -> Option<String> {
    let has = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("mmdebstrap") || !has("mkfs.ext4") {
        return Some("mmdebstrap or mkfs.ext4 is missing (scripts/deps.sh installs them)".into());
    }
    let foreign = arch == Arch::Arm64 && !cfg!(target_arch = "aarch64");
    if foreign && !Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        return Some("no qemu-aarch64 binfmt_misc handler to build an arm64 root filesystem (scripts/deps.sh registers one with qemu-user-static where the kernel allows)".into());
    }
    None
}

/// What each package must carry (besides docs), and its conffiles.
const PACKAGE_FILES: [(&str, &[&str], &str); 2] = [
    (
        "callbox_",
        &[
            "./usr/bin/callbox",
            "./usr/lib/systemd/system/callbox.service",
            "./usr/lib/sysusers.d/callbox.conf",
            "./lib/udev/rules.d/60-callbox-gpio.rules",
            "./etc/callbox/device.toml",
            "./usr/share/doc/callbox/copyright",
        ],
        "/etc/callbox/device.toml",
    ),
    (
        "callbox-room_",
        &[
            "./usr/bin/callbox-room",
            "./usr/lib/systemd/system/callbox-room.service",
            "./usr/lib/sysusers.d/callbox-room.conf",
            "./usr/lib/sysctl.d/60-callbox-room.conf",
            "./etc/callbox-room/room.toml",
            "./usr/share/doc/callbox-room/copyright",
        ],
        "/etc/callbox-room/room.toml",
    ),
];

/// The package's file list and conffiles are what `PACKAGE_FILES` says.
fn check_file_list(deb: &Path) -> Result<()> {
    let name = deb
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let (_, files, conffile) = PACKAGE_FILES
        .iter()
        .find(|(prefix, _, _)| name.starts_with(prefix))
        .ok_or_else(|| anyhow!("unexpected package {name}"))?;
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let paths: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for f in *files {
        ensure!(paths.contains(f), "{name} lacks {f}: {paths:?}");
    }
    let control = run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(deb)
        .arg("conffiles"))?;
    ensure!(
        control.lines().any(|l| l.trim() == *conffile),
        "{name}: conffiles {control:?} lack {conffile}"
    );
    Ok(())
}

/// Print a scenario's outcome (`hil: x86_64 scenario 4 name: ok in 5.80 s:
/// detail`); whether it passed.
pub(crate) fn report_scenario(label: &str, t: Instant, result: Result<String>) -> bool {
    let secs = t.elapsed().as_secs_f64();
    match result {
        Ok(detail) => {
            report(&format!("{label}: ok in {secs:.2} s: {detail}"));
            true
        }
        Err(e) => {
            report(&format!("{label}: FAILED after {secs:.2} s: {e:#}"));
            false
        }
    }
}
