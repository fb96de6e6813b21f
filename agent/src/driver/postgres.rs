//! postgres driver (to be written).
