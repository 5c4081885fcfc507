//! The `p2p-mediastream` binary: parse the command line, load settings, start logging,
//! run the server. Exit codes: 0 stopped cleanly, 1 runtime error (e.g. cannot bind),
//! 2 bad configuration or usage.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use p2p_mediastream::Settings;

#[derive(Parser)]
#[command(
    name = "p2p-mediastream",
    version,
    about = "WebTorrent tracker for P2P Media Loader, plus the HLS stream and web player, on one port",
    after_help = "Settings: embedded defaults, then --config FILE (TOML, or wt-tracker's \
                  config.json), then environment variables TRACKER__SECTION__KEY \
                  (e.g. TRACKER__SERVER__PORT=9000). Logging: RUST_LOG (default info)."
)]
struct Cli {
    /// Settings file: our TOML (see config/default.toml) or wt-tracker's config.json.
    #[arg(long, short, value_name = "PATH", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the effective settings as JSON and exit.
    PrintConfig,
    /// Probe /healthz of the server these settings describe; exit 0 if healthy (for
    /// container health checks, where there is no curl).
    Healthcheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("p2p-mediastream: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
        Command::PrintConfig => match serde_json::to_string_pretty(&settings) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("p2p-mediastream: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Healthcheck => healthcheck(&settings),
    }
}

fn serve(settings: Settings) -> ExitCode {
    log::info!(
        "p2p-mediastream {} starting with {}",
        env!("CARGO_PKG_VERSION"),
        serde_json::to_string(&settings).unwrap_or_default()
    );
    let system = actix_web::rt::System::new();
    match system.block_on(p2p_mediastream::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        // Configuration found wrong only when applied (e.g. an access list file).
        Err(err) if err.kind() == std::io::ErrorKind::InvalidInput => {
            eprintln!("p2p-mediastream: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("p2p-mediastream: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let mut builder = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,actix_server=warn"),
    );
    // journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format_timestamp(None);
    }
    builder.init();
}

/// A one-request HTTP/1.0 probe; a health check must not need curl in a slim image.
fn healthcheck(settings: &Settings) -> ExitCode {
    let host = match settings.server.host.as_str() {
        "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "::1",
        host => host,
    };
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", settings.server.port)
    } else {
        format!("{host}:{}", settings.server.port)
    };
    let result = (|| -> Result<bool, String> {
        let addr: SocketAddr = target
            .to_socket_addrs()
            .map_err(|err| err.to_string())?
            .next()
            .ok_or("no address")?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|err| err.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|err| err.to_string())?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .map_err(|err| err.to_string())?;
        let mut response = String::new();
        stream
            .take(4096)
            .read_to_string(&mut response)
            .map_err(|err| err.to_string())?;
        Ok(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"))
    })();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("unhealthy: {target}/healthz did not answer 200");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("unhealthy: {target}: {err}");
            ExitCode::FAILURE
        }
    }
}
