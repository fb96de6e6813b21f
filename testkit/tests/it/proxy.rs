//! FaultProxy: cut, refuse, count.
