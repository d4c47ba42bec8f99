//! The documents speak to readers who never saw the project's planning: a
//! capability id ("C3", "(C11, C18)") or an issue number ("issue 14") in
//! them names nothing a reader can look up. This test reads every Markdown
//! file of the repository (README.md, ARCHITECTURE.md, docs/, deploy/, the
//! crates' READMEs) and fails on any such id outside code, naming the file,
//! the line and the text. Code comments may keep ids; they are not scanned.

use std::path::{Path, PathBuf};

/// How deep below the repository root Markdown files are looked for
/// (`crates/sim/traces/README.md` is three levels down).
const SEARCH_DEPTH_MAX: usize = 4;

/// The highest capability id of the brief.
const CAPABILITY_ID_MAX: u32 = 18;

/// The repository's root: two levels above this crate.
fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Every `.md` file under `directory`, at most `depth` levels down, skipping
/// build output and version control.
fn markdown_files(directory: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if depth > 0 && !name.starts_with('.') && name != "target" {
                markdown_files(&path, depth - 1, found);
            }
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

/// `line` with its inline code spans (`` `...` ``) blanked out, so that an
/// identifier in code is not taken for an id.
fn without_code_spans(line: &str) -> String {
    let mut text = String::with_capacity(line.len());
    let mut in_code = false;
    for character in line.chars() {
        if character == '`' {
            in_code = !in_code;
            text.push(' ');
        } else if in_code {
            text.push(' ');
        } else {
            text.push(character);
        }
    }
    text
}

/// The internal ids in one line of prose: capability ids `C1` to `C18` as
/// whole words (not the C11 language standard, not hex such as `0xC1`), and
/// issue references (`issue 14`, `issues 3`, `issue #14`, `(#14)`).
fn ids_in(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let bytes = line.as_bytes();
    let is_word = |index: usize| {
        bytes
            .get(index)
            .is_some_and(|byte| byte.is_ascii_alphanumeric() || *byte == b'_')
    };
    let mut ids = Vec::new();
    for (start, _) in line.match_indices('C') {
        if start > 0 && is_word(start - 1) {
            continue;
        }
        let digits: String = line[start + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let end = start + 1 + digits.len();
        if digits.is_empty() || digits.len() > 2 || is_word(end) {
            continue;
        }
        let number: u32 = digits.parse().unwrap();
        let language_standard = number == 11
            && [" atomics", " memory model", " standard"]
                .iter()
                .any(|phrase| line[end..].starts_with(phrase));
        if (1..=CAPABILITY_ID_MAX).contains(&number) && !language_standard {
            ids.push(line[start..end].to_owned());
        }
    }
    let lower = line.to_ascii_lowercase();
    for (start, word) in lower.match_indices("issue") {
        if start > 0 && is_word(start - 1) {
            continue;
        }
        let rest = &lower[start + word.len()..];
        let rest = rest.strip_prefix('s').unwrap_or(rest);
        let Some(rest) = rest.strip_prefix(' ') else {
            continue;
        };
        let rest = rest.strip_prefix('#').unwrap_or(rest);
        if rest.starts_with(|character: char| character.is_ascii_digit()) {
            let length = lower.len() - start - rest.len();
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            ids.push(line[start..start + length + digits].to_owned());
        }
    }
    for (start, _) in line.match_indices("(#") {
        let digits = line[start + 2..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        if digits > 0 && line[start + 2 + digits..].starts_with(')') {
            ids.push(line[start..start + 3 + digits].to_owned());
        }
    }
    ids
}

/// Every id in a Markdown text outside fenced code blocks, as
/// `(line number, id)`.
fn ids_in_markdown(text: &str) -> Vec<(usize, String)> {
    let mut in_fence = false;
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            found.extend(ids_in(line).into_iter().map(|id| (index + 1, id)));
        }
    }
    found
}

// Guards the matcher itself: it finds every form of id the documents once
// held, and lets through what only looks like one.
#[test]
fn the_matcher_finds_ids_and_only_ids() {
    let planted = [
        ("## Replication (C11, C18, C7)", vec!["C11", "C18", "C7"]),
        ("the CLI (capability C1 of the brief)", vec!["C1"]),
        ("which C2 forbids, so", vec!["C2"]),
        ("## Read-ahead (issue 14)", vec!["issue 14"]),
        ("Issue 14 reports two-phase", vec!["Issue 14"]),
        ("as in the issue #6 run", vec!["issue #6"]),
        ("fixed in issues 3", vec!["issues 3"]),
        ("see (#12) for why", vec!["(#12)"]),
    ];
    for (line, expected) in planted {
        assert_eq!(ids_in(line), expected, "in {line:?}");
    }
    let clean = [
        "the magic `0xC1` and 0xC1 in hex",
        "press Ctrl-C to quit; C99 and C19 are not ids",
        "the C11 memory model and C11 atomics",
        "the `C3` variant in code",
        "this issue is open; the issues are known",
        "an ABC1 part number, C1x, C10a",
        "step #1 of the list",
    ];
    for line in clean {
        assert_eq!(ids_in(line), Vec::<String>::new(), "in {line:?}");
    }
    let fenced = "prose\n```sh\necho C3 issue 14\n```\nmore (C4)\n";
    assert_eq!(ids_in_markdown(fenced), vec![(5, "C4".to_owned())]);
}

// Guards the documents: no capability id or issue number in any Markdown
// file of the repository.
#[test]
fn no_internal_ids_in_the_documents() {
    let root = repository_root();
    let mut files = Vec::new();
    markdown_files(&root, SEARCH_DEPTH_MAX, &mut files);
    for expected in [
        "README.md",
        "ARCHITECTURE.md",
        "docs/design.md",
        "docs/benchmarks.md",
        "deploy/README.md",
    ] {
        assert!(
            files.contains(&root.join(expected)),
            "{expected} was not found under {}",
            root.display()
        );
    }
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, id) in ids_in_markdown(&text) {
            let relative = file.strip_prefix(&root).unwrap().display().to_string();
            offences.push(format!("{relative}:{line}: {id}"));
        }
    }
    assert!(
        offences.is_empty(),
        "internal ids in the documents (describe the thing by name instead):\n{}",
        offences.join("\n")
    );
}
