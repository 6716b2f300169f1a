// SPDX-License-Identifier: GPL-2.0

//! Lifecycle calls from a ProcessPacket that runs in process context (a
//! channel that processes incoming packets at passive level). Such a call
//! may sleep, but Pause and Disable wait for every delivered packet, the
//! caller's own included: each is refused with `EDEADLK`, and the channel
//! goes on as before.

use core::sync::atomic::{
    AtomicI32,
    AtomicU32,
    Ordering, //
};

use kernel::{
    prelude::*,
    sync::Arc,
    time::Delta, //
};

use super::harness::{
    self,
    wait_for,
    IFACE,
    INSTANCE, //
};
use crate::{
    channel::{
        callbacks::{
            ProcessPacket,
            StateChange, //
        },
        incoming::IncomingPacket,
        Channel,
        ChannelHandle,
        Endpoint,
        State, //
    },
    transport::{
        loopback::LoopbackBus,
        Bus, //
    },
};

fn errno(r: Result) -> i32 {
    r.err().map(|e| e.to_errno()).unwrap_or(0)
}

/// A server driver that calls its channel's lifecycle functions from the
/// first packet it gets.
struct Caller {
    seen: AtomicU32,
    pause: AtomicI32,
    disable: AtomicI32,
    start: AtomicI32,
}

impl ProcessPacket for Caller {
    fn process_packet(&self, channel: &Channel, packet: IncomingPacket) {
        if self.seen.load(Ordering::Relaxed) == 0 {
            self.pause.store(errno(channel.pause()), Ordering::Relaxed);
            self.disable
                .store(errno(channel.disable()), Ordering::Relaxed);
            self.start.store(errno(channel.start()), Ordering::Relaxed);
        }
        let _ = packet.complete(&[]);
        self.seen.fetch_add(1, Ordering::Relaxed);
    }
}

impl StateChange for Caller {}

/// Answers nothing; the client only sends.
struct Quiet;

impl ProcessPacket for Quiet {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        packet.fail();
    }
}

impl StateChange for Quiet {}

/// A passive server with a [`Caller`] and a client, connected on `bus`.
fn pair(bus: &Arc<LoopbackBus>) -> Result<(ChannelHandle, ChannelHandle)> {
    let mut server = Channel::builder(Endpoint::Server, &crate::THIS_MODULE)
        .driver(Caller {
            seen: AtomicU32::new(0),
            pause: AtomicI32::new(i32::MIN),
            disable: AtomicI32::new(i32::MIN),
            start: AtomicI32::new(i32::MIN),
        })
        .vmbus_handle(Bus::Loopback(bus.clone()))
        .target_interface_id(IFACE, INSTANCE)
        .build()?;
    server.set_incoming_processing_at_passive(true);
    server.enable()?;
    let mut client = Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
        .driver(Quiet)
        .vmbus_handle(Bus::Loopback(bus.clone()))
        .target_pnp(IFACE, Some(INSTANCE))
        .build()?;
    client.enable()?;
    client.wait_for_state(State::Started, Delta::from_millis(5000))?;
    server.wait_for_state(State::Started, Delta::from_millis(5000))?;
    Ok((server, client))
}

#[kunit_tests(kmcl_passive_calls)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_disable_from_a_passive_process_packet_are_refused() -> Result {
        let bus = LoopbackBus::new()?;
        let (server, client) = pair(&bus)?;
        let caller = server.data::<Caller>().ok_or(EINVAL)?;
        harness::send(&client, b"first", true)?;
        assert!(wait_for(5000, || caller.seen.load(Ordering::Relaxed) == 1));
        assert_eq!(caller.pause.load(Ordering::Relaxed), EDEADLK.to_errno());
        assert_eq!(caller.disable.load(Ordering::Relaxed), EDEADLK.to_errno());
        assert_eq!(caller.start.load(Ordering::Relaxed), EDEADLK.to_errno());
        // Refused means nothing happened: the channel still delivers.
        assert_eq!(server.state(), State::Started);
        harness::send(&client, b"second", true)?;
        assert!(wait_for(5000, || caller.seen.load(Ordering::Relaxed) == 2));
        assert!(client.wait_sends_finished(Delta::from_millis(5000)).is_ok());
        // From the test's thread they run.
        server.pause()?;
        server.start()?;
        client.disable()?;
        server.disable()?;
        Ok(())
    }
}
