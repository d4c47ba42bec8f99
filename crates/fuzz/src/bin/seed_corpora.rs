//! Writes the seed inputs of every fuzz target, from real encodings, into
//! `crates/fuzz/corpus/<target>/seed-*` (or the directory given as the first
//! argument): every request and response kind, a real journal, a real
//! manifest and data object, a real catalog. The fuzzers start from these;
//! `crates/fuzz/README.md` says how.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pagoda_fuzz::{catalog, checkpoint, dispatch, journal};
use pagoda_journal::testing::CrashStorage;
use pagoda_journal::{Journal, JournalOptions, Storage};
use pagoda_wire::frame::HEADER_BYTES;
use pagoda_wire::message::{encode_read_pages, encode_write_pages};
use pagoda_wire::{
    CheckpointInfo, ErrorCode, Opcode, PageRange, RecoveryPhase, RecoveryProgress, RegionInfo,
    RegionStat, RegionState, Request, Response, Since,
};

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let requests = request_frames();
    let responses = response_frames();
    write_target(&root, "wire", wire_seeds(&requests, &responses));
    write_target(&root, "dispatch", dispatch_seeds());
    write_target(&root, "journal", journal_seeds());
    write_target(&root, "checkpoint", checkpoint_seeds());
    write_target(&root, "catalog", catalog_seeds());
}

fn write_target(root: &Path, target: &str, seeds: Vec<(String, Vec<u8>)>) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
    println!("{target}: {} seeds in {}", seeds.len(), dir.display());
}

fn pages_payload(pages: &[u64]) -> Vec<u8> {
    pages.iter().flat_map(|page| page.to_le_bytes()).collect()
}

/// One whole frame of every request kind.
fn request_frames() -> Vec<(String, Vec<u8>)> {
    let pages = pages_payload(&[0, 3]);
    let mut frames = Vec::new();
    let mut add = |name: &str, request: Request<'_>| {
        let mut out = Vec::new();
        request.encode(&mut out, 1, 0);
        frames.push((format!("request-{name}"), out));
    };
    add(
        "hello",
        Request::Hello {
            client_name: "seed",
            credential: "default",
            client_nonce: [7; 32],
        },
    );
    add("proof", Request::AuthProof { proof: [9; 32] });
    add("ping", Request::Ping { reply_bytes: 16 });
    add(
        "create",
        Request::CreateRegion {
            name: "a",
            size: 1 << 20,
            page_size: 4096,
            replicas: Vec::new(),
            mode: pagoda_wire::ReplicationMode::Sync,
        },
    );
    add(
        "open",
        Request::OpenRegion {
            name: "a",
            mode: pagoda_wire::OpenMode::Write,
            claim_epoch: 0,
        },
    );
    add("close", Request::CloseRegion { region: 0 });
    add("stat", Request::StatRegion { name: "a" });
    add("list", Request::ListRegions);
    add("delete", Request::DeleteRegion { name: "a" });
    add("nodestat", Request::NodeStat);
    add(
        "checkpoint",
        Request::Checkpoint {
            name: "a",
            full: true,
        },
    );
    add(
        "recover",
        Request::RecoverRegion {
            name: "a",
            source: "",
            source_token: b"",
            baseline_only: true,
        },
    );
    add("recovery-status", Request::RecoveryStatus { name: "a" });
    add(
        "dirty",
        Request::DirtyPages {
            region: 1,
            since: Since::Mark(0),
            start_page: 0,
        },
    );
    add("freeze", Request::FreezeRegion { region: 1 });
    add(
        "apply-journal",
        Request::ApplyJournal {
            region: 1,
            lsn: 1,
            commit_id: 1,
            entries: vec![(0, b"journal".as_slice()), (8192, b"x".as_slice())],
        },
    );
    let mut out = Vec::new();
    encode_read_pages(&mut out, 1, 0, 1, &[0, 3]);
    frames.push(("request-read".into(), out));
    let mut out = Vec::new();
    encode_write_pages(&mut out, 1, 0, 1, 1, &[0, 3], 4096, |index, out| {
        out.resize(out.len() + 4096, index as u8 + 1)
    });
    frames.push(("request-write".into(), out));
    assert!(!pages.is_empty());
    frames
}

/// One whole frame of every response kind.
fn response_frames() -> Vec<(String, Vec<u8>)> {
    let info = RegionInfo {
        id: 1,
        size: 1 << 20,
        page_size: 4096,
        name: "a".into(),
    };
    let responses = vec![
        (
            "hello-ok",
            Response::HelloOk {
                version: 1,
                batch_bytes_max: 1 << 24,
                batch_pages_max: 4096,
            },
        ),
        ("pong", Response::Pong { payload: &[0; 16] }),
        ("region-info", Response::RegionInfo(info.clone())),
        (
            "region-stat",
            Response::RegionStat(RegionStat {
                info: info.clone(),
                segments_allocated: 1,
                resident_bytes: 2 << 20,
                pages_read: 3,
                pages_written: 4,
                state: RegionState::Active,
                checkpoint: 2,
                checkpoint_age_ms: 5,
                dirty_pages: 1,
                uid: 0x1234,
                metadata_bytes: 4096,
                segments_paged_out: 1,
                bulk_bytes: 2 << 20,
                bulk_zero_bytes: 4096,
                segments_loading: 0,
                state_reason: String::new(),
            }),
        ),
        (
            "region-list",
            Response::RegionList(vec![info.clone(), info]),
        ),
        ("done", Response::Done),
        ("pages", Response::PagesData { data: &[7; 64] }),
        (
            "node-stat",
            Response::NodeStat(pagoda_wire::message::NodeStat {
                capacity_bytes: 8 << 20,
                used_bytes: 2 << 20,
                segment_bytes: 2 << 20,
                regions: 1,
                connections: 1,
                requests: 9,
                bulk_capacity_bytes: 16 << 20,
                bulk_used_bytes: 4096,
                bulk_referenced_bytes: 8192,
                bulk_zero_bytes: 0,
                segments_paged_out: 1,
                segments_paged_in: 0,
            }),
        ),
        (
            "checkpoint-done",
            Response::CheckpointDone(CheckpointInfo {
                number: 1,
                pages: 2,
                bytes: 3,
                objects: 1,
                full: false,
                baseline_pages: 2,
                micros: 10,
            }),
        ),
        (
            "recovery",
            Response::Recovery(RecoveryProgress {
                phase: RecoveryPhase::Failed,
                baseline_checkpoint: 1,
                baseline_age_ms: 2,
                baseline_pages: 3,
                baseline_pages_done: 3,
                source_pages: 0,
                source_pages_done: 0,
                storage_bytes: 100,
                source_bytes: 0,
                elapsed_ms: 4,
                message: "no source".into(),
            }),
        ),
        (
            "dirty-list",
            Response::DirtyPageList {
                mark: 5,
                next_page: u64::MAX,
                ranges: vec![PageRange { start: 0, count: 2 }],
            },
        ),
        ("mark", Response::Mark { mark: 5 }),
        (
            "error",
            Response::Error {
                code: ErrorCode::OutOfRange,
                message: "page 9 beyond 8",
            },
        ),
    ];
    responses
        .into_iter()
        .map(|(name, response)| {
            let mut out = Vec::new();
            response.encode(&mut out, 1, 0);
            (format!("response-{name}"), out)
        })
        .collect()
}

/// For each frame: its opcode and payload as decoder input, and its whole
/// frame as the reader's stream; plus a stream of several frames.
fn wire_seeds(
    requests: &[(String, Vec<u8>)],
    responses: &[(String, Vec<u8>)],
) -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut stream = Vec::new();
    for (name, frame) in requests.iter().chain(responses) {
        let mut decoder = vec![frame[5], 0];
        decoder.extend_from_slice(&frame[HEADER_BYTES..]);
        seeds.push((format!("{name}-payload"), decoder));
        let mut whole = vec![frame[5], 5];
        whole.extend_from_slice(frame);
        seeds.push((format!("{name}-frame"), whole));
        if frame.len() < 1024 {
            stream.extend_from_slice(frame);
        }
    }
    for control in [0u8, 1, 2, 3] {
        let mut input = vec![Opcode::Ping as u8, control | 4];
        input.extend_from_slice(&stream);
        seeds.push((format!("stream-{control}"), input));
    }
    seeds
}

fn dispatch_seeds() -> Vec<(String, Vec<u8>)> {
    let payload_of = |request: Request<'_>| {
        let mut out = Vec::new();
        request.encode(&mut out, 1, 0);
        out[HEADER_BYTES..].to_vec()
    };
    let create = payload_of(Request::CreateRegion {
        name: "a",
        size: 4 << 20,
        page_size: 4096,
        replicas: Vec::new(),
        mode: pagoda_wire::ReplicationMode::Sync,
    });
    let pages = pages_payload(&[0, 1, 600]);
    let mut write = 0u64.to_le_bytes().to_vec();
    // The log sequence number: the region's first write.
    write.extend_from_slice(&1u64.to_le_bytes());
    write.extend_from_slice(&3u32.to_le_bytes());
    write.extend_from_slice(&pages);
    write.extend(std::iter::repeat_n(0x5a, 3 * 4096));
    let mut read = 0u64.to_le_bytes().to_vec();
    read.extend_from_slice(&3u32.to_le_bytes());
    read.extend_from_slice(&pages);
    let dirty = payload_of(Request::DirtyPages {
        region: 0,
        since: Since::Checkpoint(0),
        start_page: 0,
    });
    let apply = payload_of(Request::ApplyJournal {
        region: 0,
        lsn: 1,
        commit_id: 1,
        entries: vec![(100, b"journaled".as_slice())],
    });
    let freeze = payload_of(Request::FreezeRegion { region: 0 });
    let name = payload_of(Request::StatRegion { name: "a" });
    // Writes need the connection to hold the region's writer role.
    let open_write = payload_of(Request::OpenRegion {
        name: "a",
        mode: pagoda_wire::OpenMode::Write,
        claim_epoch: 0,
    });
    let close = payload_of(Request::CloseRegion { region: 0 });
    let checkpoint = payload_of(Request::Checkpoint {
        name: "a",
        full: false,
    });
    let recover = payload_of(Request::RecoverRegion {
        name: "b",
        source: "",
        source_token: b"",
        baseline_only: true,
    });
    let recover_source = payload_of(Request::RecoverRegion {
        name: "a",
        source: "127.0.0.1:1",
        source_token: b"t",
        baseline_only: false,
    });
    let ping = payload_of(Request::Ping { reply_bytes: 100 });

    let sequence = |frames: &[(Opcode, &[u8])]| {
        let mut input = Vec::new();
        for (opcode, payload) in frames {
            dispatch::push_frame(&mut input, *opcode as u8, payload);
        }
        input
    };
    vec![
        ("ping".into(), sequence(&[(Opcode::Ping, &ping)])),
        (
            "lifecycle".into(),
            sequence(&[
                (Opcode::CreateRegion, &create),
                (Opcode::OpenRegion, &open_write),
                (Opcode::WritePages, &write),
                (Opcode::ReadPages, &read),
                (Opcode::StatRegion, &name),
                (Opcode::DirtyPages, &dirty),
                (Opcode::ListRegions, &[]),
                (Opcode::NodeStat, &[]),
                (Opcode::DeleteRegion, &name),
            ]),
        ),
        (
            "journal".into(),
            sequence(&[
                (Opcode::CreateRegion, &create),
                (Opcode::OpenRegion, &open_write),
                (Opcode::ApplyJournal, &apply),
                (Opcode::ReadPages, &read),
            ]),
        ),
        (
            "checkpoint".into(),
            sequence(&[
                (Opcode::CreateRegion, &create),
                (Opcode::OpenRegion, &open_write),
                (Opcode::WritePages, &write),
                (Opcode::Checkpoint, &checkpoint),
                (Opcode::WritePages, &write),
                (Opcode::DirtyPages, &dirty),
                (Opcode::FreezeRegion, &freeze),
                (Opcode::WritePages, &write),
                (Opcode::CloseRegion, &close),
            ]),
        ),
        (
            "recover".into(),
            sequence(&[
                (Opcode::RecoverRegion, &recover),
                (Opcode::RecoveryStatus, &recover[..4]),
                (Opcode::RecoverRegion, &recover_source),
            ]),
        ),
        (
            "unknown-and-malformed".into(),
            sequence(&[
                (Opcode::Pong, &[]),
                (Opcode::CreateRegion, &create[..5]),
                (Opcode::Ping, &ping),
            ]),
        ),
    ]
}

/// A real journal: commits across several small segments, some released.
fn journal_seeds() -> Vec<(String, Vec<u8>)> {
    let storage = CrashStorage::new(1);
    let options = JournalOptions {
        segment_bytes: 1024,
        ..JournalOptions::default()
    };
    let shared: Arc<dyn Storage> = Arc::new(storage.clone());
    let (journal, _) = Journal::open_with(shared, options).unwrap();
    for commit in 0..12u64 {
        let mut micro = journal.begin();
        for entry in 0..=commit % 3 {
            micro.push(
                commit % 2,
                entry * 4096,
                &vec![commit as u8; 40 + entry as usize * 50],
            );
        }
        journal.commit(micro).unwrap();
        if commit == 4 {
            journal.release_through(3).unwrap();
        }
    }
    drop(journal);
    let sequences = storage.segments();
    let first = sequences[0];
    let segments: Vec<Vec<u8>> = sequences
        .iter()
        .map(|&sequence| storage.segment_bytes(sequence).unwrap())
        .collect();
    let shift = first.min(4);
    let mut seeds = vec![
        (
            "log".into(),
            journal::encode_input(journal::FLAG_FIX_CHECKSUMS, shift, &segments),
        ),
        (
            "log-truncate".into(),
            journal::encode_input(journal::FLAG_TRUNCATE, shift, &segments),
        ),
        (
            "one-segment".into(),
            journal::encode_input(0, shift, &segments[..1]),
        ),
    ];
    let mut torn = segments.clone();
    let last = torn.last_mut().unwrap();
    last.truncate(last.len() - 7);
    seeds.push(("torn-tail".into(), journal::encode_input(0, shift, &torn)));
    let mut damaged = segments;
    damaged[0][100] ^= 0x40;
    seeds.push(("damaged".into(), journal::encode_input(0, shift, &damaged)));
    seeds
}

fn checkpoint_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    // A real manifest, as `checkpoint::checkpoint` writes it.
    let body = serde_json::json!({
        "format": 1,
        "name": "fuzz",
        "uid": checkpoint::UID,
        "size": checkpoint::REGION_PAGES * checkpoint::PAGE_BYTES as u64,
        "page_size": checkpoint::PAGE_BYTES,
        "number": checkpoint::CHECKPOINT,
        "started_unix_ms": 1_700_000_000_000u64,
        "pages": 3,
        "objects": [
            {"key": "regions/fuzz/data/00000000000000000001-0000000000000001-000000.obj",
             "checkpoint": 1, "pages": 2, "bytes": 48 + 2 * (16 + 4096), "runs": [[0, 0, 1]]},
            {"key": "regions/fuzz/data/00000000000000000003-00000000000000aa-000000.obj",
             "checkpoint": 3, "pages": 2, "bytes": 48 + 2 * (16 + 4096), "runs": [[5, 0, 2]]},
        ],
    });
    let body = serde_json::to_vec(&body).unwrap();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&checkpoint::frame_manifest(&body));
    seeds.push(("manifest-framed".into(), framed));
    let mut bare = vec![0u8];
    bare.extend_from_slice(&body);
    seeds.push(("manifest-body".into(), bare));
    // Data objects: contiguous pages, a gap, pages out of the region.
    for (name, pages) in [
        ("object-run", vec![0u64, 1, 2]),
        ("object-gap", vec![4, 5, 9, 10, 11]),
        ("object-beyond", vec![62, 63, 64]),
    ] {
        let object = checkpoint::encode_object(&pages, |page| page as u8 ^ 0x5a);
        let mut input = vec![checkpoint::MODE_OBJECT];
        input.extend_from_slice(&object);
        seeds.push((name.into(), input));
    }
    let object = checkpoint::encode_object(&[7, 8], |page| page as u8);
    let mut fixing = vec![
        checkpoint::MODE_OBJECT
            | checkpoint::FLAG_FIT
            | checkpoint::FLAG_FIX_PAGES
            | checkpoint::FLAG_FIX_INDEX
            | checkpoint::FLAG_FIX_HEADER,
    ];
    fixing.extend_from_slice(&object[..object.len() - 100]);
    seeds.push(("object-fixed-up".into(), fixing));
    seeds
}

fn catalog_seeds() -> Vec<(String, Vec<u8>)> {
    // A real catalog, as a node writes it.
    let dir = tempfile::tempdir().unwrap();
    {
        let arena = Arc::new(pagoda_node::arena::Arena::new(4 << 20, 2 << 20).unwrap());
        let catalog = pagoda_node::catalog::Catalog::open(dir.path(), arena).unwrap();
        catalog.create("a", 1 << 20, 4096).unwrap();
        catalog.create("b", 1 << 30, 65536).unwrap();
        catalog.create("deleted", 8192, 4096).unwrap();
        catalog.delete("deleted").unwrap();
    }
    let file = std::fs::read(dir.path().join("regions.meta")).unwrap();
    let body = file[16..].to_vec();
    let flagged = br#"{"next_id":5,"regions":[{"id":1,"name":"r","size":4096,"page_size":4096,"uid":7,"recovering":true},{"id":4,"name":"m","size":2097152,"page_size":2097152,"moved":true}]}"#;
    assert_eq!(catalog::frame(&body), file);
    vec![
        ("file".into(), file),
        ("body".into(), body),
        ("flags".into(), flagged.to_vec()),
        ("empty".into(), br#"{"next_id":1,"regions":[]}"#.to_vec()),
    ]
}
