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

/// The aarch64 callbox, built with the configuration in `cross/` that users
/// build with.
pub(crate) fn build_arm64() -> Result<PathBuf> {
    let t = Instant::now();
    let dir = work_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", &dir)
        .args([
            "build",
            "--bin",
            "callbox",
            "--target",
            "aarch64-unknown-linux-gnu",
        ])
        .arg("--config")
        .arg(repo().join("cross/config.toml"))
        .stdout(Stdio::null())
        .status()
        .context("cargo")?;
    ensure!(status.success(), "the aarch64 build failed: {status}");
    report(&format!(
        "arm64: callbox cross-built (aarch64-unknown-linux-gnu) in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(dir.join("aarch64-unknown-linux-gnu/debug/callbox"))
}
