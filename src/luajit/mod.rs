//! The LuaJIT model: layouts per build, finding the VM, object sizes, the
//! heap walk and the census built on it.

pub mod backtrace;
pub mod census;
pub mod ctype;
pub mod dwarf;
pub mod fields;
pub mod frames;
pub mod funcname;
pub mod layout;
pub mod locate;
pub mod names;
pub mod refnames;
pub mod refs;
pub mod threads;
pub mod vm;
pub mod walk;

pub use census::Census;
pub use fields::Variant;
pub use layout::{Layout, LayoutSource};
pub use locate::{find_vm, FoundVm, LocateOpts, Method};
pub use vm::Vm;
