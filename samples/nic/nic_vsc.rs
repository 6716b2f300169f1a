// SPDX-License-Identifier: GPL-2.0

//! NIC VSC: a multi-queue client shaped like a synthetic NIC.
//!
//! It opens the primary channel of the sample NIC interface (queue 0), asks
//! the NIC VSP for sub-channels in the sample's protocol (described in
//! `nic_proto.rs`) and opens each one offered as a queue with its own
//! callbacks and target CPU. Each queue has a receive buffer of its own:
//! kmcl allocates it and shares it by GPADL on the primary (GPADLs belong
//! to the primary), the queue's channel registers it under page-set id
//! [`PAGESET`], and the VSP is told of it. Frames arrive in transfer-page
//! packets, are copied out and checked (queue, sequence number, checksum)
//! and each packet is completed; frames go to the VSP by GPA direct.
//!
//! At load it moves frames over the four queues of instance 1 and logs
//! each queue's counters; its KUnit suite `kmcl_sample_nic` moves 100 000.

use core::sync::atomic::{
    AtomicU32,
    AtomicU64,
    Ordering, //
};

use kernel::{
    new_condvar, new_mutex, new_spinlock_irq,
    prelude::*,
    sync::{
        Arc,
        CondVar,
        CondVarTimeoutResult,
        Mutex,
        SpinLockIrq, //
    },
    time::{
        msecs_to_jiffies,
        Delta, //
    },
};

use kmcl::{
    loopback,
    Bus,
    Channel,
    ChannelBuilder,
    ChannelHandle,
    Endpoint,
    Gpadl,
    GpadlFlags,
    Guid,
    IncomingPacket,
    Mdl,
    Packet,
    PacketCompletion,
    ProcessPacket,
    SendFlags,
    State,
    StateChange,
    SubchannelOffer, //
};

#[path = "nic_proto.rs"]
mod proto;

use proto::{
    build_frame,
    check_frame,
    le_u32,
    MSG_FRAME,
    MSG_RECEIVE_BUFFER,
    MSG_RX,
    MSG_SUBCHANNEL_REQUEST,
    MSG_TRANSMIT,
    NIC_TYPE,
    SLOTS,
    SLOT_SIZE,
    STATUS_OK, //
};

module! {
    type: NicVsc,
    name: "nic_vsc",
    authors: ["The kmcl developers"],
    description: "kmcl sample: multi-queue NIC VSC over the loopback transport",
    license: "GPL",
}

/// This module: the owner of its channels.
static THIS_MODULE: ThisModule = <NicVsc as kernel::ModuleMetadata>::THIS_MODULE;

/// The page-set id of every queue's receive buffer (each channel has its
/// own registry).
const PAGESET: u16 = 0xcafe;
/// Bytes of a queue's receive buffer.
const BUFFER_LEN: usize = SLOTS * SLOT_SIZE;
/// GPA-direct sends in flight on a queue at most.
const TX_BATCH: u32 = 32;
const TIMEOUT_MS: u32 = 10_000;

/// The CPU of queue `q`: one each, as far as there are CPUs.
fn queue_cpu(q: u16) -> u32 {
    u32::from(q)
        .checked_rem(kernel::cpu::nr_cpu_ids())
        .unwrap_or(0)
}

/// What a queue received.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct RxStats {
    /// The sequence number expected next.
    next: u32,
    /// Frames intact, of this queue and not seen before.
    received: u64,
    /// Transfer-page packets completed back to the VSP.
    completed: u64,
    /// Sequence numbers skipped: frames lost (or reordered).
    lost: u64,
    /// Frames whose sequence number was already seen: duplicated (or
    /// reordered).
    duplicated: u64,
    /// Frames failing their checksum or length, of another queue, or
    /// packets that were no frame.
    corrupt: u64,
}

impl RxStats {
    /// Accounts for a frame of `queue` with sequence number `seq`, arriving
    /// on queue `own`.
    fn account(&mut self, own: u16, frame: Result<(u16, u32)>) {
        match frame {
            Ok((queue, seq)) if queue == own => {
                if seq == self.next {
                    self.received += 1;
                    self.next = seq.wrapping_add(1);
                } else if seq > self.next {
                    // Intact, but those before it went missing.
                    self.received += 1;
                    self.lost += u64::from(seq - self.next);
                    self.next = seq.wrapping_add(1);
                } else {
                    self.duplicated += 1;
                }
            }
            _ => self.corrupt += 1,
        }
    }

    /// Frames seen, whatever their fate.
    fn seen(&self) -> u64 {
        self.received + self.duplicated + self.corrupt
    }
}

/// What a queue sent by GPA direct: the typed completion of its packets.
#[derive(Default)]
struct TxStats {
    sent: AtomicU64,
    /// Completed by the VSP as intact and in order.
    acked: AtomicU64,
    /// Completed otherwise, or failed.
    failed: AtomicU64,
}

impl PacketCompletion for TxStats {
    fn completed(&self, packet: Packet, status: Result, response: &[u8]) {
        let c = match (status, le_u32(response, 0)) {
            (Ok(()), Some(STATUS_OK)) => &self.acked,
            _ => &self.failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
        // Back to the pool, with its pages.
        drop(packet);
    }
}

/// One queue: the callbacks of its channel, and its counters.
#[pin_data]
struct Queue {
    number: u16,
    #[pin]
    rx: SpinLockIrq<RxStats>,
    #[pin]
    changed: CondVar,
    tx: Arc<TxStats>,
    /// The receive buffer's GPADL, taken back at Closed, deleted once the
    /// primary is disabled.
    #[pin]
    left: Mutex<Option<Gpadl>>,
}

impl Queue {
    fn new(number: u16) -> Result<Arc<Queue>> {
        Arc::pin_init(
            try_pin_init!(Queue {
                number,
                rx <- new_spinlock_irq!(RxStats::default(), "nic_vsc::Queue::rx"),
                changed <- new_condvar!("nic_vsc::Queue::changed"),
                tx: Arc::new(TxStats::default(), GFP_KERNEL)?,
                left <- new_mutex!(None, "nic_vsc::Queue::left"),
            }),
            GFP_KERNEL,
        )
    }

    fn rx(&self) -> RxStats {
        *self.rx.lock()
    }

    /// Waits in process context until `frames` frames were seen and their
    /// packets completed, at most `timeout_ms`.
    fn wait_seen(&self, frames: u64, timeout_ms: u32) -> Result<RxStats> {
        let mut left = msecs_to_jiffies(timeout_ms);
        let mut g = self.rx.lock();
        while g.seen() < frames || g.completed < frames {
            match self.changed.wait_interruptible_timeout(&mut g, left) {
                CondVarTimeoutResult::Woken { jiffies } => left = jiffies,
                CondVarTimeoutResult::Timeout => return Err(ETIMEDOUT),
                CondVarTimeoutResult::Signal { .. } => return Err(ERESTARTSYS),
            }
        }
        Ok(*g)
    }
}

impl ProcessPacket for Queue {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        let frame = match packet.transfer_pages() {
            Some(tp) if le_u32(packet.data(), 0) == Some(MSG_RX) => {
                let mut f = [0u8; SLOT_SIZE];
                match tp.range(0) {
                    Some(r) if tp.len() == 1 && r.byte_count as usize <= SLOT_SIZE => {
                        let f = &mut f[..r.byte_count as usize];
                        tp.read(0, 0, f).and_then(|()| check_frame(f))
                    }
                    _ => Err(EBADMSG),
                }
            }
            // Nothing else comes unsolicited.
            _ => Err(EPROTO),
        };
        let done = packet.complete(&[]).is_ok();
        {
            let mut g = self.rx.lock();
            g.account(self.number, frame);
            if done {
                g.completed += 1;
            }
        }
        self.changed.notify_all();
    }
}

impl StateChange for Queue {
    fn closed(&self, channel: &Channel) {
        // Every packet is finished by now: the buffer comes back at once.
        if let Ok(g) = channel.unregister_receive_buffer(PAGESET, Delta::from_millis(1000)) {
            *self.left.lock() = Some(g);
        }
    }
}

/// A queue's channel and state. Queue 0 is the primary, whose handle the
/// [`Nic`] keeps.
struct QueueEntry {
    chan: Arc<Channel>,
    /// The sub-channel, kept open while held; `None` for queue 0.
    _handle: Option<ChannelHandle>,
    queue: Arc<Queue>,
}

/// The sub-channel offers of a NIC's primary, and its queues.
#[pin_data]
struct Queues {
    /// Queues wanted, queue 0 included; offers beyond are refused.
    wanted: AtomicU32,
    refused: AtomicU32,
    #[pin]
    list: Mutex<KVec<QueueEntry>>,
}

impl Queues {
    /// Opens an offered sub-channel as the next queue.
    fn take(&self, sub: ChannelBuilder) -> Result {
        let mut list = self.list.lock();
        let number = u16::try_from(list.len()).map_err(|_| EINVAL)?;
        if u32::from(number) >= self.wanted.load(Ordering::Relaxed) {
            return Err(ENOSPC);
        }
        let q = Queue::new(number)?;
        let mut sub = sub
            .friendly_name(c"nic-vsc-queue")
            .process_packet_callbacks(q.clone())
            .state_change_callbacks(q.clone())
            .build()?;
        sub.set_target_cpu(queue_cpu(number))?;
        list.reserve(1, GFP_KERNEL)?;
        sub.enable()?;
        list.push(
            QueueEntry {
                chan: sub.arc(),
                _handle: Some(sub),
                queue: q,
            },
            GFP_KERNEL,
        )?;
        Ok(())
    }
}

impl SubchannelOffer for Queues {
    fn subchannel_offered(&self, _primary: &Channel, sub: ChannelBuilder) {
        // A refused offer's handle is dropped, which refuses it.
        if self.take(sub).is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A NIC: its primary channel and its queues.
struct Nic {
    primary: ChannelHandle,
    queues: Arc<Queues>,
}

impl Nic {
    /// Opens the primary of `instance` on `bus`, with queue 0 only.
    fn open_primary(bus: Bus, instance: u8) -> Result<Nic> {
        let mut inst = [0u8; 16];
        inst[15] = instance;
        let queues = Arc::pin_init(
            try_pin_init!(Queues {
                wanted: AtomicU32::new(1),
                refused: AtomicU32::new(0),
                list <- new_mutex!(KVec::new(), "nic_vsc::Queues::list"),
            }),
            GFP_KERNEL,
        )?;
        let q0 = Queue::new(0)?;
        let h = Channel::builder(Endpoint::Client, &THIS_MODULE)
            .friendly_name(c"nic-vsc")
            .process_packet_callbacks(q0.clone())
            .state_change_callbacks(q0.clone())
            .subchannel_callback(queues.clone())
            .vmbus_handle(bus)
            .target_pnp(NIC_TYPE, Some(Guid(inst)))
            .build()?;
        h.set_target_cpu(0)?;
        queues.list.lock().push(
            QueueEntry {
                chan: h.arc(),
                _handle: None,
                queue: q0,
            },
            GFP_KERNEL,
        )?;
        let mut nic = Nic { primary: h, queues };
        nic.primary.enable()?;
        nic.primary
            .wait_for_state(State::Started, Delta::from_millis(5000))?;
        Ok(nic)
    }

    /// Opens the NIC of `instance` on `bus` with up to `queues` queues,
    /// each with its receive buffer announced to the VSP.
    fn open(bus: Bus, instance: u8, queues: u16) -> Result<Nic> {
        let nic = Nic::open_primary(bus, instance)?;
        let granted = nic.request_subchannels(queues.saturating_sub(1))?;
        if nic.queue_count() != usize::from(granted) + 1 {
            return Err(EPROTO);
        }
        for q in 0..granted + 1 {
            nic.attach_buffer(q)?;
        }
        Ok(nic)
    }

    /// A synchronous request on the primary; returns the second word of
    /// the response, or `EPROTO` for a refusal.
    fn request(&self, msg: &[u8]) -> Result<u32> {
        let mut resp = [0u8; 8];
        let n = self.primary.send_synchronous_request(
            msg,
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(5000)),
        )?;
        if n < 8 || le_u32(&resp, 0) != Some(STATUS_OK) {
            return Err(EPROTO);
        }
        le_u32(&resp, 4).ok_or(EPROTO)
    }

    /// Asks for `n` sub-channels; returns how many the VSP granted, all of
    /// them open when this returns (the VSP offers before it answers).
    fn request_subchannels(&self, n: u16) -> Result<u16> {
        self.queues
            .wanted
            .store(u32::from(n) + 1, Ordering::Relaxed);
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&MSG_SUBCHANNEL_REQUEST.to_le_bytes());
        msg[4..].copy_from_slice(&u32::from(n).to_le_bytes());
        let r = self.request(&msg);
        let granted = r.as_ref().map_or(0, |g| (*g).min(u32::from(n)));
        // Later offers are refused.
        self.queues.wanted.store(granted + 1, Ordering::Relaxed);
        r?;
        u16::try_from(granted).map_err(|_| EPROTO)
    }

    /// Number of open queues, queue 0 included.
    fn queue_count(&self) -> usize {
        self.queues.list.lock().len()
    }

    /// Queue `q`'s channel and state.
    fn queue(&self, q: u16) -> Result<(Arc<Channel>, Arc<Queue>)> {
        let list = self.queues.list.lock();
        let e = list.get(usize::from(q)).ok_or(EINVAL)?;
        Ok((e.chan.clone(), e.queue.clone()))
    }

    /// Shares queue `q`'s receive buffer, registers it on the queue's
    /// channel and tells the VSP.
    fn attach_buffer(&self, q: u16) -> Result {
        let (chan, _) = self.queue(q)?;
        // GPADLs belong to the primary.
        let g = self
            .primary
            .create_gpadl_shared(BUFFER_LEN, GpadlFlags::NONE)?;
        let id = g.id();
        chan.register_receive_buffer(PAGESET, g).map_err(|(e, g)| {
            drop(g);
            e
        })?;
        let mut msg = [0u8; 16];
        msg[..4].copy_from_slice(&MSG_RECEIVE_BUFFER.to_le_bytes());
        msg[4..6].copy_from_slice(&q.to_le_bytes());
        msg[6..8].copy_from_slice(&PAGESET.to_le_bytes());
        msg[8..12].copy_from_slice(&id.to_le_bytes());
        msg[12..16].copy_from_slice(&(BUFFER_LEN as u32).to_le_bytes());
        self.request(&msg)?;
        Ok(())
    }

    /// Asks the VSP to send `frames` frames on queue `q`.
    fn transmit_request(&self, q: u16, frames: u32) -> Result {
        let (chan, _) = self.queue(q)?;
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&MSG_TRANSMIT.to_le_bytes());
        msg[4..].copy_from_slice(&frames.to_le_bytes());
        let mut resp = [0u8; 8];
        chan.send_synchronous_request(
            &msg,
            SendFlags::WAIT_FOR_COMPLETION,
            &mut resp,
            Some(Delta::from_millis(5000)),
        )?;
        if le_u32(&resp, 0) != Some(STATUS_OK) {
            return Err(EPROTO);
        }
        Ok(())
    }

    /// Sends frames `first..first + n` of queue `q` to the VSP by GPA
    /// direct, at most [`TX_BATCH`] in flight; returns once all completed.
    fn send_frames(&self, q: u16, first: u32, n: u32) -> Result {
        let (chan, queue) = self.queue(q)?;
        let mut seq = first;
        let end = first + n;
        while seq < end {
            let batch_end = end.min(seq + TX_BATCH);
            while seq < batch_end {
                let mut f = [0u8; SLOT_SIZE];
                let len = build_frame(q, seq, &mut f);
                let mdl = Mdl::from_bytes(&f[..len])?;
                let mut hdr = [0u8; 8];
                hdr[..4].copy_from_slice(&MSG_FRAME.to_le_bytes());
                hdr[4..].copy_from_slice(&(len as u32).to_le_bytes());
                let mut p = chan.packet_allocate()?;
                p.set_completion(queue.tx.clone());
                p.send_with_external_mdl(&hdr, mdl, SendFlags::WAIT_FOR_COMPLETION)
                    .map_err(|e| e.error)?;
                queue.tx.sent.fetch_add(1, Ordering::Relaxed);
                seq += 1;
            }
            chan.wait_sends_finished(Delta::from_millis(5000))?;
        }
        Ok(())
    }

    /// Logs each queue's counters.
    fn report(&self) {
        let list = self.queues.list.lock();
        for e in list.iter() {
            let rx = e.queue.rx();
            let tx = &e.queue.tx;
            pr_info!(
                "queue {} (sub-channel {}, cpu {}): {} frames received, {} completed, {} lost, {} duplicated, {} corrupt; {} sent by GPA direct, {} completed intact\n",
                e.queue.number,
                e.chan.subchannel_index(),
                e.chan.target_cpu().unwrap_or(0),
                rx.received,
                rx.completed,
                rx.lost,
                rx.duplicated,
                rx.corrupt,
                tx.sent.load(Ordering::Relaxed),
                tx.acked.load(Ordering::Relaxed)
            );
        }
    }
}

impl Drop for Nic {
    fn drop(&mut self) {
        // Closes the sub-channels first, then the primary; every queue's
        // Closed has taken its buffer back when this returns.
        if let Err(e) = self.primary.disable() {
            pr_err!("nic_vsc: disable failed: {:?}\n", e);
        }
        let list = core::mem::take(&mut *self.queues.list.lock());
        for e in list.iter() {
            // Deleting the GPADL waits until the VSP unmapped it, which it
            // does at its own Closed.
            drop(e.queue.left.lock().take());
        }
        drop(list);
    }
}

/// Moves `frames` frames from the VSP to each queue of `nic` and `sent` to
/// the VSP on each, all queues at once; returns once every frame arrived.
fn run_traffic(nic: &Nic, frames: u32, sent: u32, timeout_ms: u32) -> Result {
    let n = u16::try_from(nic.queue_count()).map_err(|_| EINVAL)?;
    for q in 0..n {
        nic.transmit_request(q, frames)?;
    }
    for q in 0..n {
        nic.send_frames(q, 0, sent)?;
    }
    for q in 0..n {
        nic.queue(q)?.1.wait_seen(u64::from(frames), timeout_ms)?;
    }
    Ok(())
}

struct NicVsc {
    nic: Nic,
}

impl kernel::Module for NicVsc {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let nic = Nic::open(Bus::Loopback(loopback::default_bus()?), 1, 4)?;
        run_traffic(&nic, 2000, 100, TIMEOUT_MS)?;
        pr_info!(
            "{} queues open, receive buffers of {} bytes shared by GPADL\n",
            nic.queue_count(),
            BUFFER_LEN
        );
        nic.report();
        Ok(NicVsc { nic })
    }
}

impl Drop for NicVsc {
    fn drop(&mut self) {
        pr_info!("closing {} queues\n", self.nic.queue_count());
    }
}

#[cfg(CONFIG_KUNIT)]
#[kunit_tests(kmcl_sample_nic)]
mod tests {
    use super::*;
    use kmcl::loopback::LoopbackBus;

    fn default_bus() -> Result<Bus> {
        Ok(Bus::Loopback(loopback::default_bus()?))
    }

    #[test]
    fn frames_100000_across_4_queues_arrive_in_order_and_intact() -> Result {
        let nic = Nic::open(default_bus()?, 2, 4)?;
        assert_eq!(nic.queue_count(), 4);
        run_traffic(&nic, 25_000, 250, 30_000)?;
        for q in 0..4u16 {
            let (chan, queue) = nic.queue(q)?;
            let rx = queue.rx();
            assert_eq!(rx.received, 25_000);
            assert_eq!(rx.completed, 25_000);
            assert_eq!(rx.next, 25_000);
            assert_eq!((rx.lost, rx.duplicated, rx.corrupt), (0, 0, 0));
            assert_eq!(queue.tx.sent.load(Ordering::Relaxed), 250);
            assert_eq!(queue.tx.acked.load(Ordering::Relaxed), 250);
            assert_eq!(queue.tx.failed.load(Ordering::Relaxed), 0);
            assert_eq!(chan.target_cpu(), Some(queue_cpu(q)));
            assert_eq!((chan.subchannel_index() == 0), (q == 0));
        }
        Ok(())
    }

    #[test]
    fn a_request_beyond_the_vsp_maximum_gets_its_maximum() -> Result {
        let nic = Nic::open(default_bus()?, 3, 8)?;
        assert_eq!(nic.queue_count(), 4);
        run_traffic(&nic, 100, 10, TIMEOUT_MS)?;
        Ok(())
    }

    #[test]
    fn teardown_with_frames_in_flight_finishes_cleanly() -> Result {
        let nic = Nic::open(default_bus()?, 4, 4)?;
        for q in 0..4u16 {
            nic.transmit_request(q, 1_000_000)?;
        }
        let (_, q3) = nic.queue(3)?;
        q3.wait_seen(64, TIMEOUT_MS)?;
        // Disables the queues and the primary while the VSP keeps
        // sending, and deletes the GPADLs.
        drop(nic);
        let rx = q3.rx();
        assert!(rx.received >= 64 && rx.received < 1_000_000);
        assert_eq!((rx.lost, rx.duplicated, rx.corrupt), (0, 0, 0));
        // The VSP let go of everything: the instance works again, from
        // sequence number 0.
        let nic = Nic::open(default_bus()?, 4, 4)?;
        assert_eq!(nic.queue_count(), 4);
        run_traffic(&nic, 100, 10, TIMEOUT_MS)?;
        for q in 0..4u16 {
            let (_, queue) = nic.queue(q)?;
            let rx = queue.rx();
            assert_eq!((rx.received, rx.next), (100, 100));
            assert_eq!((rx.lost, rx.duplicated, rx.corrupt), (0, 0, 0));
            assert_eq!(queue.tx.acked.load(Ordering::Relaxed), 10);
        }
        Ok(())
    }

    /// A server on a private bus that accepts every request and grants no
    /// sub-channel.
    struct Grudging;

    impl ProcessPacket for Grudging {
        fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
            let _ = packet.complete(&[0u8; 8]);
        }
    }

    #[test]
    fn subchannels_are_refused_unless_the_primary_is_open_and_asked() -> Result {
        let bus = LoopbackBus::new()?;
        let mut inst = [0u8; 16];
        inst[15] = 1;
        let cb = Arc::new(Grudging, GFP_KERNEL)?;
        let mut server = Channel::builder(Endpoint::Server, &THIS_MODULE)
            .process_packet_callbacks(cb.clone())
            .vmbus_handle(Bus::Loopback(bus.clone()))
            .target_interface_id(NIC_TYPE, Guid(inst))
            .build()?;
        server.enable()?;
        let sub = || -> Result<ChannelHandle> {
            Channel::builder(Endpoint::Server, &THIS_MODULE)
                .process_packet_callbacks(cb.clone())
                .build()
        };
        // No client: the primary is not open.
        assert!(matches!(server.offer_subchannel(&mut sub()?), Err(e) if e == EINVAL));
        let nic = Nic::open(Bus::Loopback(bus.clone()), 1, 4)?;
        // Granted none: one queue, and an offer nobody asked for is
        // refused by the VSC.
        assert_eq!(nic.queue_count(), 1);
        server.offer_subchannel(&mut sub()?)?;
        assert_eq!(nic.queue_count(), 1);
        assert_eq!(nic.queues.refused.load(Ordering::Relaxed), 1);
        // The client closed: the primary is not open any more.
        drop(nic);
        assert!(matches!(server.offer_subchannel(&mut sub()?), Err(e) if e == EINVAL));
        server.disable()?;
        Ok(())
    }

    #[test]
    fn damaged_frames_are_told_apart() -> Result {
        let mut f = [0u8; SLOT_SIZE];
        let n = build_frame(2, 7, &mut f);
        assert_eq!(check_frame(&f[..n]), Ok((2, 7)));
        let mut s = RxStats {
            next: 7,
            ..RxStats::default()
        };
        s.account(2, check_frame(&f[..n]));
        // Again: duplicated. On another queue: corrupt.
        s.account(2, check_frame(&f[..n]));
        s.account(3, check_frame(&f[..n]));
        // A flipped payload byte, a truncated frame: corrupt.
        f[n - 1] ^= 1;
        s.account(2, check_frame(&f[..n]));
        f[n - 1] ^= 1;
        s.account(2, check_frame(&f[..n - 1]));
        // Frame 10 after 8 and 9 went missing: two lost.
        let m = build_frame(2, 10, &mut f);
        s.account(2, check_frame(&f[..m]));
        assert_eq!(
            (s.received, s.duplicated, s.corrupt, s.lost, s.next),
            (2, 1, 3, 2, 11)
        );
        Ok(())
    }
}
