//! `herald certs`: a development cluster CA and node certificates.
//!
//! Writes into one directory, in the layout the node transport reads
//! ([`MutualTls::read_pem_dir`](herald_cluster::transport::MutualTls::read_pem_dir)):
//!
//! | file | contents |
//! |---|---|
//! | `ca.pem` | the cluster CA certificate (give it to every node) |
//! | `ca.key.pem` | the CA's private key (keep it to issue more node certificates; mode 0600) |
//! | `node-<id>.pem` | node `<id>`'s certificate: SAN `node-<id>.herald`, server + client auth |
//! | `node-<id>.key.pem` | node `<id>`'s private key (PKCS#8; mode 0600) |
//!
//! The node id is bound in the certificate as its one DNS subject alternative name,
//! `node-<id>.herald`: a server proves it is the node the client dialled, and the listener
//! reads a client's node id from it.
//!
//! Existing files are never overwritten unless `--force` is given. With `--ca-dir`, node
//! certificates are issued by an existing CA (read from `ca.pem` and `ca.key.pem` there)
//! instead of a new one. Files are first written into a private (0700) staging directory
//! inside the output directory, keys get mode 0600, and each file is then renamed into
//! place, so a key is never readable by others, not even briefly.
//!
//! ```text
//! herald certs --dir ./certs --nodes 1,2,3
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use herald_cluster::transport::{ClusterCa, NodeId, node_dns_name};

/// The CA certificate file.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key file.
pub const CA_KEY_FILE: &str = "ca.key.pem";
/// Most node certificates one run issues.
pub const CERTS_NODES_MAX: usize = 1024;

/// Flags of `herald certs`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Output directory (created if missing).
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Node ids to issue certificates for (comma-separated, non-zero).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub nodes: Vec<u64>,
    /// The CA's common name.
    #[arg(long, default_value = "herald development cluster CA")]
    pub name: String,
    /// Issue with the existing CA in this directory (`ca.pem`, `ca.key.pem`) instead of
    /// generating a new one.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// What `herald certs` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertsReport {
    /// Every file written, in the order written.
    pub files: Vec<PathBuf>,
}

/// Run `herald certs`: print the files written.
///
/// # Errors
/// Invalid node ids, an existing file without `--force`, or an I/O or generation failure.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let report = generate(&args)?;
    for file in &report.files {
        println!("wrote {}", file.display());
    }
    Ok(())
}

/// Generate the CA (unless `args.ca_dir`) and the node certificates into `args.dir`.
///
/// # Errors
/// As [`run`].
pub fn generate(args: &CertsArgs) -> anyhow::Result<CertsReport> {
    let nodes = node_ids(&args.nodes)?;
    let (ca, write_ca) = match &args.ca_dir {
        Some(dir) => (
            ClusterCa::read_pem(dir)
                .with_context(|| format!("reading the CA from {}", dir.display()))?,
            false,
        ),
        None => (
            ClusterCa::generate(&args.name).context("generating the CA")?,
            true,
        ),
    };
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let same_dir = match &args.ca_dir {
        Some(dir) => std::fs::canonicalize(dir).ok() == std::fs::canonicalize(&args.dir).ok(),
        None => false,
    };
    let mut names: Vec<String> = vec![];
    if write_ca {
        names.extend([CA_CERT_FILE.to_owned(), CA_KEY_FILE.to_owned()]);
    } else if !same_dir {
        // The issuing CA's certificate goes along, so the directory is complete.
        names.push(CA_CERT_FILE.to_owned());
    }
    for node in &nodes {
        names.push(format!("node-{}.pem", node.0));
        names.push(format!("node-{}.key.pem", node.0));
    }
    if !args.force {
        let existing: Vec<_> = names
            .iter()
            .map(|name| args.dir.join(name))
            .filter(|path| path.exists())
            .collect();
        if !existing.is_empty() {
            let list: Vec<_> = existing.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "refusing to overwrite existing files (use --force): {}",
                list.join(", ")
            );
        }
    }

    let staging = Staging::create(&args.dir)?;
    if write_ca {
        ca.write_pem(staging.path())
            .context("writing the CA files")?;
    } else if !same_dir {
        std::fs::write(staging.path().join(CA_CERT_FILE), ca.certificate_pem())
            .context("writing the CA certificate")?;
    }
    for node in &nodes {
        let certificate = ca
            .issue(*node)
            .with_context(|| format!("issuing the certificate of node {}", node.0))?;
        certificate
            .write_pem(staging.path())
            .with_context(|| format!("writing the files of node {}", node.0))?;
    }
    let mut files = vec![];
    for name in &names {
        let from = staging.path().join(name);
        set_mode(
            &from,
            if name.ends_with(".key.pem") {
                0o600
            } else {
                0o644
            },
        )?;
        let to = args.dir.join(name);
        std::fs::rename(&from, &to)
            .with_context(|| format!("moving {} into place", to.display()))?;
        files.push(to);
    }
    tracing::info!(
        dir = %args.dir.display(),
        nodes = ?nodes.iter().map(|n| node_dns_name(*n)).collect::<Vec<_>>(),
        "wrote cluster certificates"
    );
    Ok(CertsReport { files })
}

fn node_ids(ids: &[u64]) -> anyhow::Result<Vec<NodeId>> {
    if ids.is_empty() {
        bail!("--nodes: give at least one node id");
    }
    if ids.len() > CERTS_NODES_MAX {
        bail!("--nodes: at most {CERTS_NODES_MAX} node ids");
    }
    let mut seen = BTreeSet::new();
    for &id in ids {
        if id == 0 {
            bail!("--nodes: node ids are non-zero");
        }
        if !seen.insert(id) {
            bail!("--nodes: node id {id} is given twice");
        }
    }
    Ok(seen.into_iter().map(NodeId).collect())
}

/// A private directory inside the output directory, removed when dropped.
struct Staging(PathBuf);

impl Staging {
    fn create(parent: &Path) -> anyhow::Result<Self> {
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        // A name that is free: the process id, then a counter.
        for attempt in 0..100u32 {
            let path = parent.join(format!(".herald-certs-{}-{attempt}", std::process::id()));
            match builder.create(&path) {
                Ok(()) => return Ok(Staging(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
        }
        bail!("no free staging directory name in {}", parent.display())
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}
