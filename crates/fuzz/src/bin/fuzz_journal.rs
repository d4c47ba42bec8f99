//! The AFL++ entry point of the `journal` target; see `crates/fuzz/README.md`.
//! Built only by `cargo afl build --features afl`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        pagoda_fuzz::journal::run(data);
    });
}
