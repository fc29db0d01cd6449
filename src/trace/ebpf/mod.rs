//! The eBPF tracer: the programs of `src/trace/bpf/` (compiled by build.rs,
//! embedded) loaded with libbpf-rs, attached with one `uprobe_multi` session
//! link per probe site for the whole process (the link filters on the PID,
//! so threads are covered from their first instruction and there is nothing
//! per thread to open or close), records read from one BPF ring buffer.
//!
//! - [`abi`]: the Rust mirrors of `ljleak.h`;
//! - [`ring`]: the ring buffer consumer;
//! - [`session`]: load, attach, drain, counters.
//!
//! Everything lives in file descriptors of this process: links, programs
//! and maps vanish with it however it exits, which removes every probe.

pub mod abi;
pub mod ring;
pub mod session;

pub use session::{BpfError, BpfOpts, BpfSession, Event};
