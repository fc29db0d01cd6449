//! The snapshot envelope, now in [`crate::model::envelope`] (re-exported
//! here for existing paths).

pub use crate::model::envelope::*;
