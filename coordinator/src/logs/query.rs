//! skiff logs
