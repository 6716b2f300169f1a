// SPDX-License-Identifier: GPL-2.0

//! Pipe mode against Linux's ring code: a kmcl pipe channel on a
//! `vmbus_channel` built in memory (`rust/helpers/hv_test.c`) reads the
//! host's packets through `hv_pkt_iter_first()` / `__hv_pkt_iter_next()`,
//! as the hv transport does, and checks and strips the pipe header that
//! hv_sock's host writes. hv_vmbus never binds a pipe offer to kmcl
//! (`vmbus_match()` gives hv_sock offers to the hv_sock driver only), so
//! these cases open the channel on the ring directly.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    sync::Arc, //
};

use super::{
    harness::{
        inband,
        wait_for,
        Recorder, //
    },
    hv_interop::{
        HostSide,
        TestChannel,
        RQSTOR, //
    },
    pipe::piped,
};
use crate::{
    channel::{
        Channel,
        ChannelFlags,
        ChannelHandle,
        Endpoint,
        State, //
    },
    wire::pipe,
};

/// A client channel, a pipe if `pipe`, open on a test-built hv channel.
fn hv_client(pipe: bool) -> Result<(ChannelHandle, Arc<Recorder>, HostSide)> {
    let rec = Recorder::new()?;
    let flags = if pipe {
        ChannelFlags::IS_PIPE
    } else {
        ChannelFlags::NONE
    };
    let h = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
        .process_packet_callbacks(rec.clone())
        .state_change_callbacks(rec.clone())
        .packet_pool_size(RQSTOR * 4)
        .flags(flags)
        .build()?;
    let host = TestChannel::new()?.open(&h)?;
    Ok((h, rec, host))
}

#[kunit_tests(kmcl_hv_pipe)]
mod tests {
    use super::*;

    #[test]
    fn hv_pipe_packets_from_the_host_are_stripped() -> Result {
        let (ch, rec, mut host) = hv_client(true)?;
        assert_eq!(ch.state(), State::Started);
        host.send(&ch, &inband(0, 0, &piped(pipe::TYPE_DATA, 5, b"hello")?)?)?;
        host.send(
            &ch,
            &inband(0, 0, &piped(pipe::TYPE_DATA, 9, b"123456789")?)?,
        )?;
        assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 2));
        assert_eq!(&rec.last_payload()[..], b"123456789");
        assert_eq!(rec.heads()[0], u64::from_le_bytes(*b"hello\0\0\0"));
        assert_eq!(ch.counters().malformed_packets, 0);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn hv_pipe_header_size_beyond_the_packet_is_refused() -> Result {
        let (ch, rec, mut host) = hv_client(true)?;
        host.send(&ch, &inband(0, 0, &piped(pipe::TYPE_DATA, 4096, b"abc")?)?)?;
        assert!(wait_for(2000, || ch.counters().malformed_packets == 1));
        assert_eq!(rec.received.load(Ordering::Relaxed), 0);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn hv_pipe_header_of_unknown_type_is_refused() -> Result {
        let (ch, rec, mut host) = hv_client(true)?;
        host.send(&ch, &inband(0, 0, &piped(0, 3, b"abc")?)?)?;
        assert!(wait_for(2000, || ch.counters().malformed_packets == 1));
        assert_eq!(rec.received.load(Ordering::Relaxed), 0);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn hv_pipe_packet_shorter_than_the_header_is_refused() -> Result {
        let (ch, rec, mut host) = hv_client(true)?;
        host.send(&ch, &inband(0, 0, b"")?)?;
        assert!(wait_for(2000, || ch.counters().malformed_packets == 1));
        assert_eq!(rec.received.load(Ordering::Relaxed), 0);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn hv_plain_channel_hands_the_header_bytes_through() -> Result {
        let (ch, rec, mut host) = hv_client(false)?;
        let raw = piped(pipe::TYPE_DATA, 3, b"abc\0\0\0\0\0")?;
        host.send(&ch, &inband(0, 0, &raw)?)?;
        assert!(wait_for(2000, || rec.received.load(Ordering::Relaxed) == 1));
        assert_eq!(&rec.last_payload()[..], &raw[..]);
        ch.disable()?;
        Ok(())
    }
}
