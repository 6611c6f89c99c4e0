//! The FUSE client. Not built yet: see the FUSE issue. The crate exists so the
//! workspace has its final shape.
