//! `herald emulator`: the APNs emulator as a standalone server.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use herald_sim::emulator::{Emulator, EmulatorConfig, TlsMode};

/// Flags of `herald emulator` (each overrides the config file).
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorArgs {
    /// A TOML config file (see docs/emulator.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the APNs listener.
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Address of the admin HTTP endpoint.
    #[arg(long)]
    pub admin_bind: Option<SocketAddr>,
    /// Serve HTTP/2 without TLS (prior knowledge).
    #[arg(long)]
    pub plaintext: bool,
    /// Write the generated certificate (the CA clients must trust) to this PEM file.
    #[arg(long)]
    pub ca_out: Option<PathBuf>,
    /// Generate a signing key for this team id (10 characters) and write it as
    /// `AuthKey_<key id>.p8` into `--key-dir`.
    #[arg(long)]
    pub generate_key_for_team: Option<String>,
    /// Bundle ids the generated key's team may push to (repeatable).
    #[arg(long = "bundle-id", default_value = "com.example.herald")]
    pub bundle_ids: Vec<String>,
    /// Where to write the generated key.
    #[arg(long, default_value = ".")]
    pub key_dir: PathBuf,
}

/// Run the emulator until Ctrl-C.
pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => EmulatorConfig::from_file(path)?,
        None => EmulatorConfig::default(),
    };
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    if let Some(admin) = args.admin_bind {
        config.admin_bind = Some(admin);
    }
    if args.plaintext {
        config.tls.mode = TlsMode::Plaintext;
    }
    if let Some(path) = &args.ca_out {
        config.tls.ca_pem_out = Some(path.clone());
    }
    let emulator = Emulator::start(config)
        .await
        .context("starting the emulator")?;
    println!("APNs emulator listening on {}", emulator.addr());
    if let Some(admin) = emulator.admin_addr() {
        println!("admin endpoint on http://{admin}");
    }
    if let Some(path) = &args.ca_out {
        println!("CA certificate written to {}", path.display());
    }
    if let Some(team) = &args.generate_key_for_team {
        let bundles: Vec<&str> = args.bundle_ids.iter().map(String::as_str).collect();
        let key = emulator.core().generate_team_key(team, &bundles)?;
        std::fs::create_dir_all(&args.key_dir)?;
        let path = args.key_dir.join(format!("AuthKey_{}.p8", key.key_id));
        std::fs::write(&path, key.p8_pem.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "signing key for team {} (key id {}) written to {}",
            key.team_id,
            key.key_id,
            path.display()
        );
    }
    tokio::signal::ctrl_c().await?;
    println!("shutting down");
    emulator.shutdown().await;
    Ok(())
}
