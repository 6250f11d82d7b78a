//! The demo runner.
