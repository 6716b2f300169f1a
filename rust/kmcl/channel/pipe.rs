// SPDX-License-Identifier: GPL-2.0

//! Pipe mode (`ChannelFlags::IS_PIPE` clients, `ServerFlags::OFFER_AS_PIPE`
//! servers): every in-band packet's data is preceded on the wire by the
//! pipe header of `wire/pipe.rs`. The transport adds it on send; the drain
//! checks and strips it here, so the driver sends and receives its own
//! bytes. kmcl implements message mode: one send is one message, delivered
//! whole. Documentation/api.rst, "Pipe mode".

use kernel::prelude::*;

use super::{
    config::Config,
    rx::RxState,
    Channel,
    ChannelFlags,
    Endpoint,
    ServerFlags,
    State, //
};
use crate::wire::pipe;

/// Pipe modes of [`ChannelBuilder::pipe_mode`](super::ChannelBuilder::pipe_mode)
/// (`VMBUS_PIPE_TYPE_*`).
pub mod pipe_mode {
    /// Byte mode: a stream, whose packet boundaries need not be kept. Not
    /// implemented: `EOPNOTSUPP`.
    pub const BYTE: u32 = crate::wire::pipe::MODE_BYTE;
    /// Message mode, the default: each send arrives as one packet, whole.
    pub const MESSAGE: u32 = crate::wire::pipe::MODE_MESSAGE;
}

/// Whether a channel of `endpoint` configured with `cfg` is a pipe: a
/// client with [`ChannelFlags::IS_PIPE`], a server with
/// [`ServerFlags::OFFER_AS_PIPE`] (or the channel flag).
fn cfg_is_pipe(cfg: &Config, endpoint: Endpoint) -> bool {
    cfg.flags.contains(ChannelFlags::IS_PIPE)
        || (endpoint == Endpoint::Server && cfg.server_flags.contains(ServerFlags::OFFER_AS_PIPE))
}

impl Channel {
    /// Whether the channel is a pipe (see [`cfg_is_pipe`]).
    pub(crate) fn is_pipe(&self) -> bool {
        cfg_is_pipe(&self.inner.lock().cfg, self.endpoint)
    }

    /// Sets up the receive state of an Enable for pipe mode: the drain
    /// strips the header, and a packet may be a header longer than the
    /// largest message.
    pub(super) fn prepare_pipe_rx(&self, rx: &mut RxState, cfg: &Config) {
        rx.pipe = cfg_is_pipe(cfg, self.endpoint);
        if rx.pipe {
            rx.limits.max_payload = rx
                .limits
                .max_payload
                .saturating_add(pipe::HEADER_SIZE as u32);
        }
    }

    /// The pipe mode of a pipe channel (`VMBUS_PIPE_TYPE_*`), while
    /// Disabled (else `EINVAL`): [`pipe_mode::MESSAGE`], the default, is
    /// the only one implemented; [`pipe_mode::BYTE`] fails with
    /// `EOPNOTSUPP`, any other value with `EINVAL`.
    pub(crate) fn init_set_pipe_mode(&self, mode: u32) -> Result {
        if self.inner.lock().state != State::Disabled {
            return Err(EINVAL);
        }
        match mode {
            pipe_mode::MESSAGE => Ok(()),
            pipe_mode::BYTE => Err(EOPNOTSUPP),
            _ => Err(EINVAL),
        }
    }
}

/// For the drain: the bounds `(start, end)` in the packet buffer of the
/// data of a packet whose payload is `buf[offset..len]`. On a pipe channel
/// (`pipe`) an in-band packet's payload starts with the pipe header, which
/// is checked and left out; other packets are unchanged.
#[inline(always)]
pub(super) fn strip(
    pipe: bool,
    in_band: bool,
    buf: &[u8],
    offset: usize,
    len: usize,
) -> core::result::Result<(usize, usize), pipe::PipeError> {
    if !pipe || !in_band {
        return Ok((offset, len));
    }
    strip_header(buf, offset, len)
}

/// The pipe header of [`strip`], checked and left out.
#[inline(never)]
fn strip_header(
    buf: &[u8],
    offset: usize,
    len: usize,
) -> core::result::Result<(usize, usize), pipe::PipeError> {
    let n = pipe::parse(buf.get(offset..len).ok_or(pipe::PipeError::Short)?)?;
    let start = offset + pipe::HEADER_SIZE;
    Ok((start, start + n))
}
