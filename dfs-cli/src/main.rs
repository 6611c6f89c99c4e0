//! `dfs`: the admin command-line tool. Thin: parse, call dfs-client, print.
//!
//! Exit codes: 0 success; 1 the operation failed (message on stderr as
//! `dfs: PATH: reason`); 2 bad usage; 3 the metadata server cannot be reached.

mod commands;
mod format;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "dfs", version, about = "dfs cluster admin tool")]
pub struct Cli {
    /// Metadata server addresses (HOST:PORT[,HOST:PORT...]); the next is
    /// tried when one does not answer.
    #[arg(
        long,
        env = "DFS_META",
        default_value = "127.0.0.1:7000",
        global = true
    )]
    meta: String,
    /// Seconds a call keeps retrying (failing over) while no meta answers.
    #[arg(long, default_value_t = 15, global = true)]
    meta_timeout: u64,
    /// One JSON document on stdout, for scripts (status, nodes, stat, fsck).
    #[arg(long, global = true)]
    json: bool,
    /// Certificates: by default TLS_DIR/admin.crt when it exists, else
    /// TLS_DIR/client.crt (and the key beside it), with TLS_DIR/ca.crt.
    #[command(flatten)]
    tls: dfs_auth::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Cluster health at a glance: nodes, capacity, files, replication.
    Status,
    /// Storage nodes with state, capacity and chunk counts.
    Nodes,
    /// Client sessions: mounts and writing CLI processes, with their open
    /// files, locks and lease.
    Sessions,
    /// List a directory.
    Ls {
        #[arg(default_value = "/")]
        path: String,
        /// Long format: kind and mode, links, owner, size, mtime.
        #[arg(short, long)]
        long: bool,
    },
    /// Attributes of a path, and for a file every chunk with the nodes holding it.
    Stat { path: String },
    /// Create a directory.
    Mkdir {
        path: String,
        /// Create missing parents; an existing directory is fine.
        #[arg(short, long)]
        parents: bool,
    },
    /// Remove a file, or a directory with -r.
    Rm {
        path: String,
        /// Remove a directory and everything below it.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Upload a local file ("-" for stdin) to PATH (a directory keeps the local name).
    #[command(alias = "upload")]
    Put {
        local: String,
        path: String,
        /// Replace an existing file (atomically).
        #[arg(short, long)]
        force: bool,
        /// fsync every replica before returning (survives power loss), not only close semantics.
        #[arg(long)]
        fsync: bool,
    },
    /// Download PATH to a local file ("-" for stdout; a directory keeps the remote name).
    #[command(alias = "download")]
    Get { path: String, local: String },
    /// Take a storage node out of service, or back.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// The cluster's certificate authority: create it, issue certificates.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Check that every chunk of the files below PATH has its replicas.
    /// Exit 0 when healthy, 1 when data is at risk or lost (each path named).
    Fsck {
        #[arg(default_value = "/")]
        path: String,
        /// Plan repair copies and release quarantined replicas now, instead
        /// of waiting for meta's background rounds.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaAction {
    /// Create a new CA in DIR (ca.crt, and ca.key readable by root only).
    Init {
        dir: std::path::PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "dfs cluster CA")]
        name: String,
    },
    /// Issue a certificate and key for NAME with a role, signed by the CA
    /// in DIR: written as NAME.crt and NAME.key in DIR (or --out).
    Issue {
        dir: std::path::PathBuf,
        /// meta, node, client or admin.
        #[arg(long)]
        role: dfs_auth::Role,
        name: String,
        /// A DNS name or IP address the holder serves on (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = dfs_auth::pki::DEFAULT_DAYS)]
        days: u32,
        /// Directory to write to instead of DIR.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeAction {
    /// No new chunks go to NODE (id or address); every chunk gets its full
    /// count elsewhere. Waits, showing progress, until none depends on it.
    Drain {
        node: String,
        /// Return at once instead of waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Put a draining NODE back in service.
    Undrain { node: String },
    /// Forget NODE for good; refused while a chunk still depends on it.
    Remove { node: String },
}

#[tokio::main]
async fn main() -> ExitCode {
    // `dfs ls -l / | head`: a closed stdout ends the tool quietly (status
    // 141, as SIGPIPE would), as for any Unix tool, instead of a panic in
    // println!. Not by restoring SIGPIPE's default disposition: that also
    // kills the tool when a server resets a TLS connection it writes to.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    if let Command::Ca { action } = &cli.command {
        return match commands::ca(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dfs: {e}");
                ExitCode::from(1)
            }
        };
    }
    let name = if cli.tls.tls_dir.join("admin.crt").exists() {
        "admin"
    } else {
        "client"
    };
    match cli.tls.files(name).map(|f| f.client()).transpose() {
        Ok(tls) => dfs_client::channels::use_tls(tls),
        Err(e) => {
            eprintln!("dfs: {e} (give --tls-dir, --cert/--key/--ca, or --insecure)");
            return ExitCode::from(2);
        }
    }
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfs: {e}");
            ExitCode::from(match e {
                dfs_client::ClientError::Unreachable(_) => 3,
                _ => 1,
            })
        }
    }
}
