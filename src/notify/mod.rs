//! Mail notifications.
