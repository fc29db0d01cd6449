//! ljleak: find memory leaks in running OpenResty / LuaJIT processes without
//! SystemTap.
//!
//! Layers, bottom up: [`target`] (maps, memory, pausing, ELF files),
//! [`luajit`] (layouts, finding the VM, object sizes, the heap walk),
//! [`capture`] (a consistent copy of a live heap), [`report`] (formats), and
//! [`cmd`] (the commands behind the CLI in [`cli`]).
#![deny(missing_docs)]

pub mod analysis;
pub mod capture;
pub mod cli;
pub mod cmd;
pub mod compare;
pub mod error;
pub mod inthash;
pub mod leaks;
pub mod luajit;
pub mod mem;
pub mod model;
pub mod offline;
pub mod report;
pub mod safety;
pub mod serve;
pub mod target;
pub mod trace;
pub mod units;
pub mod unwind;
