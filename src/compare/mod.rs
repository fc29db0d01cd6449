//! Comparison: reading snapshot files back, deltas between two censuses or
//! two leak snapshots or two folded-stack profiles, CI gates, and trends over time (`watch`).
//! Rendering is in [`crate::report`]; the commands are in [`crate::cmd`].

pub mod census_diff;
pub mod folded;
pub mod gate;
pub mod leak_diff;
pub mod mem_diff;
pub mod mem_trend;
pub mod snapshot;
pub mod trend;
