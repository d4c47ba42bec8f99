//! Helpers shared by the tests of the `pagoda` binary.

use std::net::TcpListener;
use std::process::{Command, Output};

/// The `pagoda` binary, with none of the environment that would point it at
/// another node or change its logging.
pub fn pagoda() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pagoda"));
    command
        .env_remove("PAGODA_NODE")
        .env_remove("PAGODA_TOKEN_FILE")
        .env_remove("PAGODA_CREDENTIAL")
        .env_remove("PAGODA_LOG");
    command
}

/// A command's stdout and stderr, as text.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
