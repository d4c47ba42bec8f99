//! What the examples share: where the node is. With `--node ADDR` an example
//! connects to a running node (`pagoda node ...`); without it, it starts a
//! node of its own inside the process, on a free loopback port, so that
//! `cargo run -p pagoda --example NAME` works with nothing else running.

use std::path::PathBuf;

use pagoda::{Client, ClientOptions};
use pagoda_node::{Node, NodeConfig};

/// RAM for the pages of the node an example starts itself, in bytes.
pub const EMBEDDED_NODE_CAPACITY_BYTES: u64 = 512 << 20;

/// The example's command line: `--node ADDR`, `--token-file PATH`, and the
/// example's own `--NAME VALUE` options.
pub struct Args {
    /// `--NAME VALUE` pairs, in order.
    pairs: Vec<(String, String)>,
}

impl Args {
    /// Parses `--NAME VALUE` pairs, accepting only the names in `known`
    /// besides `node` and `token-file`.
    pub fn parse(usage: &str, known: &[&str]) -> Args {
        let mut pairs = Vec::new();
        let mut words = std::env::args().skip(1);
        while let Some(word) = words.next() {
            let name = word
                .strip_prefix("--")
                .unwrap_or_else(|| fail(usage, &word));
            if !(["node", "token-file"].contains(&name) || known.contains(&name)) {
                fail(usage, &word);
            }
            let value = words.next().unwrap_or_else(|| fail(usage, &word));
            pairs.push((name.to_string(), value));
        }
        Args { pairs }
    }

    /// Arguments given as `(name, value)` pairs, as the examples' tests do.
    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Args {
        Args {
            pairs: pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        }
    }

    /// The value given for `--name`, if any (the last one).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The number given for `--name`, or `default`.
    pub fn number(&self, name: &str, default: u64) -> u64 {
        match self.get(name) {
            Some(text) => text.parse().unwrap_or_else(|_| {
                eprintln!("--{name} takes a whole number, not {text:?}");
                std::process::exit(2)
            }),
            None => default,
        }
    }

    /// Client options with the token of `--token-file`, if given.
    pub fn client_options(&self) -> Result<ClientOptions, Box<dyn std::error::Error>> {
        let mut options = ClientOptions::default();
        if let Some(path) = self.get("token-file") {
            options.token = Some(std::fs::read_to_string(path)?.trim().as_bytes().to_vec());
        }
        Ok(options)
    }

    /// Connects to `--node`, or starts a node in this process and connects
    /// to it. Keep the returned `Embedded` alive as long as the client.
    pub fn connect(&self) -> Result<(Client, Option<Embedded>), Box<dyn std::error::Error>> {
        let options = self.client_options()?;
        match self.get("node") {
            Some(address) => {
                println!("connecting to the node at {address}");
                Ok((Client::connect(address, options)?, None))
            }
            None => {
                let data_dir =
                    std::env::temp_dir().join(format!("pagoda-example-{}", std::process::id()));
                std::fs::create_dir_all(&data_dir)?;
                let config = NodeConfig::new(
                    ([127, 0, 0, 1], 0).into(),
                    EMBEDDED_NODE_CAPACITY_BYTES,
                    data_dir.clone(),
                );
                let node = Node::start(config)?;
                println!(
                    "started a node in this process at {} (pass --node ADDR to use a running one)",
                    node.local_addr()
                );
                let client = Client::connect(node.local_addr(), options)?;
                Ok((
                    client,
                    Some(Embedded {
                        node: Some(node),
                        data_dir,
                    }),
                ))
            }
        }
    }
}

/// A node running inside the example's process; stopped, and its data
/// directory removed, when dropped.
pub struct Embedded {
    node: Option<Node>,
    data_dir: PathBuf,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn fail(usage: &str, word: &str) -> ! {
    eprintln!("unexpected argument {word:?}\nusage: {usage}");
    std::process::exit(2)
}
