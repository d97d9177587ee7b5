//! TODO(helper): see issue 3.
