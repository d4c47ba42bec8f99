//! `Client::open_or_create_region` against a real node on loopback: create
//! once, open after, refuse another shape, and survive racing creators.

mod common;

use std::sync::{Arc, Barrier};

use pagoda::{ClientError, ErrorCode, RegionOptions};

const PAGE: u32 = 4096;

// Guards the three outcomes: a missing region is created with the shape
// asked for, an existing one is opened with its data, and one of another
// size or page size is refused naming both shapes, left as it was.
#[test]
fn creates_opens_and_refuses_another_shape() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    let region = client
        .open_or_create_region("state", 1 << 20, PAGE, RegionOptions::default())
        .unwrap();
    assert_eq!((region.len(), region.page_size()), (1 << 20, PAGE as usize));
    region.write_value(100, &0xfeedu64).unwrap();
    drop(region); // flushes

    let region = client
        .open_or_create_region("state", 1 << 20, PAGE, RegionOptions::default())
        .unwrap();
    assert_eq!(region.read_value::<u64>(100).unwrap(), 0xfeed);
    drop(region);

    let error = client
        .open_or_create_region("state", 2 << 20, PAGE, RegionOptions::default())
        .unwrap_err();
    match &error {
        ClientError::RegionShapeMismatch {
            name,
            size,
            page_size,
            size_asked,
            page_size_asked,
        } => {
            assert_eq!(name, "state");
            assert_eq!((*size, *page_size), (1 << 20, PAGE));
            assert_eq!((*size_asked, *page_size_asked), (2 << 20, PAGE));
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("1048576") && message.contains("2097152"),
        "{message}"
    );
    let error = client
        .open_or_create_region("state", 1 << 20, 2 * PAGE, RegionOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::RegionShapeMismatch {
                page_size: PAGE,
                page_size_asked: 8192,
                ..
            }
        ),
        "{error}"
    );
    // The refusals changed nothing, and gave back the writer role.
    let regions = client.list_regions().unwrap();
    assert_eq!(regions.len(), 1);
    assert_eq!(regions[0].size, 1 << 20);
    let region = client
        .open_region("state", RegionOptions::default())
        .unwrap();
    assert_eq!(region.read_value::<u64>(100).unwrap(), 0xfeed);
}

// Guards error passing: a create the node refuses (a size that is not a
// multiple of the page size) comes back as the node's error, and no region
// is left behind.
#[test]
fn a_refused_create_reports_the_nodes_error() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    let error = client
        .open_or_create_region("odd", 10_000, PAGE, RegionOptions::default())
        .unwrap_err();
    assert!(error.code().is_some(), "the node's refusal: {error}");
    assert_ne!(error.code(), Some(ErrorCode::RegionNotFound), "{error}");
    assert!(client.list_regions().unwrap().is_empty());
}

// Guards the race: threads sharing one client (one connection, so one
// writer role) call it at once for the same new name; where several see
// the region missing and create it, the losers' `RegionExists` must turn
// into an open, so every call succeeds and one region exists.
#[test]
fn racing_callers_of_one_client_all_open_the_one_region() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 256 << 20, None);
    let client = common::client(&node);
    let threads = 4;
    for round in 0..20 {
        let name = format!("raced-{round}");
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let (client, barrier, name) = (client.clone(), barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let region = client
                        .open_or_create_region(&name, 1 << 20, PAGE, RegionOptions::default())
                        .unwrap_or_else(|e| panic!("{name}, thread {thread}: {e}"));
                    // Each on its own page: the handles' caches are separate.
                    let offset = thread as u64 * PAGE as u64;
                    region.write_value(offset, &(thread as u64 + 1)).unwrap();
                    region.flush().unwrap();
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        // Every handle wrote to the one region.
        let region = client.open_region(&name, RegionOptions::default()).unwrap();
        for thread in 0..threads {
            let offset = thread as u64 * PAGE as u64;
            assert_eq!(region.read_value::<u64>(offset).unwrap(), thread as u64 + 1);
        }
    }
    let regions = client.list_regions().unwrap();
    assert_eq!(regions.len(), 20);
}

// Guards the race between separate clients: each either opens the region or
// is told another client holds its writer role (`WriterBusy`); none sees
// `RegionExists` or `RegionNotFound`, and the region is created once.
#[test]
fn racing_clients_create_the_region_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 256 << 20, None);
    let clients = 4;
    for round in 0..10 {
        let name = format!("contended-{round}");
        let barrier = Arc::new(Barrier::new(clients));
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let client = common::client(&node);
                let (barrier, name) = (barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let result = client.open_or_create_region(
                        &name,
                        1 << 20,
                        PAGE,
                        RegionOptions::default(),
                    );
                    // Hold the region until every client has tried.
                    barrier.wait();
                    result.map(drop)
                })
            })
            .collect();
        let mut opened = 0;
        for handle in handles {
            match handle.join().unwrap() {
                Ok(()) => opened += 1,
                Err(error) => assert_eq!(error.code(), Some(ErrorCode::WriterBusy), "{error}"),
            }
        }
        assert_eq!(
            opened, 1,
            "{name}: exactly one client holds the writer role"
        );
    }
    let client = common::client(&node);
    assert_eq!(client.list_regions().unwrap().len(), 10);
}
