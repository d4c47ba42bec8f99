//! Replays every committed corpus file of every fuzz target through its
//! harness, as an ordinary test: guards against a regression on any input the
//! fuzzers found interesting (or crashing, once fixed), without a fuzzer
//! installed. A target whose corpus directory is missing or empty fails the
//! test rather than passing silently.

use std::path::{Path, PathBuf};

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("corpus of {target} at {}: {error}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the corpus of {target} at {} is empty",
        dir.display()
    );
    files
}

fn replay(target: &str) {
    let (_, run) = pagoda_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let files = corpus_files(target);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(
            outcome.is_ok(),
            "{target}: corpus input {} fails its harness",
            file.display()
        );
    }
    eprintln!("{target}: {} corpus inputs replayed", files.len());
}

#[test]
fn wire_corpus() {
    replay("wire");
}

#[test]
fn dispatch_corpus() {
    replay("dispatch");
}

#[test]
fn journal_corpus() {
    replay("journal");
}

#[test]
fn checkpoint_corpus() {
    replay("checkpoint");
}

#[test]
fn catalog_corpus() {
    replay("catalog");
}

// Guards the list of targets: every target the library names has a test
// above and a corpus directory.
#[test]
fn every_target_has_a_corpus() {
    for (target, _) in pagoda_fuzz::TARGETS {
        assert!(!corpus_files(target).is_empty());
    }
    assert_eq!(pagoda_fuzz::TARGETS.len(), 5);
}

/// The inputs in `crashes/<target>/`: findings whose fix is not in yet, each
/// named for its bug. Ignored, so CI stays green until the fix lands; run it
/// with `cargo test -p pagoda-fuzz --test replay -- --ignored`, and once it
/// passes, move the inputs into the corpus, where the replay above guards them.
#[test]
#[ignore = "known crashes whose fixes are pending; see crates/fuzz/README.md"]
fn known_crashes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crashes");
    let mut failures = Vec::new();
    for (target, run) in pagoda_fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "still crashing: {failures:?}");
}
