//! The exit codes of every command, in one place (the README has the same table).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; `doctor`: every check passed; `topology plan`: nothing to change |
//! | 1 | the command failed (the reason is on stderr) |
//! | 2 | bad usage (unknown option, missing argument) |
//! | 3 | needs attention: `doctor` warnings, `topology plan` changes to apply |
//! | 4 | checks failed: `doctor` failures, `plan`/`apply` declarations that fail, `status` of a missing work queue |
//! | 5 | could not connect to the broker (`doctor`, `status`, `topology`) |
//! | 130 | `dlq replay`/`move` interrupted by Ctrl-C |

/// Warnings, or changes to apply.
pub(crate) const ATTENTION: u8 = 3;
/// A check or a declaration failed.
pub(crate) const FAILED: u8 = 4;
/// No connection to the broker.
pub(crate) const UNREACHABLE: u8 = 5;
