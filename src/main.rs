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
    /// Room service on loopback with a demo app, ready for a call.
    #[cfg(feature = "room")]
    Demo {
        /// HTTP port of the room service on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Issue or check a userSig (TLSSigAPIv2-compatible).
    Usersig {
        #[command(subcommand)]
        action: UserSigAction,
    },
}

#[derive(Subcommand)]
enum UserSigAction {
    /// Print a userSig signed with the app's secret key.
    Gen {
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
        /// Validity in seconds.
        #[arg(long, default_value_t = 86400 * 180)]
        expire: u64,
    },
    /// Exit 0 if the userSig is valid, non-zero with a one-line reason otherwise.
    Verify {
        #[arg(long)]
        sdkappid: u64,
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
        sig: String,
    },
}

fn read_key(key: Option<String>, key_file: Option<PathBuf>) -> anyhow::Result<String> {
    match (key, key_file) {
        (Some(k), _) => Ok(k),
        (None, Some(f)) => Ok(std::fs::read_to_string(&f)
            .with_context(|| format!("cannot read key file {}", f.display()))?
            .trim()
            .to_owned()),
        (None, None) => bail!("give --key or --key-file"),
    }
}

fn init_logging() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,str0m=warn,webrtc=warn,rtc=warn"),
    )
    .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("callbox: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        #[cfg(feature = "room")]
        Command::Room { config } => {
            init_logging();
            room(config)?;
        }
        #[cfg(feature = "room")]
        Command::Demo { port } => {
            init_logging();
            demo(port)?;
        }
        Command::Usersig { action } => match action {
            UserSigAction::Gen {
                sdkappid,
                key,
                key_file,
                userid,
                expire,
            } => {
                let key = read_key(key, key_file)?;
                callbox::protocol::validate_user_id(&userid)?;
                println!(
                    "{}",
                    usersig::generate(sdkappid, &key, &userid, expire, usersig::unix_now(), None)
                );
            }
            UserSigAction::Verify {
                sdkappid,
                key,
                key_file,
                userid,
                sig,
            } => {
                let key = read_key(key, key_file)?;
                match usersig::verify(&sig, sdkappid, &key, &userid, usersig::unix_now()) {
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
        },
    }
    Ok(std::process::ExitCode::SUCCESS)
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
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    ))?;
    Ok(())
}

#[cfg(feature = "room")]
fn demo(port: u16) -> anyhow::Result<()> {
    use callbox::room::local::{
        loopback_config, LocalRoom, DEMO_ADMIN_KEY, DEMO_SDK_APP_ID, DEMO_SECRET_KEY,
    };
    let mut config = loopback_config(None, true);
    config.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let room = LocalRoom::start(config)
            .await
            .with_context(|| format!("E_DEMO_LISTEN: cannot start the room service on 127.0.0.1:{port} (try --port)"))?;
        let sig = usersig::generate(DEMO_SDK_APP_ID, DEMO_SECRET_KEY, "demo-user", 86400, usersig::unix_now(), None);
        println!("callbox demo: room service running");
        println!("  health:     http://{}/health", room.http);
        println!("  signaling:  {}", room.ws_url());
        println!("  media:      udp {}", room.media);
        println!("  sdkAppId:   {DEMO_SDK_APP_ID}");
        println!("  userSig for userId demo-user: {sig}");
        println!("  dev userSigs: POST http://{}/api/dev/usersig {{\"sdkAppId\":{DEMO_SDK_APP_ID},\"userId\":\"...\"}}", room.http);
        println!("  admin key:  {DEMO_ADMIN_KEY}");
        println!("The synthetic-camera device and the browser call page are not built yet (open issues 3 and 4);");
        println!("this demo serves the room service they will meet in. Ctrl-C stops it.");
        let _ = tokio::signal::ctrl_c().await;
        room.stop().await;
        anyhow::Ok(())
    })
}
