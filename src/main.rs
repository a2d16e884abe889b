//! The `callbox` binary: thin subcommands over the library.

use anyhow::{bail, Context};
use callbox::usersig;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "callbox",
    version,
    about = "Video-call appliance with the TRTC v4 call model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the room service (signaling + SFU + admin API + web).
    #[cfg(feature = "room")]
    Room {
        #[arg(long, default_value = "config/room.toml")]
        config: PathBuf,
    },
    /// Room service on loopback plus a device on a synthetic camera and
    /// microphone, in a room; open the printed URL to call the device.
    #[cfg(feature = "room")]
    Demo {
        /// HTTP port of the room service on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Room the device waits in.
        #[arg(long, default_value_t = 1234)]
        room_id: u32,
        /// Write what the device hears (the browser's audio) to this WAV file.
        #[arg(long)]
        wav: Option<PathBuf>,
        /// Show who calls the device on a screen written to this
        /// YUV4MPEG2 file or FIFO (`mpv FILE`).
        #[arg(long)]
        screen: Option<PathBuf>,
        /// Room service only, no device.
        #[arg(long)]
        no_device: bool,
    },
    /// Run the device: join the configured room, publish camera and microphone, play the room.
    Device {
        #[arg(long, default_value = "/etc/callbox/device.toml")]
        config: PathBuf,
    },
    /// Talk to a running device daemon over its control socket.
    Ctl {
        #[arg(long, default_value = callbox::appliance::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        #[arg(value_enum)]
        command: callbox::appliance::control::Request,
        /// For `screenshot`: the PNG file to write.
        file: Option<PathBuf>,
    },
    /// List cameras, ALSA devices and GPIO lines; with --config, check a
    /// device config against them (pre-call device detection).
    Probe {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also run the echo self-test: play a probe on the configured
        /// speaker, record the microphone, report the acoustic delay, the
        /// echo's level and what the canceller removes (the daemon must be
        /// stopped: it holds the devices).
        #[arg(long, requires = "config")]
        echo: bool,
        /// Also encode the configured camera for 60 frames on the board's
        /// V4L2 M2M encoder that makes this format (H264; FWHT on vicodec)
        /// and report fps, keyframes, bytes and copies per frame.
        #[arg(long, requires = "config", value_name = "FOURCC")]
        encoder: Option<String>,
    },
    /// Offline audio tools for integrators.
    Audio {
        #[command(subcommand)]
        action: AudioAction,
    },
    /// Issue or check a userSig (TLSSigAPIv2-compatible).
    Usersig {
        #[command(subcommand)]
        action: UserSigAction,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Subcommand)]
enum AudioAction {
    /// Run the device's processing chain on recordings (48 kHz mono 16-bit
    /// WAV): what the speaker played and what the microphone heard.
    Process {
        #[arg(long)]
        far: PathBuf,
        #[arg(long)]
        mic: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "on")]
        aec: Switch,
        #[arg(long, value_enum, default_value = "moderate")]
        ns: callbox::device::processing::NoiseLevel,
        #[arg(long, value_enum, default_value = "on")]
        agc: Switch,
        #[arg(long, value_enum, default_value = "on")]
        hpf: Switch,
    },
    /// Simulate a speaker-to-microphone echo path between two ALSA PCMs
    /// (e.g. the two sides of snd-aloop): what FROM captures comes out of
    /// TO after the delay, attenuated, with NEAR (a WAV, looped) mixed in,
    /// to test the canceller end to end without an enclosure.
    Loop {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// The whole path's delay, devices' buffers included.
        #[arg(long, default_value_t = 80)]
        delay_ms: u32,
        #[arg(long, default_value_t = -6.0, allow_negative_numbers = true)]
        gain_db: f64,
        /// Near-end audio (48 kHz mono 16-bit WAV), looped.
        #[arg(long)]
        near: Option<PathBuf>,
        /// Stop after this long (default: run until killed).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

fn audio_action(action: AudioAction) -> anyhow::Result<()> {
    let (far, mic, out, aec, ns, agc, hpf) = match action {
        AudioAction::Process {
            far,
            mic,
            out,
            aec,
            ns,
            agc,
            hpf,
        } => (far, mic, out, aec, ns, agc, hpf),
        AudioAction::Loop {
            from,
            to,
            delay_ms,
            gain_db,
            near,
            seconds,
        } => return audio_loop(&from, &to, delay_ms, gain_db, near.as_deref(), seconds),
    };
    let on = |s: Switch| matches!(s, Switch::On);
    let settings = callbox::device::processing::Settings {
        echo_cancellation: on(aec),
        noise_suppression: ns,
        auto_gain: on(agc),
        high_pass: on(hpf),
    };
    let r = callbox::device::audio_tool::process_files(&far, &mic, &out, settings)?;
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "wrote {}: echo delay {} ms, ERLE {} dB, converged {}",
        out.display(),
        or_dash(r.delay_ms.map(|d| d.to_string())),
        or_dash(r.erle_db.map(|e| format!("{e:.1}"))),
        r.converged
    );
    Ok(())
}

fn ctl(
    socket: &std::path::Path,
    command: callbox::appliance::control::Request,
    file: Option<&std::path::Path>,
) -> anyhow::Result<std::process::ExitCode> {
    use callbox::appliance::control::Request;
    let screenshot = command == Request::Screenshot;
    if screenshot != file.is_some() {
        anyhow::bail!("a FILE goes with `screenshot`, and only with it");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut reply = rt.block_on(callbox::appliance::control::request(socket, command))?;
    let ok = reply.get("ok") == Some(&serde_json::Value::Bool(true));
    if let (true, Some(file), Some(png)) = (ok, file, reply.get("png_base64")) {
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .context("the daemon's screenshot")?;
        std::fs::write(file, png).with_context(|| format!("{}", file.display()))?;
        reply["png_base64"] = serde_json::Value::String(format!("written to {}", file.display()));
    }
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

fn audio_loop(
    from: &str,
    to: &str,
    delay_ms: u32,
    gain_db: f64,
    near: Option<&std::path::Path>,
    seconds: Option<u64>,
) -> anyhow::Result<()> {
    use callbox::device::alsa_io::{AlsaCapture, AlsaPlayback};
    let near = near
        .map(callbox::device::audio_tool::read_mono48)
        .transpose()?
        .unwrap_or_default();
    let mut line =
        callbox::device::delay_line::DelayLine::new(delay_ms as usize * 48, gain_db, near);
    let stats = std::sync::Arc::default;
    let mut capture = AlsaCapture::open(from, stats())?;
    let mut playback = AlsaPlayback::open(to, stats())?;
    let total =
        callbox::device::audio_tool::loop_path(&mut capture, &mut playback, &mut line, seconds)?;
    println!(
        "path delay {:.1} ms (median), {} correction(s)",
        total as f64 / 48.0,
        line.corrections
    );
    Ok(())
}

/// Which app signs, and with which key, for the usersig subcommands.
#[derive(clap::Args)]
struct AppKey {
    #[arg(long)]
    sdkappid: u64,
    /// The app's secret key (prefer --key-file: command lines are visible to other users).
    #[arg(
        long,
        conflicts_with = "key_file",
        required_unless_present = "key_file"
    )]
    key: Option<String>,
    #[arg(long)]
    key_file: Option<PathBuf>,
    #[arg(long)]
    userid: String,
}

impl AppKey {
    fn secret(&self) -> anyhow::Result<String> {
        match (&self.key, &self.key_file) {
            (Some(k), _) => Ok(k.clone()),
            (None, Some(f)) => Ok(std::fs::read_to_string(f)
                .with_context(|| format!("cannot read key file {}", f.display()))?
                .trim()
                .to_owned()),
            (None, None) => bail!("give --key or --key-file"),
        }
    }
}

#[derive(Subcommand)]
enum UserSigAction {
    /// Print a userSig signed with the app's secret key.
    Gen {
        #[command(flatten)]
        app: AppKey,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86400 * 180)]
        expire: u64,
    },
    /// Print TRTC's privateMapKey: the right to enter one room (numeric
    /// or string) with the privileges given, for a short time.
    GenPrivateMapKey {
        #[command(flatten)]
        app: AppKey,
        #[arg(
            long,
            conflicts_with = "str_room_id",
            required_unless_present = "str_room_id"
        )]
        room_id: Option<u32>,
        #[arg(long)]
        str_room_id: Option<String>,
        /// TRTC privilege bits: 1 create, 2 enter, 4 send audio, 8 receive
        /// audio, 16 send video, 32 receive video; 255 all.
        #[arg(long, default_value_t = 255)]
        privileges: u32,
        /// Validity in seconds (TRTC advises a few minutes).
        #[arg(long, default_value_t = 300)]
        expire: u64,
    },
    /// Exit 0 if the userSig is valid, non-zero with a one-line reason otherwise.
    Verify {
        #[command(flatten)]
        app: AppKey,
        sig: String,
    },
}

/// `callbox usersig ...`: what it prints, and its exit code.
fn usersig_action(action: UserSigAction) -> anyhow::Result<std::process::ExitCode> {
    let now = usersig::unix_now();
    match action {
        UserSigAction::Gen { app, expire } => {
            let key = app.secret()?;
            callbox::protocol::validate_user_id(&app.userid)?;
            let sig = usersig::generate(app.sdkappid, &key, &app.userid, expire, now, None);
            println!("{sig}");
        }
        UserSigAction::GenPrivateMapKey {
            app,
            room_id,
            str_room_id,
            privileges,
            expire,
        } => {
            let key = app.secret()?;
            callbox::protocol::validate_user_id(&app.userid)?;
            let room = callbox::protocol::RoomId::from_fields(
                room_id.map(i64::from),
                str_room_id.as_deref(),
            )?;
            let grant = callbox::private_map_key::Grant {
                user_id: app.userid,
                sdk_app_id: app.sdkappid,
                room,
                expires_at: now + expire,
                privileges,
            };
            let pmk = callbox::private_map_key::generate(&key, &grant, expire, now);
            println!("{pmk}");
        }
        UserSigAction::Verify { app, sig } => {
            let key = app.secret()?;
            match usersig::verify(&sig, app.sdkappid, &key, &app.userid, now) {
                Ok(c) => println!(
                    "valid: userId {} of sdkAppId {}, expires at {} (unix)",
                    c.identifier,
                    c.sdk_app_id,
                    c.expires_at()
                ),
                Err(e) => {
                    eprintln!("invalid: {e}");
                    return Ok(std::process::ExitCode::from(1));
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Before the configured level: ICE/DTLS chatter is noise in an
/// appliance's log. Later directives (the config's, `RUST_LOG`) override.
const QUIET: &str = "str0m=warn,webrtc=warn,rtc=warn";

/// One filter (env_logger's directive syntax) in front of either output.
struct Filtered {
    filter: env_filter::Filter,
    out: Box<dyn log::Log>,
}

impl log::Log for Filtered {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.filter.enabled(m)
    }
    fn log(&self, r: &log::Record) {
        if self.filter.matches(r) {
            self.out.log(r)
        }
    }
    fn flush(&self) {
        self.out.flush()
    }
}

/// Log to the journal when systemd connected stderr to it, to stderr
/// otherwise. `level` is the config's; `RUST_LOG` overrides it.
fn init_logging_at(level: &str) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_owned());
    let filter = env_filter::Builder::new()
        .parse(&format!("{QUIET},{spec}"))
        .build();
    let journal = systemd_journal_logger::connected_to_journal()
        .then(systemd_journal_logger::JournalLog::new)
        .and_then(Result::ok);
    let out: Box<dyn log::Log> = match journal {
        Some(j) => Box::new(j.with_syslog_identifier("callbox".into())),
        None => Box::new(
            env_logger::Builder::new()
                .filter_level(log::LevelFilter::Trace)
                .build(),
        ),
    };
    let max = filter.filter();
    if log::set_boxed_logger(Box::new(Filtered { filter, out })).is_ok() {
        log::set_max_level(max);
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("callbox: {e:#}");
            // EX_CONFIG: the service unit does not restart on a config error.
            let config = e.chain().any(|c| c.is::<callbox::config::ConfigError>());
            std::process::ExitCode::from(if config { 78 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        #[cfg(feature = "room")]
        Command::Room { config } => {
            init_logging_at("info");
            room(config)?;
        }
        #[cfg(feature = "room")]
        Command::Demo {
            port,
            room_id,
            wav,
            screen,
            no_device,
        } => {
            init_logging_at("info");
            demo(port, room_id, wav, screen, no_device)?;
        }
        Command::Device { config } => device(config)?,
        Command::Ctl {
            socket,
            command,
            file,
        } => return ctl(&socket, command, file.as_deref()),
        Command::Probe {
            config,
            json,
            echo,
            encoder,
        } => {
            let report =
                callbox::appliance::probe::probe(config.as_deref(), echo, encoder.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            if !report.ok() {
                return Ok(std::process::ExitCode::from(1));
            }
        }
        Command::Audio { action } => {
            init_logging_at("info");
            audio_action(action)?
        }
        Command::Usersig { action } => return usersig_action(action),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Stop on Ctrl-C or SIGTERM (systemd's stop).
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: stopping"),
        _ = term => log::info!("SIGTERM: stopping"),
    }
}

fn device(path: PathBuf) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let config = callbox::appliance::config::ApplianceConfig::load(&path)?;
    init_logging_at(&config.service.log_level);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(callbox::appliance::runner::run(
        config,
        started,
        terminated(),
    ))
    // A config error found against the board (a connector it lacks) names the file.
    .with_context(|| path.display().to_string())?;
    Ok(())
}

#[cfg(feature = "room")]
fn room(config: PathBuf) -> anyhow::Result<()> {
    use callbox::room::config::RoomConfig;
    let config = RoomConfig::load(&config)?;
    let listener = std::net::TcpListener::bind(config.server.listen)
        .with_context(|| format!("E_ROOM_LISTEN: cannot listen on {}", config.server.listen))?;
    let media = std::net::UdpSocket::bind(config.media.udp_listen).with_context(|| {
        format!(
            "E_ROOM_MEDIA_SOCKET: cannot bind {}",
            config.media.udp_listen
        )
    })?;
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    log::info!(
        "room service on {scheme}://{}, media on udp {} (advertised {})",
        config.server.listen,
        config.media.udp_listen,
        config.media.advertise.unwrap_or(config.media.udp_listen)
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(callbox::room::server::serve(
        config,
        listener,
        media,
        terminated(),
    ))?;
    Ok(())
}

#[cfg(feature = "room")]
fn demo(
    port: u16,
    room_id: u32,
    wav: Option<PathBuf>,
    screen: Option<PathBuf>,
    no_device: bool,
) -> anyhow::Result<()> {
    use callbox::appliance::config::ApplianceConfig;
    use callbox::room::local::{
        loopback_config, DeviceToml, LocalRoom, DEMO_ADMIN_KEY, DEMO_SDK_APP_ID,
    };
    let started = std::time::Instant::now();
    let mut config = loopback_config(None, true);
    config.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let room = LocalRoom::start(config).await.with_context(|| {
            format!("E_DEMO_LISTEN: cannot start the room service on 127.0.0.1:{port} (try --port)")
        })?;
        println!("callbox demo");
        println!("  room service: http://{} (signaling {}, media udp {})", room.http, room.ws_url(), room.media);
        println!("  sdkAppId {DEMO_SDK_APP_ID}; userSigs from the development endpoint POST /api/dev/usersig");
        println!("  admin key:    {DEMO_ADMIN_KEY}");
        println!("  seed page:    http://{}/seed.html", room.http);
        let device_user = "callbox-device";
        if no_device {
            println!("Open http://{}/?roomId={room_id} to join room {room_id}. Ctrl-C stops.", room.http);
            terminated().await;
            room.stop().await;
            return anyhow::Ok(());
        }
        let socket = std::env::temp_dir().join(format!("callbox-demo-{port}.sock")).display().to_string();
        let mut device = DeviceToml::loopback(&room.ws_url(), device_user, room_id, 30 * 86400)
            .set("service", "control_socket", socket.as_str());
        if let Some(p) = &wav {
            device = device.set("audio", "playback", "wav").set("audio", "wav_path", p.display().to_string());
        }
        if let Some(p) = &screen {
            device = device.set("display", "sink", "y4m").set("display", "path", p.display().to_string());
            println!("  screen:       who calls the device, as YUV4MPEG2 in {} (mpv plays it)", p.display());
        }
        let device_config = ApplianceConfig::parse(std::path::Path::new("(demo device)"), &device.text())?;
        println!("  device:       userId {device_user} in room {room_id}: synthetic test pattern 640x480@30 + 440 Hz tone");
        println!("  control:      callbox ctl --socket {socket} status|call|hangup|mute-audio|unmute-audio|mute-video|unmute-video|screenshot FILE.png");
        println!();
        println!("Open http://{}/?roomId={room_id} in a browser and press Start call. Ctrl-C stops.", room.http);
        let result = callbox::appliance::runner::run(device_config, started, terminated()).await;
        room.stop().await;
        Ok(result?)
    })
}
