//! The report data types that outlive a run: what `-o X.json` writes and
//! `diff`, `convert` and CI read back (census, leak and refs reports, and
//! the envelope every snapshot carries). Both [`crate::compare`] (which
//! reads and compares them) and [`crate::report`] (which renders them)
//! depend on this module; it depends on neither.
//!
//! Not here: how a report is built from a capture (the commands and
//! [`crate::report`]), or how it is drawn.

pub mod census;
pub mod envelope;
pub mod leaks;
pub mod refs;
