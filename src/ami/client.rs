//! TODO(helper): see issue 2.
