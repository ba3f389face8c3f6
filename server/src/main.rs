//! The `keyhold` binary: the server and its operator CLI.

// jemalloc instead of glibc's malloc. A Raft snapshot build or restore allocates the whole data
// set several times over for a moment (every entry, then the encoded snapshot); glibc kept
// those pages in its per-thread arenas (measured with tests/bench/run: nodes at 100,000
// secrets held 650-870 MiB after three snapshot builds, 2.2-2.6 GiB after a restore).
// jemalloc's background threads purge freed pages after its `dirty_decay_ms`, 1 s as built here
// (with two arenas: .cargo/config.toml, which says what that changed).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    keyhold::cli::run(std::env::args_os().collect())
}
