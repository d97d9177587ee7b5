//! Input modes.
