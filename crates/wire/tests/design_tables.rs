//! Keeps `docs/design.md` and the code together: the opcode tables and the
//! error code table must list every opcode and error code the enums have,
//! under the same numbers and names, and nothing else.

use std::collections::BTreeMap;

use pagoda_wire::{ErrorCode, Opcode};

fn design() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/design.md");
    std::fs::read_to_string(path).expect("docs/design.md is readable")
}

/// The first two cells of every table row whose first cell parses with
/// `number`, keyed by it.
fn rows(text: &str, number: impl Fn(&str) -> Option<u32>) -> BTreeMap<u32, String> {
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        if let Some(value) = number(cells[1]) {
            let previous = rows.insert(value, cells[2].to_owned());
            assert!(previous.is_none(), "{value:#x} appears twice in design.md");
        }
    }
    rows
}

/// The text of one section, from its heading to the next heading of any
/// level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("design.md has no {heading:?}"));
    let body = &text[start + heading.len()..];
    let end = body.find("\n#").unwrap_or(body.len());
    &body[..end]
}

// Guards the opcode tables: every request and reply opcode is documented
// under its number and name.
#[test]
fn the_opcode_tables_list_every_opcode() {
    let text = design();
    let documented = rows(section(&text, "### Opcodes and payloads"), |cell| {
        u32::from_str_radix(cell.strip_prefix("0x")?, 16).ok()
    });
    let mut expected = BTreeMap::new();
    for byte in 0..=u8::MAX {
        if let Some(opcode) = Opcode::from_u8(byte) {
            expected.insert(u32::from(byte), format!("{opcode:?}"));
        }
    }
    assert_eq!(documented, expected, "docs/design.md's opcode tables");
}

// Guards the error code table: every code is documented under its number
// and name.
#[test]
fn the_error_code_table_lists_every_code() {
    let text = design();
    let documented = rows(section(&text, "### Error codes"), |cell| cell.parse().ok());
    let mut expected = BTreeMap::new();
    for value in 1..u16::MAX {
        let code = ErrorCode::from_u16(value);
        if code != ErrorCode::Unknown {
            expected.insert(u32::from(value), format!("{code:?}"));
        }
    }
    assert_eq!(documented, expected, "docs/design.md's error code table");
}
