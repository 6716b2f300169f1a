// SPDX-License-Identifier: GPL-2.0

//! Pipe mode over loopback: `ChannelFlags::IS_PIPE` clients and
//! `OFFER_AS_PIPE` servers, the pipe header on the wire, message mode, and
//! a peer's bad headers.

use core::sync::atomic::Ordering;

use kernel::{
    prelude::*,
    time::Delta, //
};

use super::harness::{
    self,
    inband,
    wait_for,
    Ev,
    Pair,
    Recorder, //
};
use crate::{
    channel::{
        outgoing::SendFlags,
        pipe::pipe_mode,
        Channel,
        ChannelBuilder,
        ChannelFlags,
        Endpoint,
        ServerFlags,
        State, //
    },
    wire::pipe,
};

/// Marks each end of a pair as a pipe: the client by its channel flag,
/// the server by its offer flag.
pub(super) fn as_pipe(endpoint: Endpoint, b: ChannelBuilder) -> ChannelBuilder {
    match endpoint {
        Endpoint::Client => b.flags(ChannelFlags::IS_PIPE),
        Endpoint::Server => {
            b.server_flags(ServerFlags::LOOPBACK_OFFER | ServerFlags::OFFER_AS_PIPE)
        }
    }
}

/// In-band packet data: a pipe header of `ty` and `size`, then `data`.
pub(super) fn piped(ty: u32, size: u32, data: &[u8]) -> Result<KVec<u8>> {
    let mut v = KVec::new();
    v.extend_from_slice(&ty.to_le_bytes(), GFP_KERNEL)?;
    v.extend_from_slice(&size.to_le_bytes(), GFP_KERNEL)?;
    v.extend_from_slice(data, GFP_KERNEL)?;
    Ok(v)
}

fn pipe_pair() -> Result<Pair> {
    let mut p = Pair::new(as_pipe)?;
    p.up()?;
    Ok(p)
}

fn malformed(ch: &Channel) -> u64 {
    ch.counters().malformed_packets
}

#[kunit_tests(kmcl_pipe)]
mod tests {
    use super::*;

    #[test]
    fn pipe_pair_delivers_exactly_the_bytes_sent_both_ways() -> Result {
        let p = pipe_pair()?;
        harness::send(&p.client, b"hello", false)?;
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == 1));
        // Exactly five bytes: the header's size, not the padded payload.
        assert_eq!(&p.srec.last_payload()[..], b"hello");
        harness::send(&p.server, b"0123456789abc", false)?;
        assert!(wait_for(2000, || p.crec.received.load(Ordering::Relaxed) == 1));
        assert_eq!(&p.crec.last_payload()[..], b"0123456789abc");
        assert_eq!(malformed(&p.client) + malformed(&p.server), 0);
        Ok(())
    }

    #[test]
    fn pipe_message_mode_keeps_each_send_one_packet() -> Result {
        let p = pipe_pair()?;
        let sizes = [1usize, 8, 13, 0, 16];
        let msg = [0x5au8; 16];
        for n in sizes {
            harness::send(&p.client, &msg[..n], false)?;
        }
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == 5));
        // The last message, 16 bytes, whole; one packet per send.
        assert_eq!(&p.srec.last_payload()[..], &msg[..]);
        let heads = p.srec.heads();
        assert_eq!(heads.len(), 5);
        assert_eq!(heads[0], 0x5a);
        assert_eq!(heads[3], 0);
        Ok(())
    }

    #[test]
    fn pipe_receive_strips_a_header_the_peer_wrote() -> Result {
        let p = pipe_pair()?;
        // Raw bytes, as Linux's hv_sock frames them: type 1, size 3.
        p.server
            .inject_raw(&inband(0, 0, &piped(pipe::TYPE_DATA, 3, b"abc")?)?)?;
        assert!(wait_for(2000, || p.crec.received.load(Ordering::Relaxed) == 1));
        assert_eq!(&p.crec.last_payload()[..], b"abc");
        assert_eq!(malformed(&p.client), 0);
        Ok(())
    }

    #[test]
    fn pipe_header_larger_than_its_packet_is_malformed() -> Result {
        let p = pipe_pair()?;
        p.server
            .inject_raw(&inband(0, 0, &piped(pipe::TYPE_DATA, 100, b"12345678")?)?)?;
        assert!(wait_for(2000, || malformed(&p.client) == 1));
        assert_eq!(p.crec.received.load(Ordering::Relaxed), 0);
        Ok(())
    }

    #[test]
    fn pipe_header_far_smaller_than_its_packet_is_malformed() -> Result {
        let p = pipe_pair()?;
        // 16 bytes carried, 4 announced: more than the padding.
        p.server
            .inject_raw(&inband(0, 0, &piped(pipe::TYPE_DATA, 4, &[7u8; 16])?)?)?;
        assert!(wait_for(2000, || malformed(&p.client) == 1));
        assert_eq!(p.crec.received.load(Ordering::Relaxed), 0);
        Ok(())
    }

    #[test]
    fn pipe_header_of_unknown_type_is_malformed() -> Result {
        let p = pipe_pair()?;
        p.server.inject_raw(&inband(0, 0, &piped(2, 3, b"abc")?)?)?;
        assert!(wait_for(2000, || malformed(&p.client) == 1));
        assert_eq!(p.crec.received.load(Ordering::Relaxed), 0);
        Ok(())
    }

    #[test]
    fn pipe_message_of_the_maximum_packet_size_fits() -> Result {
        let mut p = Pair::new(|e, b| as_pipe(e, b).maximum_packet_size(64))?;
        p.up()?;
        let msg = [0x11u8; 64];
        harness::send(&p.client, &msg, false)?;
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == 1));
        assert_eq!(&p.srec.last_payload()[..], &msg[..]);
        assert_eq!(malformed(&p.server), 0);
        Ok(())
    }

    #[test]
    fn pipe_client_and_plain_server_do_not_connect() -> Result {
        // A pipe client and a plain offer, then a plain client and a pipe
        // offer: each client reports EPROTOTYPE as a PnP failure.
        for client_pipe in [true, false] {
            let mut p = Pair::new(|e, b| {
                if (e == Endpoint::Client) == client_pipe {
                    as_pipe(e, b)
                } else {
                    b
                }
            })?;
            p.server.enable()?;
            p.client.enable()?;
            assert!(wait_for(3000, || p.crec.count(Ev::PnpFailure) == 1));
            assert_eq!(p.client.state(), State::Enabled);
            assert_eq!(p.server.state(), State::Enabled);
            assert_eq!(p.srec.count(Ev::Opened), 0);
        }
        Ok(())
    }

    #[test]
    fn pipe_mode_message_is_accepted_and_byte_refused() -> Result {
        // MESSAGE, the default, builds on both ends and the pair connects
        // and carries a message.
        let mut p = Pair::new(|e, b| as_pipe(e, b).pipe_mode(pipe_mode::MESSAGE))?;
        p.up()?;
        harness::send(&p.client, b"msg", false)?;
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == 1));
        assert_eq!(&p.srec.last_payload()[..], b"msg");
        // BYTE is not implemented, any other value is not a mode, on
        // either end.
        let rec = Recorder::new()?;
        for e in [Endpoint::Client, Endpoint::Server] {
            let r = as_pipe(e, harness::builder(&p.bus, e, &rec))
                .pipe_mode(pipe_mode::BYTE)
                .build();
            assert!(matches!(r, Err(err) if err == EOPNOTSUPP));
            let r = as_pipe(e, harness::builder(&p.bus, e, &rec))
                .pipe_mode(7)
                .build();
            assert!(matches!(r, Err(err) if err == EINVAL));
        }
        Ok(())
    }

    #[test]
    fn pipe_synchronous_request_carries_the_header_and_gets_its_completion() -> Result {
        let p = pipe_pair()?;
        let mut resp = [0u8; 16];
        let n = p.client.send_synchronous_request(
            b"quest",
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(2000)),
        )?;
        // The server's driver saw the five bytes; its completion, which has
        // no pipe header, came back padded as on a plain channel.
        assert_eq!(&p.srec.last_payload()[..], b"quest");
        assert!(harness::padded_eq(&resp[..n], b"quest"));
        assert_eq!(malformed(&p.client) + malformed(&p.server), 0);
        Ok(())
    }

    #[test]
    fn plain_channel_leaves_header_shaped_bytes_alone() -> Result {
        let p = Pair::connected()?;
        let raw = piped(pipe::TYPE_DATA, 100, b"")?;
        harness::send(&p.client, &raw, false)?;
        assert!(wait_for(2000, || p.srec.received.load(Ordering::Relaxed) == 1));
        assert_eq!(&p.srec.last_payload()[..], &raw[..]);
        assert_eq!(malformed(&p.server), 0);
        Ok(())
    }
}
