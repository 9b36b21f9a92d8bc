//! Documented limits on what users may ask for (docs/user-guide.md repeats them).

/// Most repetitions (ranks) one request may have.
pub const MAX_REPETITIONS: u32 = 1_000_000;
/// Most parameters one request may pass to its program.
pub const MAX_PARAMETERS: usize = 256;
/// Longest single parameter, in bytes.
pub const MAX_PARAMETER_BYTES: usize = 4096;
/// Most retries after the user's program exits with a non-zero code.
pub const MAX_RETRIES: u32 = 10;
/// Attempts that ended through no fault of the program (node lost, executor
/// error) before the run is declared failed; bounds every run's life.
pub const MAX_INFRA_ATTEMPTS: u32 = 8;
/// Longest process name or entry command, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most rooms or shared files one request may name.
pub const MAX_LIST_ITEMS: usize = 64;
