//! Process exit codes, following sysexits(3) where one fits. Documented in the README.

/// Success.
pub const OK: i32 = 0;
/// A job of the sweep failed (`liandan wait`), or a generic failure.
pub const FAILURE: i32 = 1;
/// Bad command-line usage (the CLI maps clap's parse errors to it too).
pub const USAGE: i32 = 64;
/// The input data (a sweep file) is invalid.
pub const DATAERR: i32 = 65;
/// An input file could not be opened.
pub const NOINPUT: i32 = 66;
/// The sweep, job or worker named does not exist.
pub const NOTFOUND: i32 = 67;
/// The coordinator could not be reached.
pub const UNAVAILABLE: i32 = 69;
/// An internal error in this program.
pub const SOFTWARE: i32 = 70;
/// An I/O error (disk full, failed fsync).
pub const IOERR: i32 = 74;
/// The request was refused (permission, authentication).
pub const NOPERM: i32 = 77;
/// The configuration is invalid. systemd units use `RestartPreventExitStatus=78`.
pub const CONFIG: i32 = 78;
/// Interrupted by Ctrl-C.
pub const INTERRUPTED: i32 = 130;
