//! Running as root next to other users: output files that never follow a
//! link, text that never carries a target's control characters to the
//! terminal, children that die with their parent, and the access check a
//! capability-granted binary owes the real user.

pub mod access;
pub mod child;
pub mod escape;
pub mod outfile;
pub mod stdout;

pub use escape::escape_text;
pub use outfile::{write_file, OutputError, PrivateDir};
