// SPDX-License-Identifier: GPL-2.0

//! KUnit suites of kmcl. They run when `kmcl.ko` is loaded into a kernel
//! built with `CONFIG_KUNIT`.

mod harness;

mod builder;
mod channel;
mod contexts;
mod contract;
mod gpadl;
mod guid;
mod hostile;
mod hv_binding;
mod hv_hostile;
mod hv_interop;
mod hv_memory;
mod hv_pipe;
mod passive;
mod pipe;
mod receive;
mod send;
mod server;
mod subchannel;
mod sync;
mod transactions;
mod typed;
mod vmbus;
mod xfer;
