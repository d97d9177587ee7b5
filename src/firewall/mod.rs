//! TODO(helper): see issue 4.
