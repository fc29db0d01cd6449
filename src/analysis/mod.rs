//! Analyses over a copied heap: the object graph (who references whom),
//! dominators, retained sizes, leak suspects and retention paths.
//!
//! Not here: reading memory or LuaJIT layouts (`luajit`), formatting
//! (`report`).

pub mod dominators;
pub mod graph;
pub mod retained;
pub mod retention;
