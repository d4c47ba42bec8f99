//! `pagoda token`: create, list and revoke the named credentials of a node's
//! data dir. They work on the data dir directly, whether or not the node runs:
//! a running node re-reads the credentials file when it changes, so a new
//! credential is accepted and a revoked one refused from its next handshake
//! (and a revoked credential's open connections at their next request).
//!
//! The node keeps only a salt and a stored key per credential, never the
//! token: `create` prints the new random token once (or writes it to a file
//! readable by its owner only), and nothing can show it again.

use std::io::Write;
use std::path::{Path, PathBuf};

use pagoda_node::access::{self, Credential, Grant};

/// Arguments of `pagoda token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand, Debug)]
enum TokenCommand {
    /// Create a credential with a new random token, printed once.
    Create {
        /// The credential's name: letters, digits, '.', '_' or '-'. Clients
        /// give it with --credential (env PAGODA_CREDENTIAL).
        name: String,
        /// The node's data dir.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// A right on regions: PATTERN=read|write|admin, where PATTERN is a
        /// region name, a prefix ending in '*', or '*'. Admin implies write
        /// implies read. Repeat for several.
        #[arg(long = "grant", value_name = "PATTERN=RIGHT", required = true)]
        grants: Vec<String>,
        /// Write the token to this new file (mode 0600) instead of printing
        /// it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List credentials and their grants (never their secrets).
    Ls {
        /// The node's data dir.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a credential: refused from its next handshake on, and its open
    /// connections at their next request.
    Revoke {
        /// The credential's name.
        name: String,
        /// The node's data dir.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

pub fn run(args: TokenArgs) -> Result<(), String> {
    match args.command {
        TokenCommand::Create {
            name,
            data_dir,
            grants,
            out,
        } => create(&name, &data_dir, &grants, out.as_deref()),
        TokenCommand::Ls { data_dir, json } => list(&data_dir, json),
        TokenCommand::Revoke { name, data_dir } => {
            access::edit_credentials(&data_dir, |credentials| {
                let before = credentials.len();
                credentials.retain(|c| c.name() != name);
                if credentials.len() == before {
                    return Err(format!("no credential named {name:?}"));
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
            eprintln!(
                "credential {name:?} revoked: refused from its next handshake, and its open \
                 connections at their next request"
            );
            Ok(())
        }
    }
}

fn create(
    name: &str,
    data_dir: &Path,
    grants: &[String],
    out: Option<&Path>,
) -> Result<(), String> {
    access::validate_credential_name(name)?;
    let grants = grants
        .iter()
        .map(|text| Grant::parse(text))
        .collect::<Result<Vec<_>, _>>()?;
    let token = access::generate_token();
    let credential = Credential::new(name, token.as_bytes(), grants)?;
    // The token file first, so that a credential is never stored whose token
    // was lost; it is removed again if the credential cannot be stored.
    if let Some(path) = out {
        write_secret(path, &token)?;
    }
    let stored = access::edit_credentials(data_dir, |credentials| {
        if credentials.iter().any(|c| c.name() == name) {
            return Err(format!(
                "a credential named {name:?} exists already (revoke it first to replace it)"
            ));
        }
        credentials.push(credential.clone());
        Ok(())
    });
    if let Err(error) = stored {
        if let Some(path) = out {
            let _ = std::fs::remove_file(path);
        }
        return Err(error.to_string());
    }
    let rights: Vec<String> = credential.grants().iter().map(Grant::to_string).collect();
    match out {
        Some(path) => eprintln!(
            "credential {name:?} created ({}); its token is in {}",
            rights.join(", "),
            path.display()
        ),
        None => {
            eprintln!(
                "credential {name:?} created ({}); its token follows, shown this once:",
                rights.join(", ")
            );
            println!("{token}");
        }
    }
    Ok(())
}

/// Writes `token` to a new file only its owner can read.
fn write_secret(path: &Path, token: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating token file {}: {e}", path.display()))?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("writing token file {}: {e}", path.display()))
}

fn list(data_dir: &Path, json: bool) -> Result<(), String> {
    let credentials = access::read_credentials(data_dir)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if json {
        let list: Vec<serde_json::Value> = credentials
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name(),
                    "grants": c.grants().iter().map(Grant::to_string).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if credentials.is_empty() {
        println!("no credentials in {}", data_dir.display());
        return Ok(());
    }
    let width = credentials
        .iter()
        .map(|c| c.name().len())
        .max()
        .unwrap_or(0)
        .max("NAME".len());
    println!("{:width$}  GRANTS", "NAME");
    for credential in &credentials {
        let grants: Vec<String> = credential.grants().iter().map(Grant::to_string).collect();
        println!("{:width$}  {}", credential.name(), grants.join(" "));
    }
    Ok(())
}
