//! Output formats. Each report is a serializable struct (the JSON form, whose
//! field names are stable: later commands diff these files) plus a text
//! rendering compatible with the stap++ tool it replaces.

pub mod census;
pub mod diff;
pub mod envelope;
pub mod flame;
pub mod heapsnapshot;
pub mod leaks;
pub mod mem;
pub mod output;
pub mod plot;
pub mod pprof;
pub mod refs;
pub mod threads;
pub mod watch;
pub mod watch_mem;
