//! The `pagoda` command: run a memory node, manage regions, benchmark, try the
//! quickstart, simulate eviction policies on traces.

mod bench;
mod cluster;
mod node;
mod quickstart;
mod region;
mod size;
mod token;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Tiered, fault-tolerant far memory.
#[derive(Parser)]
#[command(name = "pagoda", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines on stderr are written: `text` (coloured only when
    /// stderr is a terminal and NO_COLOR is unset) or `json` (one object per
    /// line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "PAGODA_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a memory node; `pagoda node stat` shows a running one.
    Node(Box<node::NodeArgs>),
    /// Create, list, inspect, delete, checkpoint, recover and checksum regions;
    /// show a replicated region's replicas and promote one.
    Region(region::RegionArgs),
    /// Measure a workload against a node (or an embedded one).
    Bench(bench::BenchArgs),
    /// Start a local node, run a verified workload, and show what happened.
    Quickstart(quickstart::QuickstartArgs),
    /// Simulate an eviction policy on a block trace.
    Sim(pagoda_sim::SimArgs),
    /// Create, list and revoke the credentials of a node's data dir.
    Token(token::TokenArgs),
    /// Look at a cluster through its coordinator: live nodes, regions and
    /// their primaries, replicas and replication lag.
    Cluster(cluster::ClusterArgs),
    /// Watch a node live: RAM, requests and bytes per second, and each
    /// region's use, traffic, role and last checkpoint, redrawn in place.
    Top(top::TopArgs),
}

/// Where to find a node and how to authenticate, for client commands.
#[derive(clap::Args, Clone, Debug)]
pub struct NodeAddress {
    /// The node's address.
    #[arg(
        long,
        global = true,
        env = "PAGODA_NODE",
        default_value = "127.0.0.1:7070"
    )]
    pub node: String,
    /// A file holding the token of the credential to authenticate as.
    #[arg(long, global = true, env = "PAGODA_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The credential the token belongs to (`pagoda token create NAME`);
    /// `default` is the node's own --token-file token.
    #[arg(
        long,
        global = true,
        env = "PAGODA_CREDENTIAL",
        value_name = "NAME",
        default_value = pagoda::DEFAULT_CREDENTIAL
    )]
    pub credential: String,
    /// How to speak TLS to the node.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Client-side TLS, for commands that connect to a node.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// Speak TLS to the node, trusting the certificate authorities in this
    /// PEM file.
    #[arg(long, global = true, env = "PAGODA_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a node that requires client
    /// certificates; with --tls-key.
    #[arg(long, global = true, env = "PAGODA_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "PAGODA_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The name the node's certificate must carry. Default: the host of
    /// --node (its IP address if it is one).
    #[arg(
        long,
        global = true,
        env = "PAGODA_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The client's TLS options for a node at `node` (`host:port`), or
    /// `None` without --tls-ca.
    pub fn options(&self, node: &str) -> Result<Option<pagoda::TlsOptions>, String> {
        let Some(ca_file) = &self.tls_ca else {
            if self.tls_cert.is_some() || self.tls_key.is_some() {
                return Err("--tls-cert and --tls-key need --tls-ca".into());
            }
            return Ok(None);
        };
        // A host name is what the certificate names; an IP address is
        // checked as one by default.
        let host_name = match node.parse::<std::net::SocketAddr>() {
            Ok(_) => None,
            Err(_) => node.rsplit_once(':').map(|(host, _)| host.to_owned()),
        };
        Ok(Some(pagoda::TlsOptions {
            ca_file: ca_file.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
            server_name: self.tls_server_name.clone().or(host_name),
        }))
    }
}

impl NodeAddress {
    /// Connects with the default client options and the token, if any.
    pub fn connect(&self) -> Result<pagoda::Client, String> {
        self.connect_with_timeout(std::time::Duration::from_secs(pagoda::TIMEOUT_S_DEFAULT))
    }

    /// Connects, waiting up to `timeout` for each reply.
    pub fn connect_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Result<pagoda::Client, String> {
        self.connect_with(
            timeout,
            std::time::Duration::from_secs(pagoda::RECONNECT_FOR_S_DEFAULT),
        )
    }

    /// Connects, waiting up to `timeout` for each reply (and for the TCP
    /// connection) and dialling again for up to `reconnect_for` after the
    /// connection fails.
    pub fn connect_with(
        &self,
        timeout: std::time::Duration,
        reconnect_for: std::time::Duration,
    ) -> Result<pagoda::Client, String> {
        let options = self.client_options(timeout, reconnect_for)?;
        self.connect_options(options)
    }

    /// The client options for this node: its credential, token and TLS
    /// settings, the timeouts given, the rest defaults.
    pub fn client_options(
        &self,
        timeout: std::time::Duration,
        reconnect_for: std::time::Duration,
    ) -> Result<pagoda::ClientOptions, String> {
        let mut options = pagoda::ClientOptions {
            timeout,
            reconnect_for,
            credential: self.credential.clone(),
            tls: self.tls.options(&self.node)?,
            ..pagoda::ClientOptions::default()
        };
        if let Some(path) = &self.token_file {
            options.token = Some(read_token(path)?);
        }
        Ok(options)
    }

    /// Connects with `options` (see [`NodeAddress::client_options`]).
    pub fn connect_options(
        &self,
        options: pagoda::ClientOptions,
    ) -> Result<pagoda::Client, String> {
        check_address("--node", &self.node)?;
        pagoda::Client::connect(self.node.as_str(), options).map_err(client_error)
    }
}

/// Checks that `address`, given with `flag`, has the `HOST:PORT` form
/// before anything tries to resolve it: a missing port would otherwise
/// surface as "invalid socket address".
pub fn check_address(flag: &str, address: &str) -> Result<(), String> {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let example = |host: &str| format!("{host}:7070");
    // A bare IP address (IPv6 ones hold colons of their own).
    if let Ok(ip) = address.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        let host = match ip {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        return Err(format!(
            "{flag} {address}: the port is missing ({flag} HOST:PORT, e.g. {})",
            example(&host)
        ));
    }
    match address.rsplit_once(':') {
        None if !address.is_empty() => Err(format!(
            "{flag} {address}: the port is missing ({flag} HOST:PORT, e.g. {})",
            example(address)
        )),
        None => Err(format!(
            "{flag} is empty ({flag} HOST:PORT, e.g. localhost:7070)"
        )),
        Some((host, port)) => {
            if host.is_empty() {
                return Err(format!(
                    "{flag} {address}: the host is missing ({flag} HOST:PORT, e.g. localhost:{port})"
                ));
            }
            if port.parse::<u16>().is_err() {
                return Err(format!(
                    "{flag} {address}: {port:?} is not a port ({flag} HOST:PORT, e.g. {})",
                    example(host)
                ));
            }
            Ok(())
        }
    }
}

/// Words a client error for the command line, saying each thing once.
///
/// A node's refusal carries a code (for programs) and a message (for
/// people). The node's messages are whole sentences that already say what
/// the code says ("region \"x\" not found" for `RegionNotFound`, "invalid
/// argument: ..." for `InvalidArgument`), so printing the code's name in
/// front of them, as the library's `Display` does, says it twice. The code's
/// name is printed only when the message is empty. Every other error is the
/// library's own wording.
pub fn client_error(error: pagoda::ClientError) -> String {
    match error {
        pagoda::ClientError::Remote { code, message } if message.trim().is_empty() => {
            format!("the node refused: {}", code.name())
        }
        pagoda::ClientError::Remote { message, .. } => message,
        other => other.to_string(),
    }
}

/// Reads a token file: its contents with surrounding whitespace removed.
pub fn read_token(path: &std::path::Path) -> Result<Vec<u8>, String> {
    const TOKEN_FILE_BYTES_MAX: u64 = 64 * 1024;
    let metadata = std::fs::metadata(path)
        .map_err(|e| format!("reading token file {}: {e}", path.display()))?;
    if metadata.len() > TOKEN_FILE_BYTES_MAX {
        return Err(format!("token file {} is too large", path.display()));
    }
    let text =
        std::fs::read(path).map_err(|e| format!("reading token file {}: {e}", path.display()))?;
    let token = text.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token)
}

/// Whether the argument `id` was given on the command line (not taken from
/// the environment or a default) at any level of the subcommands in
/// `matches`: a global flag may be given before or after a subcommand.
fn given_on_command_line(matches: &clap::ArgMatches, id: &str) -> bool {
    let here =
        matches.try_get_raw(id).ok().flatten().is_some_and(|_| {
            matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        });
    here || matches
        .subcommand()
        .is_some_and(|(_, sub)| given_on_command_line(sub, id))
}

fn main() -> ExitCode {
    let matches = Cli::command()
        .mut_subcommand("node", node::with_defaults_in_help)
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let node_on_command_line = given_on_command_line(&matches, "node");
    // Commands that embed a node keep its log quiet unless asked otherwise.
    let default_level = match cli.command {
        Command::Quickstart(_) | Command::Bench(_) | Command::Sim(_) => "warn",
        // The live view says itself when the node goes away; the client's
        // warnings would only scribble over it.
        Command::Top(_) => "error",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAGODA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            // Colour codes only where a terminal turns them into colour.
            use std::io::IsTerminal;
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
            builder.with_ansi(colour).init();
        }
    }
    let result = match cli.command {
        Command::Node(args) => node::run(*args, cli.log_format),
        Command::Region(args) => region::run(args, node_on_command_line),
        Command::Cluster(args) => cluster::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Token(args) => token::run(args),
        Command::Top(args) => top::run(args),
        Command::Sim(args) => match pagoda_sim::run(&args) {
            Ok(report) => {
                if args.json {
                    println!("{}", report.to_json());
                } else {
                    println!("{report}");
                }
                Ok(())
            }
            Err(error) => Err(error.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the wording of a node's refusal: its message alone, the code's
    // name only when there is no message, other errors unchanged.
    #[test]
    fn client_errors_say_each_thing_once() {
        let remote = |message: &str| pagoda::ClientError::Remote {
            code: pagoda::ErrorCode::RegionNotFound,
            message: message.to_owned(),
        };
        assert_eq!(
            client_error(remote("region \"x\" not found")),
            "region \"x\" not found"
        );
        assert_eq!(
            client_error(remote(" ")),
            "the node refused: region not found"
        );
        assert_eq!(
            client_error(pagoda::ClientError::Protocol("bad reply".into())),
            "protocol error: bad reply"
        );
    }

    // Guards the address check: HOST:PORT passes, a missing port or host,
    // or a port that is not a number, is named with an example.
    #[test]
    fn addresses_need_a_port() {
        for good in [
            "127.0.0.1:7070",
            "localhost:7070",
            "[::1]:7070",
            "node-1.example:1",
        ] {
            assert_eq!(check_address("--node", good), Ok(()), "{good}");
        }
        for (bad, expected) in [
            (
                "localhost",
                "--node localhost: the port is missing (--node HOST:PORT, e.g. localhost:7070)",
            ),
            (
                "10.0.0.1",
                "--node 10.0.0.1: the port is missing (--node HOST:PORT, e.g. 10.0.0.1:7070)",
            ),
            (
                "::1",
                "--node ::1: the port is missing (--node HOST:PORT, e.g. [::1]:7070)",
            ),
            (
                ":7070",
                "--node :7070: the host is missing (--node HOST:PORT, e.g. localhost:7070)",
            ),
            (
                "host:x",
                "--node host:x: \"x\" is not a port (--node HOST:PORT, e.g. host:7070)",
            ),
            (
                "",
                "--node is empty (--node HOST:PORT, e.g. localhost:7070)",
            ),
        ] {
            assert_eq!(
                check_address("--node", bad),
                Err(expected.to_owned()),
                "{bad}"
            );
        }
    }
}
