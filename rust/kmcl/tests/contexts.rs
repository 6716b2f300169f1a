// SPDX-License-Identifier: GPL-2.0

//! Calls made where they cannot run: every entry point that may sleep is
//! refused in atomic context (a ProcessPacket in softirq context, bottom
//! halves disabled) with `EWOULDBLOCK`, and every lifecycle call that waits
//! for the channel's state callbacks is refused from one of them with
//! `EDEADLK`; in both cases nothing happens.

use core::sync::atomic::{
    AtomicBool,
    AtomicI32,
    Ordering, //
};

use kernel::{
    alloc::KVVec,
    new_spinlock_irq,
    page::Page,
    prelude::*,
    sync::{
        Arc,
        SpinLockIrq, //
    },
    time::Delta,
};

use super::harness::{
    self,
    wait_for,
    Recorder,
    IFACE,
    INSTANCE, //
};
use crate::{
    channel::{
        callbacks::{
            ProcessPacket,
            StateChange, //
        },
        gpadl::{
            Gpadl,
            GpadlMemory, //
        },
        incoming::IncomingPacket,
        outgoing::SendFlags,
        Channel,
        ChannelHandle,
        Endpoint,
        State,
        EWOULDBLOCK, //
    },
    sys,
    transport::{
        loopback::LoopbackBus,
        Bus, //
    },
};

/// The page-set ids of the receive buffers.
const REGISTERED: u16 = 1;
const SPARE: u16 = 2;

/// The entry points probed in atomic context, in `probe_atomic`'s order.
const ATOMIC_CALLS: [&str; 18] = [
    "enable",
    "disable",
    "pause",
    "start",
    "wait_for_state",
    "wait_sends_finished",
    "send_synchronous_request",
    "create_gpadl_from_buffer",
    "create_gpadl_from_pages",
    "create_gpadl_shared",
    "delete_gpadl",
    "register_receive_buffer",
    "unregister_receive_buffer",
    "save_begin",
    "restore_from_buffer",
    "offer_subchannel",
    "set_target_cpu",
    "ChannelHandle::cleanup",
];

/// The lifecycle calls probed from a state callback, in
/// `probe_in_callback`'s order.
const CALLBACK_CALLS: [&str; 7] = [
    "enable",
    "disable",
    "pause",
    "start",
    "wait_for_state",
    "save_begin",
    "restore_from_buffer",
];

/// What the atomic probes use, prepared in process context; each is taken
/// out for its call and put back when the call hands it back.
struct Stash {
    client: Option<Arc<Channel>>,
    buffer: Option<KVVec<u8>>,
    pages: Option<KVec<Page>>,
    gpadl: Option<Gpadl>,
    spare: Option<ChannelHandle>,
}

fn errno(r: Result) -> i32 {
    r.err().map(|e| e.to_errno()).unwrap_or(0)
}

/// A server driver that probes the blocking entry points from where it is
/// called: ProcessPacket (softirq) or PostStarted (its own state callback).
#[pin_data]
struct Prober {
    #[pin]
    stash: SpinLockIrq<Stash>,
    /// Probe from ProcessPacket.
    in_packet: AtomicBool,
    /// Probe from PostStarted.
    in_post_started: AtomicBool,
    /// The probes ran, and whether the caller was in softirq context.
    ran: AtomicBool,
    softirq: AtomicBool,
    /// Each probe's errno, 0 for success, `i32::MIN` if it did not run.
    results: [AtomicI32; 18],
    /// `wait_sends_finished` from PostStarted, which may wait there.
    wait_sends_in_callback: AtomicI32,
}

impl Prober {
    fn new() -> Result<Arc<Prober>> {
        Arc::pin_init(
            try_pin_init!(Prober {
                stash <- new_spinlock_irq!(Stash {
                    client: None,
                    buffer: None,
                    pages: None,
                    gpadl: None,
                    spare: None,
                }, "kmcl::tests::Prober"),
                in_packet: AtomicBool::new(false),
                in_post_started: AtomicBool::new(false),
                ran: AtomicBool::new(false),
                softirq: AtomicBool::new(false),
                results: [const { AtomicI32::new(i32::MIN) }; 18],
                wait_sends_in_callback: AtomicI32::new(i32::MIN),
            }),
            GFP_KERNEL,
        )
    }

    fn set(&self, i: usize, e: i32) {
        self.results[i].store(e, Ordering::Relaxed);
    }

    /// Calls every blocking entry point on `server` and the stashed client
    /// and records each errno.
    fn probe_atomic(&self, server: &Channel) {
        let Some(client) = self.stash.lock().client.clone() else {
            return;
        };
        self.set(0, errno(server.enable()));
        self.set(1, errno(server.disable()));
        self.set(2, errno(server.pause()));
        self.set(3, errno(server.start()));
        self.set(
            4,
            errno(server.wait_for_state(State::Started, Delta::from_millis(0))),
        );
        self.set(5, errno(server.wait_sends_finished(Delta::from_millis(0))));
        let mut resp = [0u8; 8];
        let r = client.send_synchronous_request(
            b"atomic",
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(100)),
        );
        self.set(6, errno(r.map(|_| ())));
        let buffer = self.stash.lock().buffer.take();
        if let Some(b) = buffer {
            self.set(
                7,
                errno(
                    client
                        .create_gpadl_from_buffer(b, crate::channel::GpadlFlags::NONE)
                        .map(drop),
                ),
            );
        }
        let pages = self.stash.lock().pages.take();
        if let Some(p) = pages {
            self.set(
                8,
                errno(
                    client
                        .create_gpadl_from_pages(p, crate::channel::GpadlFlags::NONE)
                        .map(drop),
                ),
            );
        }
        self.set(
            9,
            errno(
                client
                    .create_gpadl_shared(4096, crate::channel::GpadlFlags::NONE)
                    .map(drop),
            ),
        );
        let gpadl = self.stash.lock().gpadl.take();
        if let Some(g) = gpadl {
            let r = client.delete_gpadl(g);
            let (e, g) = match r {
                Ok(_) => (0, None),
                Err((e, g)) => (e.to_errno(), Some(g)),
            };
            self.set(10, e);
            self.stash.lock().gpadl = g;
        }
        let gpadl = self.stash.lock().gpadl.take();
        if let Some(g) = gpadl {
            let (e, g) = match client.register_receive_buffer(SPARE, g) {
                Ok(()) => (0, None),
                Err((e, g)) => (e.to_errno(), Some(g)),
            };
            self.set(11, e);
            self.stash.lock().gpadl = g;
        }
        let r = client.unregister_receive_buffer(REGISTERED, Delta::from_millis(0));
        self.set(12, errno(r.map(drop)));
        self.set(13, errno(server.save_begin().map(drop)));
        let spare = self.stash.lock().spare.take();
        if let Some(mut spare) = spare {
            self.set(14, errno(spare.restore_from_buffer(&[0u8; 8]).map(drop)));
            self.set(15, errno(server.offer_subchannel(&mut spare).map(drop)));
            let spare = match spare.cleanup() {
                Ok(()) => {
                    self.set(17, 0);
                    None
                }
                Err((e, h)) => {
                    self.set(17, e.to_errno());
                    Some(h)
                }
            };
            self.stash.lock().spare = spare;
        }
        self.set(16, errno(server.set_target_cpu(0)));
    }

    /// Calls the lifecycle entry points on `channel` from its own state
    /// callback and records each errno.
    fn probe_in_callback(&self, channel: &Channel) {
        self.set(0, errno(channel.enable()));
        self.set(1, errno(channel.disable()));
        self.set(2, errno(channel.pause()));
        self.set(3, errno(channel.start()));
        self.set(
            4,
            errno(channel.wait_for_state(State::Started, Delta::from_millis(10))),
        );
        self.set(5, errno(channel.save_begin().map(drop)));
        self.set(6, errno(channel.restore_from_buffer(&[0u8; 8]).map(drop)));
        let r = channel.wait_sends_finished(Delta::from_millis(100));
        self.wait_sends_in_callback
            .store(errno(r), Ordering::Relaxed);
    }
}

impl ProcessPacket for Prober {
    fn process_packet(&self, channel: &Channel, packet: IncomingPacket) {
        if self.in_packet.swap(false, Ordering::Relaxed) {
            self.softirq.store(sys::in_softirq(), Ordering::Relaxed);
            self.probe_atomic(channel);
            self.ran.store(true, Ordering::Release);
        }
        let mut echo = [0u8; 16];
        let n = packet.data().len().min(echo.len());
        echo[..n].copy_from_slice(&packet.data()[..n]);
        let _ = packet.complete(&echo[..n]);
    }
}

impl StateChange for Prober {
    fn post_started(&self, channel: &Channel) {
        if self.in_post_started.swap(false, Ordering::Relaxed) {
            self.probe_in_callback(channel);
            self.ran.store(true, Ordering::Release);
        }
    }
}

/// A server driven by a [`Prober`] and a recording client, connected.
struct Setup {
    _bus: Arc<LoopbackBus>,
    server: ChannelHandle,
    client: ChannelHandle,
    prober: Arc<Prober>,
    _crec: Arc<Recorder>,
}

impl Setup {
    fn new(probe_in_post_started: bool) -> Result<Setup> {
        let bus = LoopbackBus::new()?;
        let prober = Prober::new()?;
        prober
            .in_post_started
            .store(probe_in_post_started, Ordering::Relaxed);
        let mut server = Channel::builder(Endpoint::Server, &crate::THIS_MODULE)
            .process_packet_callbacks(prober.clone())
            .state_change_callbacks(prober.clone())
            .vmbus_handle(Bus::Loopback(bus.clone()))
            .target_interface_id(IFACE, INSTANCE)
            .build()?;
        let crec = Recorder::new()?;
        let mut client = harness::channel(&bus, Endpoint::Client, &crec)?;
        server.enable()?;
        client.enable()?;
        let up = wait_for(5000, || {
            server.state() == State::Started && client.state() == State::Started
        });
        if !up {
            return Err(ETIMEDOUT);
        }
        Ok(Setup {
            _bus: bus,
            server,
            client,
            prober,
            _crec: crec,
        })
    }

    /// Fills the stash: a buffer and pages for GPADL creation, a client
    /// GPADL, a buffer registered as `REGISTERED`, and a spare Disabled
    /// server handle.
    fn stash(&self) -> Result {
        let mut buffer = KVVec::with_capacity(4096, GFP_KERNEL)?;
        buffer.resize(4096, 0, GFP_KERNEL)?;
        let mut pages = KVec::new();
        pages.push(Page::alloc_page(GFP_KERNEL)?, GFP_KERNEL)?;
        let mut b = KVVec::with_capacity(4096, GFP_KERNEL)?;
        b.resize(4096, 1, GFP_KERNEL)?;
        let registered = self
            .client
            .create_gpadl_from_buffer(b, crate::channel::GpadlFlags::NONE)?;
        self.client
            .register_receive_buffer(REGISTERED, registered)
            .map_err(|(e, _)| e)?;
        let mut b = KVVec::with_capacity(4096, GFP_KERNEL)?;
        b.resize(4096, 2, GFP_KERNEL)?;
        let gpadl = self
            .client
            .create_gpadl_from_buffer(b, crate::channel::GpadlFlags::NONE)?;
        let spare = Channel::builder(Endpoint::Server, &crate::THIS_MODULE)
            .target_interface_id(IFACE, INSTANCE)
            .build()?;
        let mut s = self.prober.stash.lock();
        s.client = Some(self.client.arc());
        s.buffer = Some(buffer);
        s.pages = Some(pages);
        s.gpadl = Some(gpadl);
        s.spare = Some(spare);
        Ok(())
    }

    /// Checks that the atomic probes were all refused with `EWOULDBLOCK`
    /// and that none of them did anything.
    fn check_atomic_refused(&self) -> bool {
        let mut ok = true;
        for (i, name) in ATOMIC_CALLS.iter().enumerate() {
            let e = self.prober.results[i].load(Ordering::Relaxed);
            if e != EWOULDBLOCK.to_errno() {
                pr_err!("kunit: {} in atomic context gave {}\n", name, e);
                ok = false;
            }
        }
        // Nothing happened: both ends still Started, no request sent.
        ok &= self.server.state() == State::Started;
        ok &= self.client.state() == State::Started;
        // The probe packet is the only one the server got.
        ok &= self.server.counters().packets_received == 1;
        // No GPADL was created or deleted, no buffer registered or
        // unregistered, the spare handle neither offered nor freed, no
        // restore chunk taken, no CPU set.
        let (gpadl, spare) = {
            let mut s = self.prober.stash.lock();
            (s.gpadl.take(), s.spare.take())
        };
        ok &= self.server.target_cpu().is_none();
        match spare {
            Some(spare) => {
                ok &= spare.state() == State::Disabled;
                ok &= spare.subchannel_index() == 0;
                ok &= spare.inner.lock().restore_buf.is_empty();
            }
            None => ok = false,
        }
        ok &= matches!(
            self.client
                .unregister_receive_buffer(SPARE, Delta::from_millis(100))
                .map(drop),
            Err(e) if e == ENOENT
        );
        match self
            .client
            .unregister_receive_buffer(REGISTERED, Delta::from_millis(100))
        {
            Ok(g) => {
                ok &= matches!(
                    self.client.delete_gpadl(g),
                    Ok(Some(GpadlMemory::Buffer(_)))
                )
            }
            Err(_) => ok = false,
        }
        match gpadl {
            Some(g) => {
                ok &= matches!(
                    self.client.delete_gpadl(g),
                    Ok(Some(GpadlMemory::Buffer(_)))
                )
            }
            None => ok = false,
        }
        // The channel still carries requests.
        let mut resp = [0u8; 8];
        let r = self.client.send_synchronous_request(
            b"after",
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(2000)),
        );
        ok &= matches!(r, Ok(8)) && resp[..5] == *b"after";
        ok
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        drop(self.prober.stash.lock().client.take());
        let _ = self.client.disable();
        let _ = self.server.disable();
        sys::flush_work();
    }
}

#[kunit_tests(kmcl_contexts)]
mod tests {
    use super::*;

    #[test]
    fn blocking_calls_from_process_packet_in_softirq_are_refused() -> Result {
        let s = Setup::new(false)?;
        s.stash()?;
        s.prober.in_packet.store(true, Ordering::Relaxed);
        harness::send(&s.client, b"probe", false)?;
        assert!(wait_for(2000, || s.prober.ran.load(Ordering::Acquire)));
        assert!(s.prober.softirq.load(Ordering::Relaxed));
        assert!(s.check_atomic_refused());
        Ok(())
    }

    #[test]
    fn blocking_calls_with_bottom_halves_disabled_are_refused() -> Result {
        let s = Setup::new(false)?;
        s.stash()?;
        // The probe packet the softirq case counts.
        harness::send(&s.client, b"count", false)?;
        assert!(wait_for(2000, || s.server.counters().packets_received == 1));
        sys::with_bh_disabled(|| s.prober.probe_atomic(&s.server));
        assert!(s.check_atomic_refused());
        Ok(())
    }

    #[test]
    fn lifecycle_calls_from_own_state_callback_are_refused() -> Result {
        let s = Setup::new(true)?;
        assert!(wait_for(2000, || s.prober.ran.load(Ordering::Acquire)));
        for (i, name) in CALLBACK_CALLS.iter().enumerate() {
            let e = s.prober.results[i].load(Ordering::Relaxed);
            if e != EDEADLK.to_errno() {
                pr_err!("kunit: {} from a state callback gave {}\n", name, e);
            }
            assert_eq!(e, EDEADLK.to_errno());
        }
        // What may wait in a state callback still does.
        assert_eq!(s.prober.wait_sends_in_callback.load(Ordering::Relaxed), 0);
        // Nothing happened: still Started, no restore chunk taken, and
        // requests still flow.
        assert_eq!(s.server.state(), State::Started);
        assert_eq!(s.client.state(), State::Started);
        assert!(s.server.inner.lock().restore_buf.is_empty());
        let mut resp = [0u8; 8];
        let r = s.client.send_synchronous_request(
            b"after",
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(2000)),
        );
        assert_eq!(r, Ok(8));
        // The channel disables from process context as before.
        assert_eq!(s.server.disable(), Ok(()));
        assert_eq!(s.server.state(), State::Disabled);
        Ok(())
    }
}
