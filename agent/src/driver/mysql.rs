//! mysql driver (to be written).
