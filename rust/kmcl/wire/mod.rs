// SPDX-License-Identifier: GPL-2.0

//! VMBus wire formats in plain `core` Rust.
//!
//! Nothing in this module depends on the kernel crate: it is compiled into
//! `kmcl.ko` and, unchanged, into the host crate `tools/kmcl-wire`, whose
//! `cargo test` exercises it on the build machine. Every value that the peer
//! writes is treated as untrusted here.

pub mod guid;
pub mod ic;
pub mod packet;
pub mod pipe;
pub mod ring;
pub mod save;
pub mod xfer;
