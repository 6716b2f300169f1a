// SPDX-License-Identifier: GPL-2.0

//! Echo VSC: a kmcl client of the echo VSP.
//!
//! At load it opens instance 1 of the echo interface on kmcl's loopback bus
//! and exercises it: synchronous requests, asynchronous sends finished by a
//! completion routine (more than the VSP's quota at once), and a GPA-direct
//! send whose pages the VSP checksums. It reports its counters and keeps the
//! channel open until unload. Its KUnit suite does the same on instance 2.

use core::sync::atomic::{
    AtomicU32,
    AtomicU64,
    Ordering, //
};

use kernel::{prelude::*, sync::Arc, time::Delta};

use kmcl::{
    loopback,
    Bus,
    Channel,
    ChannelHandle,
    Endpoint,
    Guid,
    IncomingPacket,
    Mdl,
    Packet,
    PacketCompletion,
    ProcessPacket,
    SendFlags,
    State,
    StateChange, //
};

module! {
    type: EchoVsc,
    name: "echo_vsc",
    authors: ["The kmcl developers"],
    description: "kmcl sample: echo VSC over the loopback transport",
    license: "GPL",
}

/// This module: the owner of its channels.
static THIS_MODULE: ThisModule = <EchoVsc as kernel::ModuleMetadata>::THIS_MODULE;

const ECHO_TYPE: Guid = Guid::from_str_const("2b1c9f3e-4d5a-4e6b-8c7d-9e0f1a2b3c4d");

/// What the asynchronous sends saw: the typed completion of their packets.
#[derive(Default)]
struct Counters {
    completed: AtomicU32,
    echoed: AtomicU32,
    failed: AtomicU32,
    checksum: AtomicU64,
}

impl PacketCompletion for Counters {
    fn completed(&self, packet: Packet, status: Result, response: &[u8]) {
        if status.is_ok() {
            if packet.payload() == response {
                self.echoed.fetch_add(1, Ordering::Relaxed);
            }
            if response.len() == 16 {
                let mut s = [0u8; 8];
                s.copy_from_slice(&response[..8]);
                self.checksum
                    .store(u64::from_le_bytes(s), Ordering::Relaxed);
            }
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
    }
}

struct Client;

impl ProcessPacket for Client {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        // The VSP sends nothing unsolicited.
        packet.fail();
    }
}

impl StateChange for Client {}

/// Opens instance `instance` of the echo interface.
fn open(instance: u8) -> Result<ChannelHandle> {
    open_on(Bus::Loopback(loopback::default_bus()?), instance)
}

/// Opens instance `instance` of the echo interface on `bus`.
fn open_on(bus: Bus, instance: u8) -> Result<ChannelHandle> {
    let mut inst = [0u8; 16];
    inst[15] = instance;
    let mut h = Channel::builder(Endpoint::Client, &THIS_MODULE)
        .friendly_name(c"echo-vsc")
        .driver(Client)
        .vmbus_handle(bus)
        .target_pnp(ECHO_TYPE, Some(Guid(inst)))
        .build()?;
    h.enable()?;
    h.wait_for_state(State::Started, Delta::from_millis(5000))?;
    Ok(h)
}

/// Synchronous requests: returns how many came back intact.
fn sync_requests(ch: &Channel, n: u64) -> Result<u64> {
    let mut ok = 0;
    for i in 0..n {
        let req = (0xec40_0000 + i).to_le_bytes();
        let mut resp = [0u8; 8];
        let len = ch.send_synchronous_request(
            &req,
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(2000)),
        )?;
        if resp[..len] == req {
            ok += 1;
        }
    }
    Ok(ok)
}

/// `n` asynchronous sends at once; returns once all completed.
fn async_sends(ch: &Channel, c: &Arc<Counters>, n: u32) -> Result {
    let before = c.completed.load(Ordering::Relaxed);
    for i in 0..n {
        let mut p = ch.packet_allocate()?;
        p.set_completion(c.clone());
        p.send(&u64::from(i).to_le_bytes(), SendFlags::WAIT_FOR_COMPLETION)
            .map_err(|e| e.error)?;
    }
    ch.wait_sends_finished(Delta::from_millis(5000))?;
    if c.completed.load(Ordering::Relaxed) != before + n {
        return Err(EIO);
    }
    Ok(())
}

/// A GPA-direct send over two pages; returns the VSP's checksum and ours.
fn external_send(ch: &Channel, c: &Arc<Counters>) -> Result<(u64, u64)> {
    // 6000 bytes from offset 100 of the first page, into the second one
    // where pages are 4 KiB; byte `i` holds `7 * i` (mod 256).
    let (off, len) = (100u32, 6000usize);
    let mut bytes = KVec::with_capacity(len, GFP_KERNEL)?;
    let mut expect = 0u64;
    for i in 0..len {
        let b = (i as u8).wrapping_mul(7);
        bytes.push(b, GFP_KERNEL)?;
        expect = expect.wrapping_add(u64::from(b));
    }
    let mdl = Mdl::from_bytes_at(off, &bytes)?;
    let before = c.completed.load(Ordering::Relaxed);
    let mut p = ch.packet_allocate()?;
    p.set_completion(c.clone());
    p.send_with_external_mdl(b"checksum", mdl, SendFlags::WAIT_FOR_COMPLETION)
        .map_err(|e| e.error)?;
    ch.wait_sends_finished(Delta::from_millis(5000))?;
    if c.completed.load(Ordering::Relaxed) != before + 1 {
        return Err(EIO);
    }
    Ok((c.checksum.load(Ordering::Relaxed), expect))
}

struct EchoVsc {
    chan: ChannelHandle,
}

impl kernel::Module for EchoVsc {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // Each packet holds a reference to the counters while it is in
        // flight: their order against the channel does not matter.
        let counters = Arc::new(Counters::default(), GFP_KERNEL)?;
        let chan = open(1)?;
        let sync_ok = sync_requests(&chan, 16)?;
        async_sends(&chan, &counters, 64)?;
        let (theirs, ours) = external_send(&chan, &counters)?;
        let checksum = if theirs == ours { "matches" } else { "DIFFERS" };
        pr_info!(
            "{} of 16 synchronous requests echoed; {} of 64 asynchronous sends echoed; GPA-direct checksum {}\n",
            sync_ok,
            counters.echoed.load(Ordering::Relaxed),
            checksum
        );
        Ok(EchoVsc { chan })
    }
}

impl Drop for EchoVsc {
    fn drop(&mut self) {
        // Finishes every send before the module's code goes.
        if let Err(e) = self.chan.disable() {
            pr_err!("disable failed: {:?}\n", e);
        }
    }
}

#[cfg(CONFIG_KUNIT)]
#[kunit_tests(kmcl_sample_echo)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_requests_are_echoed() -> Result {
        let ch = open(2)?;
        assert_eq!(sync_requests(&ch, 8)?, 8);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn asynchronous_sends_beyond_the_quota_all_complete() -> Result {
        let c = Arc::new(Counters::default(), GFP_KERNEL)?;
        let ch = open(2)?;
        // The VSP's quota is 4; 32 at once must all come back, echoed.
        async_sends(&ch, &c, 32)?;
        assert_eq!(c.echoed.load(Ordering::Relaxed), 32);
        ch.disable()?;
        Ok(())
    }

    #[test]
    fn gpa_direct_pages_reach_the_vsp() -> Result {
        let c = Arc::new(Counters::default(), GFP_KERNEL)?;
        let ch = open(2)?;
        let (theirs, ours) = external_send(&ch, &c)?;
        assert_eq!(theirs, ours);
        ch.disable()?;
        Ok(())
    }
}

/// The echo VSC against a test host that misbehaves, through
/// `kmcl::testing`: what a VSC author's suite looks like.
#[cfg(CONFIG_KUNIT)]
#[kunit_tests(kmcl_sample_echo_faults)]
mod faults {
    use super::*;
    use core::sync::atomic::AtomicBool;
    use kernel::{
        new_condvar, new_spinlock_irq,
        sync::{
            CondVar,
            CondVarTimeoutResult,
            SpinLockIrq, //
        },
        time::msecs_to_jiffies,
    };
    use kmcl::{
        loopback::LoopbackBus,
        testing::{
            self,
            packet::{
                Descriptor,
                TYPE_DATA_INBAND, //
            },
            RingField,
            Rings,
            Signals, //
        },
    };

    /// The instance the test host offers on its private bus.
    const INSTANCE: u8 = 9;

    /// A test host: echoes each request, or holds it until released.
    #[pin_data]
    struct Host {
        #[pin]
        held: SpinLockIrq<KVec<IncomingPacket>>,
        #[pin]
        arrived: CondVar,
        hold: AtomicBool,
    }

    impl Host {
        fn new() -> Result<Arc<Host>> {
            Arc::pin_init(
                try_pin_init!(Host {
                    held <- new_spinlock_irq!(KVec::with_capacity(8, GFP_KERNEL)?,
                        "echo_vsc::faults::Host::held"),
                    arrived <- new_condvar!("echo_vsc::faults::Host::arrived"),
                    hold: AtomicBool::new(false),
                }),
                GFP_KERNEL,
            )
        }

        /// Waits until `n` requests are held, for at most five seconds.
        fn wait_held(&self, n: usize) -> Result {
            let mut left = msecs_to_jiffies(5000);
            let mut g = self.held.lock();
            while g.len() < n {
                match self.arrived.wait_interruptible_timeout(&mut g, left) {
                    CondVarTimeoutResult::Woken { jiffies } => left = jiffies,
                    CondVarTimeoutResult::Timeout => return Err(ETIMEDOUT),
                    CondVarTimeoutResult::Signal { .. } => return Err(ERESTARTSYS),
                }
            }
            Ok(())
        }

        /// Fails every held request.
        fn release(&self) {
            self.hold.store(false, Ordering::Relaxed);
            let held = core::mem::take(&mut *self.held.lock());
            for p in held {
                p.fail();
            }
        }
    }

    impl ProcessPacket for Host {
        fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
            if self.hold.load(Ordering::Relaxed) {
                let mut g = self.held.lock();
                if let Err(e) = g.push_within_capacity(packet) {
                    drop(g);
                    e.0.fail();
                    return;
                }
                drop(g);
                self.arrived.notify_all();
                return;
            }
            let mut buf = [0u8; 64];
            let d = packet.data();
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            let _ = packet.complete(&buf[..n]);
        }
    }

    /// The echo VSC connected to a test host on a private bus.
    struct Fixture {
        vsc: ChannelHandle,
        host_chan: ChannelHandle,
        host: Arc<Host>,
    }

    impl Fixture {
        fn new() -> Result<Fixture> {
            let bus = LoopbackBus::new()?;
            let host = Host::new()?;
            let mut inst = [0u8; 16];
            inst[15] = INSTANCE;
            let mut s = Channel::builder(Endpoint::Server, &THIS_MODULE)
                .process_packet_callbacks(host.clone())
                .vmbus_handle(Bus::Loopback(bus.clone()))
                .target_interface_id(ECHO_TYPE, Guid(inst))
                .build()?;
            s.enable()?;
            let vsc = open_on(Bus::Loopback(bus), INSTANCE)?;
            // What the opening queued (the first look at the ring) runs
            // now, not in the middle of a test.
            testing::flush();
            Ok(Fixture {
                vsc,
                host_chan: s,
                host,
            })
        }

        /// One asynchronous send of the VSC, completed into `c`.
        fn send(&self, c: &Arc<Counters>) -> Result {
            let mut p = self.vsc.packet_allocate()?;
            p.set_completion(c.clone());
            p.send(b"request", SendFlags::WAIT_FOR_COMPLETION)
                .map_err(|e| e.error)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.host.release();
            if let Err(e) = self.vsc.disable() {
                pr_err!("disable failed: {:?}\n", e);
            }
            if let Err(e) = self.host_chan.disable() {
                pr_err!("disable failed: {:?}\n", e);
            }
        }
    }

    /// A packet whose payload offset points into its own descriptor.
    fn malformed() -> [u8; 24] {
        let d = Descriptor {
            ty: TYPE_DATA_INBAND,
            offset8: 1,
            len8: 3,
            flags: 0,
            trans_id: 1,
        };
        let mut b = [0u8; 24];
        b[..16].copy_from_slice(&d.encode());
        b
    }

    #[test]
    fn a_malformed_packet_from_the_host_is_refused_and_counted() -> Result {
        let f = Fixture::new()?;
        testing::write_raw(&f.host_chan, &malformed())?;
        testing::flush();
        let c: testing::Counters = f.vsc.counters();
        assert_eq!(c.malformed_packets, 1);
        assert_eq!(c.packets_received, 0);
        Ok(())
    }

    #[test]
    fn a_write_index_outside_the_ring_stops_the_queue() -> Result {
        let f = Fixture::new()?;
        let rings = Rings::of(&f.vsc)?;
        // The ring the host writes is the VSC's incoming ring.
        rings.set(
            Endpoint::Server,
            RingField::WriteIndex,
            rings.data_size() + 8,
        );
        rings.signal(Endpoint::Client)?;
        testing::flush();
        assert_eq!(f.vsc.counters().malformed_packets, 1);
        Ok(())
    }

    #[test]
    fn a_reply_whose_signal_was_lost_is_read_at_the_next_signal() -> Result {
        let f = Fixture::new()?;
        let c = Arc::new(Counters::default(), GFP_KERNEL)?;
        let rings = Rings::of(&f.vsc)?;
        // Dropped: the reply sits in the ring until a signal comes.
        rings.set_signals(Endpoint::Client, Signals::Drop);
        f.send(&c)?;
        testing::flush();
        assert_eq!(c.completed.load(Ordering::Relaxed), 0);
        rings.set_signals(Endpoint::Client, Signals::Deliver);
        rings.signal(Endpoint::Client)?;
        f.vsc.wait_sends_finished(Delta::from_millis(5000))?;
        assert_eq!(c.echoed.load(Ordering::Relaxed), 1);
        // Held: delivered late, once.
        rings.set_signals(Endpoint::Client, Signals::Hold);
        f.send(&c)?;
        testing::flush();
        assert_eq!(c.completed.load(Ordering::Relaxed), 1);
        rings.set_signals(Endpoint::Client, Signals::Deliver);
        f.vsc.wait_sends_finished(Delta::from_millis(5000))?;
        assert_eq!(c.echoed.load(Ordering::Relaxed), 2);
        Ok(())
    }

    #[test]
    fn a_host_that_goes_away_mid_request_fails_it() -> Result {
        let f = Fixture::new()?;
        let c = Arc::new(Counters::default(), GFP_KERNEL)?;
        f.host.hold.store(true, Ordering::Relaxed);
        f.send(&c)?;
        f.host.wait_held(1)?;
        testing::close_peer(&f.vsc)?;
        f.vsc.wait_sends_finished(Delta::from_millis(5000))?;
        assert_eq!(c.completed.load(Ordering::Relaxed), 1);
        assert_eq!(c.failed.load(Ordering::Relaxed), 1);
        f.vsc
            .wait_for_state(State::Disabled, Delta::from_millis(5000))?;
        Ok(())
    }

    #[test]
    fn after_a_rescind_calls_fail_with_enodev() -> Result {
        let f = Fixture::new()?;
        testing::rescind(&f.vsc)?;
        assert!(matches!(f.vsc.packet_allocate(), Err(e) if e == ENODEV));
        f.vsc
            .wait_for_state(State::Disabled, Delta::from_millis(5000))?;
        assert!(matches!(testing::rescind(&f.vsc), Err(e) if e == ENODEV));
        Ok(())
    }

    #[test]
    fn a_ring_handle_kept_after_disable_reaches_only_live_memory() -> Result {
        let f = Fixture::new()?;
        let rings = Rings::of(&f.vsc)?;
        f.vsc.disable()?;
        assert!(matches!(testing::write_raw(&f.vsc, &malformed()), Err(e) if e == ENODEV));
        assert!(matches!(Rings::of(&f.vsc), Err(e) if e == ENODEV));
        // Both channels and the bus go; the handle keeps the rings.
        drop(f);
        rings.write_data(Endpoint::Client, 0, &[0xa5; 16])?;
        rings.set(Endpoint::Client, RingField::WriteIndex, 16);
        assert_eq!(rings.get(Endpoint::Client, RingField::WriteIndex), 16);
        // Nobody is left to signal, and the data area has bounds.
        assert!(matches!(rings.signal(Endpoint::Server), Err(e) if e == ENODEV));
        let size = rings.data_size();
        assert!(matches!(rings.write_data(Endpoint::Client, size, &[0; 8]), Err(e) if e == EINVAL));
        assert!(matches!(rings.write_data(Endpoint::Client, 4, &[0; 8]), Err(e) if e == EINVAL));
        Ok(())
    }
}
