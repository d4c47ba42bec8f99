//! Trace readers: a stream of block (page) ids from a file in one of three
//! formats. Gzip is detected by its magic number and decompressed on the fly,
//! whatever the format.
//!
//! - `lirs`: one block id per line. Lines that are not a decimal number (the
//!   `*` checkpoint markers of the original tools, blank lines) are skipped.
//! - `csv`: comma-separated; the block id is in a column chosen by header
//!   name or by 0-based index. Ids that are not decimal numbers (hexadecimal
//!   object names, paths) are hashed to 64 bits.
//! - `oracle`: libCacheSim's oracleGeneral binary format, 24-byte
//!   little-endian records: u32 time, u64 id, u32 size, i64 next access.
//!   Only the id is used.
//!
//! Reading is streaming: memory is bounded by one line (at most
//! `LINE_BYTES_MAX`) whatever the size of the trace.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::Serialize;

use crate::SimError;

/// Longest accepted line of a text trace, in bytes. A longer one is
/// reported as an error rather than buffered without bound.
pub const LINE_BYTES_MAX: usize = 64 * 1024;

/// Size of one oracleGeneral record, in bytes.
pub const ORACLE_RECORD_BYTES: usize = 24;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The trace file formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum TraceFormat {
    /// One block id per line; non-numeric lines skipped.
    #[default]
    #[value(name = "lirs")]
    Lirs,
    /// Comma-separated values, block id in the column given by `--column`.
    #[value(name = "csv")]
    Csv,
    /// libCacheSim oracleGeneral binary records.
    #[value(name = "oracle")]
    Oracle,
}

/// Which CSV column holds the block id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column {
    /// The column whose header (first line) is this name.
    Name(String),
    /// The column at this 0-based index. A first line whose field there is
    /// not a number is taken as a header and skipped.
    Index(usize),
}

impl Column {
    /// Parses `--column`: all digits means an index, anything else a name.
    pub fn parse(text: &str) -> Column {
        match text.parse::<usize>() {
            Ok(index) => Column::Index(index),
            Err(_) => Column::Name(text.to_string()),
        }
    }
}

/// A stream of block ids read from a trace file.
pub struct TraceReader {
    path: PathBuf,
    source: Box<dyn BufRead>,
    format: TraceFormat,
    /// For CSV: the column index, once resolved from the header.
    column: Option<usize>,
    column_spec: Column,
    line_number: u64,
    bytes_read: u64,
    line: Vec<u8>,
    done: bool,
}

impl TraceReader {
    /// Opens `path` for reading in `format`. `column` is used by CSV only
    /// (default: column 0).
    pub fn open(
        path: &Path,
        format: TraceFormat,
        column: Option<Column>,
    ) -> Result<TraceReader, SimError> {
        let io_error = |source| SimError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let mut buffered = BufReader::new(file);
        let is_gzip = buffered
            .fill_buf()
            .map_err(io_error)?
            .starts_with(&GZIP_MAGIC);
        let source: Box<dyn BufRead> = if is_gzip {
            Box::new(BufReader::new(MultiGzDecoder::new(buffered)))
        } else {
            Box::new(buffered)
        };
        Ok(TraceReader::from_reader(path, source, format, column))
    }

    /// Reads from an already opened, already decompressed source; `path` only
    /// names it in errors.
    pub fn from_reader(
        path: &Path,
        source: Box<dyn BufRead>,
        format: TraceFormat,
        column: Option<Column>,
    ) -> TraceReader {
        let column_spec = column.unwrap_or(Column::Index(0));
        TraceReader {
            path: path.to_path_buf(),
            source,
            format,
            column: match column_spec {
                Column::Index(index) => Some(index),
                Column::Name(_) => None,
            },
            column_spec,
            line_number: 0,
            bytes_read: 0,
            line: Vec::new(),
            done: false,
        }
    }

    fn format_error(&self, message: String) -> SimError {
        SimError::Format {
            path: self.path.clone(),
            line: self.line_number,
            message,
        }
    }

    fn io_error(&self, source: std::io::Error) -> SimError {
        SimError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads the next line into `self.line` (without its line ending).
    /// Returns `false` at the end of the file.
    fn read_line(&mut self) -> Result<bool, SimError> {
        self.line.clear();
        let limit = LINE_BYTES_MAX as u64 + 1;
        let read = (&mut self.source)
            .take(limit)
            .read_until(b'\n', &mut self.line)
            .map_err(|source| self.io_error(source))?;
        if read == 0 {
            return Ok(false);
        }
        self.line_number += 1;
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        } else if read as u64 == limit {
            return Err(self.format_error(format!(
                "line longer than {LINE_BYTES_MAX} bytes (is this a binary file? try --format oracle)"
            )));
        }
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        Ok(true)
    }

    fn next_lirs(&mut self) -> Result<Option<u64>, SimError> {
        while self.read_line()? {
            let text = String::from_utf8_lossy(&self.line);
            if let Ok(id) = text.trim().parse::<u64>() {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    fn next_csv(&mut self) -> Result<Option<u64>, SimError> {
        while self.read_line()? {
            let text = String::from_utf8_lossy(&self.line).into_owned();
            if text.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = text.split(',').map(unquote).collect();
            let index = match (self.column, &self.column_spec) {
                (Some(index), _) => index,
                (None, Column::Name(name)) => {
                    // The first non-empty line is the header.
                    let Some(index) = fields.iter().position(|field| field == name) else {
                        return Err(self.format_error(format!(
                            "no column named {name:?} in the header ({})",
                            fields.join(", ")
                        )));
                    };
                    self.column = Some(index);
                    continue;
                }
                (None, Column::Index(_)) => unreachable!("an index column is always resolved"),
            };
            let Some(field) = fields.get(index) else {
                return Err(self.format_error(format!(
                    "column {index} requested but the line has {} columns",
                    fields.len()
                )));
            };
            match field.parse::<u64>() {
                Ok(id) => return Ok(Some(id)),
                Err(_) if self.line_number == 1 && matches!(self.column_spec, Column::Index(_)) => {
                    // A header line in front of numbered columns.
                    continue;
                }
                Err(_) if field.is_empty() => {
                    return Err(self.format_error(format!("column {index} is empty")));
                }
                Err(_) => return Ok(Some(hash_id(field))),
            }
        }
        if self.column.is_none() {
            return Err(self.format_error("the file is empty: no header line".to_string()));
        }
        Ok(None)
    }

    fn next_oracle(&mut self) -> Result<Option<u64>, SimError> {
        let mut record = [0u8; ORACLE_RECORD_BYTES];
        let mut filled = 0;
        while filled < ORACLE_RECORD_BYTES {
            match self.source.read(&mut record[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(self.io_error(error)),
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        if filled < ORACLE_RECORD_BYTES {
            return Err(SimError::Format {
                path: self.path.clone(),
                line: 0,
                message: format!(
                    "truncated record at byte {}: {filled} of {ORACLE_RECORD_BYTES} bytes \
                     (is this an oracleGeneral file?)",
                    self.bytes_read
                ),
            });
        }
        self.bytes_read += ORACLE_RECORD_BYTES as u64;
        let id = u64::from_le_bytes(record[4..12].try_into().expect("eight bytes"));
        Ok(Some(id))
    }
}

impl Iterator for TraceReader {
    type Item = Result<u64, SimError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = match self.format {
            TraceFormat::Lirs => self.next_lirs(),
            TraceFormat::Csv => self.next_csv(),
            TraceFormat::Oracle => self.next_oracle(),
        };
        // After an error or the end, the stream stays finished.
        if !matches!(next, Ok(Some(_))) {
            self.done = true;
        }
        next.transpose()
    }
}

/// Strips surrounding whitespace and one pair of double quotes.
fn unquote(field: &str) -> &str {
    let field = field.trim();
    field
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(field)
}

/// FNV-1a of a textual id, so that object names can serve as block ids.
fn hash_id(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Reads every block id of a trace into memory, for running several policies
/// over the same requests.
pub fn load(
    path: &Path,
    format: TraceFormat,
    column: Option<Column>,
) -> Result<Vec<u64>, SimError> {
    TraceReader::open(path, format, column)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn read(
        bytes: &[u8],
        format: TraceFormat,
        column: Option<Column>,
    ) -> Result<Vec<u64>, SimError> {
        TraceReader::from_reader(
            Path::new("test"),
            Box::new(Cursor::new(bytes.to_vec())),
            format,
            column,
        )
        .collect()
    }

    // Guards the LIRS rules: numbers kept, markers and junk skipped, CRLF ok.
    #[test]
    fn lirs_skips_non_numeric_lines() {
        let ids = read(b"*\n1\r\n  2 \n\nabc\n*\n3", TraceFormat::Lirs, None).unwrap();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    // Guards gzip detection by magic number, independent of the file name.
    #[test]
    fn gzip_is_detected_by_magic() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"5\n*\n6\n").unwrap();
        file.write_all(&encoder.finish().unwrap()).unwrap();
        file.flush().unwrap();
        assert_eq!(
            load(file.path(), TraceFormat::Lirs, None).unwrap(),
            vec![5, 6]
        );
        // And plain text at another path reads the same way.
        let mut plain = tempfile::NamedTempFile::new().unwrap();
        plain.write_all(b"5\n6\n").unwrap();
        assert_eq!(
            load(plain.path(), TraceFormat::Lirs, None).unwrap(),
            vec![5, 6]
        );
    }

    // Guards column selection by header name and by index, with and without
    // a header line, quoted fields and hashed textual ids.
    #[test]
    fn csv_selects_columns() {
        let text = b"time,block,size\n1,10,4096\n2,\"11\",4096\n";
        let by_name = read(text, TraceFormat::Csv, Some(Column::parse("block"))).unwrap();
        assert_eq!(by_name, vec![10, 11]);
        let by_index = read(text, TraceFormat::Csv, Some(Column::parse("1"))).unwrap();
        assert_eq!(by_index, vec![10, 11]);
        let no_header = read(b"7,8\n9,10\n", TraceFormat::Csv, None).unwrap();
        assert_eq!(no_header, vec![7, 9]);
        let names = read(
            b"key\na\nb\na\n",
            TraceFormat::Csv,
            Some(Column::parse("key")),
        )
        .unwrap();
        assert_eq!(names.len(), 3);
        assert_eq!(names[0], names[2]);
        assert_ne!(names[0], names[1]);
    }

    // Guards clear errors on bad CSV: unknown column name, short line, empty file.
    #[test]
    fn csv_errors_are_clear() {
        let error = read(b"a,b\n1,2\n", TraceFormat::Csv, Some(Column::parse("c"))).unwrap_err();
        assert!(
            error.to_string().contains("no column named \"c\""),
            "{error}"
        );
        let error = read(b"1,2\n3\n", TraceFormat::Csv, Some(Column::parse("1"))).unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
        let error = read(b"", TraceFormat::Csv, Some(Column::parse("c"))).unwrap_err();
        assert!(error.to_string().contains("empty"), "{error}");
    }

    // Guards the oracleGeneral layout (the id is bytes 4..12) and the error on
    // a truncated record.
    #[test]
    fn oracle_records() {
        let mut bytes = Vec::new();
        for (time, id) in [(1u32, 42u64), (2, u64::MAX - 1)] {
            bytes.extend_from_slice(&time.to_le_bytes());
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&4096u32.to_le_bytes());
            bytes.extend_from_slice(&(-1i64).to_le_bytes());
        }
        assert_eq!(
            read(&bytes, TraceFormat::Oracle, None).unwrap(),
            vec![42, u64::MAX - 1]
        );
        bytes.extend_from_slice(&[1, 2, 3]);
        let error = read(&bytes, TraceFormat::Oracle, None).unwrap_err();
        assert!(
            error.to_string().contains("truncated record at byte 48"),
            "{error}"
        );
    }

    // Guards the line bound: a huge line is an error, not an allocation.
    #[test]
    fn overlong_line_is_an_error() {
        let bytes = vec![b'7'; LINE_BYTES_MAX + 10];
        let error = read(&bytes, TraceFormat::Lirs, None).unwrap_err();
        assert!(error.to_string().contains("longer than"), "{error}");
    }

    // Guards a missing file: an I/O error naming the path, not a panic.
    #[test]
    fn missing_file_is_an_error() {
        let error = load(Path::new("/nonexistent/trace"), TraceFormat::Lirs, None)
            .err()
            .unwrap();
        assert!(error.to_string().contains("/nonexistent/trace"), "{error}");
    }
}
