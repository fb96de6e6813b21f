//! sqlite driver (to be written).
