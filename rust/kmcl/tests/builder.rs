// SPDX-License-Identifier: GPL-2.0

//! The channel builder through the public API: what `build` still checks
//! at run time (ranges, the endpoint kind of each setting, pipe modes, the
//! first error, nothing left behind by a failed build), and the driver's
//! data the channel owns.

use core::sync::atomic::{
    AtomicBool,
    AtomicU32,
    AtomicUsize,
    Ordering, //
};

use kernel::{
    new_mutex, new_spinlock_irq,
    prelude::*,
    sync::{
        Arc,
        Mutex,
        SpinLockIrq, //
    },
    time::{
        delay::fsleep,
        Delta, //
    },
};

use super::harness::{
    self,
    settle,
    wait_for,
    Pair,
    Recorder,
    IFACE,
    INSTANCE, //
};
use crate::{
    channel::{
        callbacks::{
            ProcessPacket,
            SaveRestorePacket,
            StateChange, //
        },
        incoming::IncomingPacket,
        outgoing::Packet,
        pipe::pipe_mode,
        subchannel::SubchannelOffer,
        Channel,
        ChannelBuilder,
        ChannelHandle,
        Endpoint,
        ServerFlags,
        State, //
    },
    sys,
    transport::{
        loopback::LoopbackBus,
        Bus, //
    },
    wire::guid::Guid,
};

/// 64 bytes, the longest friendly name.
const NAME_64: &CStr = c"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// 65 bytes.
const NAME_65: &CStr = c"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdefX";

fn client() -> ChannelBuilder {
    Channel::builder(Endpoint::Client, &crate::THIS_MODULE)
}

fn server() -> ChannelBuilder {
    Channel::builder(Endpoint::Server, &crate::THIS_MODULE)
}

/// A named builder, for tables of cases.
type Case = (&'static str, fn() -> ChannelBuilder);

/// Builds `b` and drops the channel: the build's result.
fn built(b: ChannelBuilder) -> Result {
    b.build().map(drop)
}

/// Per-packet save and restore callbacks that save nothing.
struct NoSave;

impl SaveRestorePacket for NoSave {
    fn save_packet(
        &self,
        _channel: &Channel,
        _packet: &Packet,
        _buf: &mut [u8],
    ) -> core::result::Result<usize, usize> {
        Ok(0)
    }

    fn restore_packet(&self, _channel: &Channel, packet: Packet, _state: &[u8]) -> Result {
        packet.restore()
    }
}

/// What the driver values of these tests share with the test: how often a
/// value was dropped, what its callbacks saw.
#[derive(Default)]
struct Tally {
    drops: AtomicU32,
    /// Packets the driver finished.
    seen: AtomicU32,
    /// Callbacks that ran after a driver value was dropped.
    late: AtomicU32,
    /// Address of the value the last callback got as `&self`.
    this: AtomicUsize,
    /// Redeliver at passive level and sleep there before finishing.
    slow: AtomicBool,
    /// A slow callback is sleeping now.
    in_slow: AtomicBool,
    /// Closed callbacks.
    closed: AtomicU32,
}

impl Tally {
    fn new() -> Result<Arc<Tally>> {
        Ok(Arc::new(Tally::default(), GFP_KERNEL)?)
    }
}

/// A driver value owned by its channel.
#[pin_data(PinnedDrop)]
struct Counted {
    tally: Arc<Tally>,
    tag: u32,
    /// The driver's own channel, once Opened ran: a reference that would
    /// form a cycle if the channel never let go of its driver.
    #[pin]
    own: SpinLockIrq<Option<Arc<Channel>>>,
}

impl Counted {
    fn new(tally: Arc<Tally>, tag: u32) -> impl PinInit<Self> {
        pin_init!(Counted {
            tally,
            tag,
            own <- new_spinlock_irq!(None, "kmcl::tests::builder::Counted"),
        })
    }

    fn note(&self) {
        let t = &self.tally;
        t.this
            .store(core::ptr::from_ref(self) as usize, Ordering::Relaxed);
        if t.drops.load(Ordering::Relaxed) != 0 {
            t.late.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[pinned_drop]
impl PinnedDrop for Counted {
    fn drop(self: Pin<&mut Self>) {
        self.tally.drops.fetch_add(1, Ordering::Relaxed);
    }
}

impl ProcessPacket for Counted {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        self.note();
        let tally = self.tally.clone();
        if tally.slow.load(Ordering::Relaxed) {
            if !sys::in_task() {
                if let Err(e) = packet.defer_to_passive() {
                    let _ = e.0.complete(&[]);
                }
                return;
            }
            tally.in_slow.store(true, Ordering::Relaxed);
            fsleep(Delta::from_millis(50));
            // The value must still be there: the handle's drop waits.
            if tally.drops.load(Ordering::Relaxed) != 0 {
                tally.late.fetch_add(1, Ordering::Relaxed);
            }
            tally.in_slow.store(false, Ordering::Relaxed);
        }
        tally.seen.fetch_add(1, Ordering::Relaxed);
        let _ = packet.complete(&[]);
    }
}

impl StateChange for Counted {
    fn opened(&self, channel: &Channel) -> Result {
        self.note();
        *self.own.lock() = Some(channel.arc());
        Ok(())
    }

    fn suspend(&self, _channel: &Channel) {
        self.note();
    }

    fn closed(&self, _channel: &Channel) {
        self.note();
        self.tally.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A driver value of another type.
struct Other;

impl ProcessPacket for Other {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        let _ = packet.complete(&[]);
    }
}

impl StateChange for Other {}

/// The address `data::<Counted>()` of `h` points at, 0 for none.
fn data_addr(h: &ChannelHandle) -> usize {
    h.data::<Counted>()
        .map(|d| core::ptr::from_ref(d) as usize)
        .unwrap_or(0)
}

/// A loopback pair whose server runs a [`Counted`] driver (tag 1) in
/// place of its recorder, built and not enabled: the bus, the server's
/// recorder, the server and the client.
fn counted_pair(
    tally: &Arc<Tally>,
) -> Result<(
    Arc<LoopbackBus>,
    Arc<Recorder>,
    ChannelHandle,
    ChannelHandle,
)> {
    let bus = LoopbackBus::new()?;
    let (srec, crec) = (Recorder::new()?, Recorder::new()?);
    let server = harness::builder(&bus, Endpoint::Server, &srec)
        .driver(Counted::new(tally.clone(), 1))
        .build()?;
    let client = harness::channel(&bus, Endpoint::Client, &crec)?;
    Ok((bus, srec, server, client))
}

/// Enables both ends and waits until both are Started.
fn start(server: &mut ChannelHandle, client: &mut ChannelHandle) -> Result {
    server.enable()?;
    client.enable()?;
    client.wait_for_state(State::Started, Delta::from_millis(5000))?;
    server.wait_for_state(State::Started, Delta::from_millis(5000))
}

/// A client primary's driver that builds each sub-channel offered with a
/// [`Counted`] driver value and enables it.
#[pin_data]
struct DriverTaker {
    tally: Arc<Tally>,
    #[pin]
    subs: Mutex<KVec<ChannelHandle>>,
}

impl DriverTaker {
    fn new(tally: &Arc<Tally>) -> Result<Arc<DriverTaker>> {
        Arc::pin_init(
            pin_init!(DriverTaker {
                tally: tally.clone(),
                subs <- new_mutex!(KVec::new(), "kmcl::tests::builder::DriverTaker"),
            }),
            GFP_KERNEL,
        )
    }

    fn take(&self, sub: ChannelBuilder) -> Result {
        let tag = u32::from(sub.subchannel_index());
        let mut h = sub.driver(Counted::new(self.tally.clone(), tag)).build()?;
        h.enable()?;
        self.subs.lock().push(h, GFP_KERNEL)?;
        Ok(())
    }
}

impl SubchannelOffer for DriverTaker {
    fn subchannel_offered(&self, _primary: &Channel, subchannel: ChannelBuilder) {
        if let Err(e) = self.take(subchannel) {
            pr_err!("builder test: taking an offer failed: {:?}\n", e);
        }
    }
}

#[kunit_tests(kmcl_builder)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_fail_the_build_with_einval() -> Result {
        let bad: [Case; 19] = [
            ("client context size", || client().client_context_size(4097)),
            ("packet size 0", || client().maximum_packet_size(0)),
            ("packet size", || {
                client().maximum_packet_size((1 << 20) + 1)
            }),
            ("pool 0", || client().packet_pool_size(0)),
            ("pool", || client().packet_pool_size(4097)),
            ("slots 0", || client().incoming_slots(0)),
            ("slots", || client().incoming_slots(4097)),
            ("ring pages 1", || client().ring_buffer_page_count(1)),
            ("ring pages", || client().ring_buffer_page_count(1025)),
            ("external size 0", || client().maximum_external_data(0, 1)),
            ("external chain 0", || {
                client().maximum_external_data(4096, 0)
            }),
            ("external 0/0", || client().maximum_external_data(0, 0)),
            ("external chain", || {
                client().maximum_external_data(4096, 65)
            }),
            ("mmio", || server().mmio_megabytes(65)),
            ("vtl", || server().target_vtl(3)),
            ("null pnp type", || {
                client().target_pnp(Guid::NULL, Some(INSTANCE))
            }),
            ("null interface type", || {
                server().target_interface_id(Guid::NULL, INSTANCE)
            }),
            ("name 65 bytes", || client().friendly_name(NAME_65)),
            ("name not UTF-8", || client().friendly_name(c"k\xffunit")),
        ];
        for (what, b) in bad {
            let e = built(b());
            if e != Err(EINVAL) {
                pr_err!("{}: build gave {:?}\n", what, e);
            }
            assert_eq!(e, Err(EINVAL));
        }
        // The limits themselves are accepted.
        let good: [Case; 14] = [
            ("client context size", || client().client_context_size(4096)),
            ("packet size 1", || client().maximum_packet_size(1)),
            ("packet size", || client().maximum_packet_size(1 << 20)),
            ("pool", || {
                client().packet_pool_size(1).packet_pool_size(4096)
            }),
            ("slots", || client().incoming_slots(1).incoming_slots(4096)),
            ("ring pages 2", || client().ring_buffer_page_count(2)),
            ("ring pages", || client().ring_buffer_page_count(1024)),
            ("external", || client().maximum_external_data(1, 64)),
            ("mmio 0", || server().mmio_megabytes(0)),
            ("mmio", || server().mmio_megabytes(64)),
            ("vtl", || server().target_vtl(2)),
            ("name 64 bytes", || client().friendly_name(NAME_64)),
            ("name UTF-8", || client().friendly_name(c"k\xc3\xa9unit")),
            ("empty", client),
        ];
        for (what, b) in good {
            let e = built(b());
            if e.is_err() {
                pr_err!("{}: build gave {:?}\n", what, e);
            }
            assert_eq!(e, Ok(()));
        }
        Ok(())
    }

    #[test]
    fn a_setting_of_the_other_endpoint_kind_fails_with_einval() -> Result {
        let rec = Recorder::new()?;
        let taker = DriverTaker::new(&Tally::new()?)?;
        let on_server = [
            server().ring_buffer_page_count(4),
            server().target_pnp(IFACE, None),
            server().subchannel_callback(taker.clone()),
        ];
        let on_client = [
            client().server_flags(ServerFlags::LOOPBACK_OFFER),
            client().mmio_megabytes(1),
            client().target_vtl(0),
            client().target_interface_id(IFACE, INSTANCE),
            client().save_restore_packet_callbacks(Arc::new(NoSave, GFP_KERNEL)?),
        ];
        for b in Iterator::chain(on_server.into_iter(), on_client) {
            assert_eq!(built(b), Err(EINVAL));
        }
        // Each is accepted on its own kind.
        let fine = [
            client().ring_buffer_page_count(4),
            client().target_pnp(IFACE, None),
            client().subchannel_callback(taker.clone()),
            server().server_flags(ServerFlags::LOOPBACK_OFFER),
            server().mmio_megabytes(1),
            server().target_vtl(0),
            server().target_interface_id(IFACE, INSTANCE),
            server().save_restore_packet_callbacks(Arc::new(NoSave, GFP_KERNEL)?),
        ];
        for b in fine {
            assert_eq!(built(b.process_packet_callbacks(rec.clone())), Ok(()));
        }
        Ok(())
    }

    #[test]
    fn pipe_mode_byte_is_eopnotsupp_and_others_einval() -> Result {
        for b in [client, server] {
            assert_eq!(built(b().pipe_mode(pipe_mode::MESSAGE)), Ok(()));
            assert_eq!(built(b().pipe_mode(pipe_mode::BYTE)), Err(EOPNOTSUPP));
            assert_eq!(built(b().pipe_mode(2)), Err(EINVAL));
            assert_eq!(built(b().pipe_mode(u32::MAX)), Err(EINVAL));
        }
        Ok(())
    }

    #[test]
    fn the_first_error_wins() -> Result {
        // EINVAL, then EOPNOTSUPP: EINVAL.
        assert_eq!(
            built(client().maximum_packet_size(0).pipe_mode(pipe_mode::BYTE)),
            Err(EINVAL)
        );
        assert_eq!(
            built(client().friendly_name(NAME_65).pipe_mode(pipe_mode::BYTE)),
            Err(EINVAL)
        );
        // EOPNOTSUPP, then EINVAL: EOPNOTSUPP.
        assert_eq!(
            built(
                client()
                    .pipe_mode(pipe_mode::BYTE)
                    .ring_buffer_page_count(1)
            ),
            Err(EOPNOTSUPP)
        );
        assert_eq!(
            built(server().pipe_mode(pipe_mode::BYTE).target_vtl(3)),
            Err(EOPNOTSUPP)
        );
        // A driver whose initialiser fails: its error, before a later bad
        // setting's; an earlier bad setting's before it.
        let tally = Tally::new()?;
        let failing = || {
            let t = tally.clone();
            try_pin_init!(Counted {
                tally: t,
                tag: Err::<u32, Error>(EBADMSG)?,
                own <- new_spinlock_irq!(None, "kmcl::tests::builder::failing"),
            }? Error)
        };
        let r = client().driver(failing()).maximum_packet_size(0).build();
        assert!(matches!(r, Err(e) if e == EBADMSG));
        let r = client().friendly_name(NAME_65).driver(failing()).build();
        assert!(matches!(r, Err(e) if e == EINVAL));
        Ok(())
    }

    #[test]
    fn a_failed_build_leaves_no_channel_behind() -> Result {
        let bus = LoopbackBus::new()?;
        let tally = Tally::new()?;
        // The bus is applied before each of these fails, so a channel
        // left behind would keep a reference to it.
        let failing: [ChannelBuilder; 4] = [
            client()
                .driver(Counted::new(tally.clone(), 0))
                .vmbus_handle(Bus::Loopback(bus.clone()))
                .ring_buffer_page_count(1),
            client()
                .driver(Counted::new(tally.clone(), 0))
                .vmbus_handle(Bus::Loopback(bus.clone()))
                .target_pnp(Guid::NULL, None),
            server()
                .driver(Counted::new(tally.clone(), 0))
                .vmbus_handle(Bus::Loopback(bus.clone()))
                .target_interface_id(IFACE, INSTANCE)
                .target_vtl(3),
            server()
                .driver(Counted::new(tally.clone(), 0))
                .vmbus_handle(Bus::Loopback(bus.clone()))
                .subchannel_callback(DriverTaker::new(&tally)?),
        ];
        for b in failing {
            assert_eq!(built(b), Err(EINVAL));
        }
        // Every driver value went, once, and so did every reference to
        // the bus: only the test's is left.
        assert_eq!(tally.drops.load(Ordering::Relaxed), 4);
        assert!(Arc::into_unique_or_drop(bus).is_some());
        Ok(())
    }

    #[test]
    fn enable_of_a_channel_built_without_callbacks_fails() -> Result {
        let bus = LoopbackBus::new()?;
        for e in [Endpoint::Client, Endpoint::Server] {
            let b =
                Channel::builder(e, &crate::THIS_MODULE).vmbus_handle(Bus::Loopback(bus.clone()));
            let mut h = match e {
                Endpoint::Client => b.target_pnp(IFACE, None),
                Endpoint::Server => b.target_interface_id(IFACE, INSTANCE),
            }
            .build()?;
            assert_eq!(h.enable(), Err(EINVAL));
            assert_eq!(h.state(), State::Disabled);
        }
        assert_eq!(bus.offer_count(), 0);
        Ok(())
    }

    #[test]
    fn driver_data_is_reachable_by_its_type_only() -> Result {
        let tally = Tally::new()?;
        let h = client().driver(Counted::new(tally.clone(), 7)).build()?;
        assert_eq!(h.data::<Counted>().map(|d| d.tag), Some(7));
        assert!(h.data::<Other>().is_none());
        assert!(h.data::<Recorder>().is_none());
        let o = client().driver(Other).build()?;
        assert!(o.data::<Other>().is_some());
        assert!(o.data::<Counted>().is_none());
        let plain = client().build()?;
        assert!(plain.data::<Counted>().is_none());
        // The last driver given replaces the first, which is dropped.
        let t2 = Tally::new()?;
        let h2 = client()
            .driver(Counted::new(t2.clone(), 1))
            .driver(Counted::new(t2.clone(), 2))
            .build()?;
        assert_eq!(h2.data::<Counted>().map(|d| d.tag), Some(2));
        assert_eq!(t2.drops.load(Ordering::Relaxed), 1);
        drop(h2);
        assert_eq!(t2.drops.load(Ordering::Relaxed), 2);
        assert_eq!(tally.drops.load(Ordering::Relaxed), 0);
        drop(h);
        assert_eq!(tally.drops.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[test]
    fn callbacks_get_the_value_data_returns() -> Result {
        let tally = Tally::new()?;
        let (_bus, srec, mut server, mut client) = counted_pair(&tally)?;
        let addr = data_addr(&server);
        assert!(addr != 0);
        start(&mut server, &mut client)?;
        // Opened got it.
        assert_eq!(tally.this.load(Ordering::Relaxed), addr);
        tally.this.store(0, Ordering::Relaxed);
        harness::send(&client, b"ping", false)?;
        assert!(wait_for(2000, || tally.seen.load(Ordering::Relaxed) == 1));
        // So did ProcessPacket; the recorder the driver replaced got nothing.
        assert_eq!(tally.this.load(Ordering::Relaxed), addr);
        assert_eq!(srec.received.load(Ordering::Relaxed), 0);
        client.disable()?;
        server.disable()?;
        Ok(())
    }

    #[test]
    fn driver_is_dropped_once_after_the_handle_and_the_last_callback() -> Result {
        let tally = Tally::new()?;
        let (_bus, _srec, mut server, mut client) = counted_pair(&tally)?;
        start(&mut server, &mut client)?;
        for i in 0..3u64 {
            harness::send(&client, &i.to_le_bytes(), false)?;
        }
        assert!(wait_for(2000, || tally.seen.load(Ordering::Relaxed) == 3));
        assert_eq!(tally.drops.load(Ordering::Relaxed), 0);
        // A disable does not drop it: the handle still reaches it.
        server.disable()?;
        assert_eq!(tally.drops.load(Ordering::Relaxed), 0);
        assert!(data_addr(&server) != 0);
        assert!(wait_for(2000, || client.state() == State::Disabled));
        start(&mut server, &mut client)?;
        // A callback sleeping at passive level while the handle is
        // dropped: the value outlives it.
        tally.slow.store(true, Ordering::Relaxed);
        harness::send(&client, b"slow", false)?;
        assert!(wait_for(2000, || tally.in_slow.load(Ordering::Relaxed)));
        assert_eq!(tally.closed.load(Ordering::Relaxed), 1);
        drop(server);
        // The packet finished and the close ran Suspend and Closed on the
        // value, all before it was dropped.
        assert_eq!(tally.seen.load(Ordering::Relaxed), 4);
        assert_eq!(tally.closed.load(Ordering::Relaxed), 2);
        assert_eq!(tally.drops.load(Ordering::Relaxed), 1);
        assert_eq!(tally.late.load(Ordering::Relaxed), 0);
        settle(20);
        assert_eq!(tally.drops.load(Ordering::Relaxed), 1);
        client.disable()?;
        Ok(())
    }

    #[test]
    fn driver_holding_its_own_channel_is_dropped_with_the_handle() -> Result {
        let tally = Tally::new()?;
        let mut p = Pair::new(|e, b| match e {
            Endpoint::Client => b.driver(Counted::new(tally.clone(), 1)),
            Endpoint::Server => b,
        })?;
        p.server.enable()?;
        p.client.enable()?;
        p.client
            .wait_for_state(State::Started, Delta::from_millis(5000))?;
        // Opened stored the channel in the value the channel owns.
        let own = p
            .client
            .data::<Counted>()
            .and_then(|d| d.own.lock().clone())
            .ok_or(ENOENT)?;
        assert!(core::ptr::eq(&*own, &*p.client.arc()));
        drop(own);
        let client = core::mem::replace(
            &mut p.client,
            Channel::builder(Endpoint::Client, &crate::THIS_MODULE).build()?,
        );
        assert_eq!(tally.drops.load(Ordering::Relaxed), 0);
        drop(client);
        assert_eq!(tally.drops.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[test]
    fn subchannel_offer_built_with_a_driver() -> Result {
        let tally = Tally::new()?;
        let taker = DriverTaker::new(&tally)?;
        let mut p = Pair::new(|e, b| match e {
            Endpoint::Client => b.subchannel_callback(taker.clone()),
            Endpoint::Server => b,
        })?;
        p.up()?;
        let srec = Recorder::new()?;
        let mut s1 = harness::channel(&p.bus, Endpoint::Server, &srec)?;
        assert_eq!(p.server.offer_subchannel(&mut s1)?, 1);
        assert!(wait_for(2000, || {
            taker
                .subs
                .lock()
                .first()
                .is_some_and(|h| h.state() == State::Started)
        }));
        let addr = {
            let subs = taker.subs.lock();
            let h = subs.first().ok_or(ENOENT)?;
            assert_eq!(h.subchannel_index(), 1);
            assert_eq!(h.data::<Counted>().map(|d| d.tag), Some(1));
            data_addr(h)
        };
        assert!(addr != 0);
        assert!(wait_for(2000, || s1.state() == State::Started));
        harness::send(&s1, b"sub", false)?;
        assert!(wait_for(2000, || tally.seen.load(Ordering::Relaxed) == 1));
        assert_eq!(tally.this.load(Ordering::Relaxed), addr);
        // The primary's recorder got nothing of the sub-channel's.
        assert_eq!(p.crec.received.load(Ordering::Relaxed), 0);
        let sub = taker.subs.lock().pop().ok_or(ENOENT)?;
        assert_eq!(tally.drops.load(Ordering::Relaxed), 0);
        drop(sub);
        assert_eq!(tally.drops.load(Ordering::Relaxed), 1);
        assert_eq!(tally.late.load(Ordering::Relaxed), 0);
        s1.disable()?;
        drop(p);
        Ok(())
    }
}
