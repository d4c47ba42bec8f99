//! `pagoda token create|ls|revoke` against a running `pagoda node` process:
//! credentials made, listed and revoked on the data dir while the node runs
//! take effect at the next handshake, rights are enforced, and no secret is
//! ever listed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::{NodeProcess, pagoda, text};

/// Runs `pagoda region ARGS` against `node` as `credential` with the token
/// in `token_file`.
fn region(node: &NodeProcess, args: &[&str], credential: &str, token_file: &Path) -> Output {
    pagoda()
        .arg("region")
        .args(args)
        .args(["--node", &node.addr, "--credential", credential])
        .arg("--token-file")
        .arg(token_file)
        .output()
        .unwrap()
}

fn token(args: &[&str], data_dir: &Path) -> Output {
    pagoda()
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

fn assert_success(output: &Output, what: &str) {
    assert!(output.status.success(), "{what} failed:\n{}", text(output));
}

fn assert_failure(output: &Output, what: &str, expected: &str) {
    assert!(
        !output.status.success(),
        "{what} succeeded:\n{}",
        text(output)
    );
    assert!(
        text(output).contains(expected),
        "{what}: expected {expected:?} in:\n{}",
        text(output)
    );
}

// Guards the whole credential life cycle through the command line, with the
// node running throughout: create (token printed once, or written 0600), use
// with the rights granted and no more, list without secrets, revoke, and the
// next handshake refused.
#[test]
fn tokens_are_created_listed_and_revoked_while_the_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let admin_file = dir.path().join("admin.token");

    // Before the node starts: a token written to a file.
    let output = pagoda()
        .args([
            "token",
            "create",
            "admin",
            "--grant",
            "*=admin",
            "--data-dir",
        ])
        .arg(&data_dir)
        .arg("--out")
        .arg(&admin_file)
        .output()
        .unwrap();
    assert_success(&output, "token create admin");
    let admin_token = std::fs::read_to_string(&admin_file).unwrap();
    assert_eq!(admin_token.trim().len(), 64, "{admin_token:?}");
    let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");

    let node = NodeProcess::start(&data_dir, &["--storage", "none"]);

    // While it runs: a read-only credential, its token printed once.
    let output = token(&["create", "viewer", "--grant", "app-*=read"], &data_dir);
    assert_success(&output, "token create viewer");
    let viewer_token = String::from_utf8(output.stdout.clone()).unwrap();
    let viewer_token = viewer_token.trim();
    assert_eq!(viewer_token.len(), 64, "stdout holds just the token");
    let viewer_file = dir.path().join("viewer.token");
    std::fs::write(&viewer_file, viewer_token).unwrap();

    // Rights.
    assert_success(
        &region(
            &node,
            &["create", "app-1", "--size", "1MiB"],
            "admin",
            &admin_file,
        ),
        "admin creates",
    );
    assert_success(
        &region(
            &node,
            &["create", "other", "--size", "1MiB"],
            "admin",
            &admin_file,
        ),
        "admin creates",
    );
    let listed = region(&node, &["ls"], "viewer", &viewer_file);
    assert_success(&listed, "viewer lists");
    let listed = text(&listed);
    assert!(
        listed.contains("app-1") && !listed.contains("other"),
        "{listed}"
    );
    assert_failure(
        &region(
            &node,
            &["create", "app-2", "--size", "1MiB"],
            "viewer",
            &viewer_file,
        ),
        "viewer creates",
        "lacks the admin right",
    );
    assert_failure(
        &region(&node, &["ls"], "viewer", &admin_file),
        "viewer with the admin's token",
        "authentication as credential \"viewer\" failed: unknown credential or wrong token",
    );

    // Listing shows names and grants, never a secret.
    let output = token(&["ls"], &data_dir);
    assert_success(&output, "token ls");
    let listing = text(&output);
    for expected in ["admin", "*=admin", "viewer", "app-*=read"] {
        assert!(listing.contains(expected), "{expected}: {listing}");
    }
    assert!(!listing.contains(admin_token.trim()) && !listing.contains(viewer_token));
    let stored = std::fs::read(data_dir.join("credentials")).unwrap();
    let stored = String::from_utf8_lossy(&stored);
    assert!(!stored.contains(admin_token.trim()) && !stored.contains(viewer_token));

    // Mistakes are refused with a reason.
    assert_failure(
        &token(&["create", "viewer", "--grant", "*=read"], &data_dir),
        "a duplicate",
        "exists already",
    );
    assert_failure(
        &token(&["create", "x", "--grant", "*=owner"], &data_dir),
        "a bad right",
        "not read, write or admin",
    );
    assert_failure(
        &token(&["create", "bad name", "--grant", "*=read"], &data_dir),
        "a bad name",
        "credential name",
    );
    assert_failure(
        &token(&["revoke", "nobody"], &data_dir),
        "revoke unknown",
        "no credential",
    );

    // Revoked while the node runs: refused at the next handshake.
    assert_success(&token(&["revoke", "viewer"], &data_dir), "token revoke");
    assert_failure(
        &region(&node, &["ls"], "viewer", &viewer_file),
        "a revoked credential",
        "authentication as credential \"viewer\" failed: unknown credential or wrong token",
    );
    assert_success(
        &region(&node, &["ls"], "admin", &admin_file),
        "admin still lists",
    );
    let listing = text(&token(&["ls"], &data_dir));
    assert!(!listing.contains("viewer"), "{listing}");
}
