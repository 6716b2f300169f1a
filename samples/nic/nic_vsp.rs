// SPDX-License-Identifier: GPL-2.0

//! NIC VSP: the loopback "host" of the multi-queue NIC sample.
//!
//! It offers instances 1 to 4 of the sample NIC interface on kmcl's
//! loopback bus: instance 1 for the NIC VSC module, the others for the VSC's
//! KUnit suite. Each connection is a primary channel (queue 0) and up to
//! three sub-channels (queues 1 to 3), which it offers when the VSC asks.
//! For each queue it maps the receive buffer the VSC shares by GPADL,
//! writes frames into it and hands them over in transfer-page packets, and
//! it reads the frames the VSC sends by GPA direct.
//!
//! The protocol and the frame format are in `nic_proto.rs`.

use core::sync::atomic::{
    AtomicU64,
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
};

use kmcl::{
    loopback,
    Bus,
    Channel,
    ChannelHandle,
    Endpoint,
    GpadlMapping,
    Guid,
    IncomingPacket,
    Packet,
    PacketCompletion,
    ProcessPacket,
    SendFlags,
    StateChange,
    TransferRange, //
};

#[path = "nic_proto.rs"]
mod proto;

use proto::{
    build_frame,
    check_frame,
    le_u16,
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
    type: NicVsp,
    name: "nic_vsp",
    authors: ["The kmcl developers"],
    description: "kmcl sample: multi-queue NIC VSP over the loopback transport",
    license: "GPL",
}

/// This module: the owner of its channels.
static THIS_MODULE: ThisModule = <NicVsp as kernel::ModuleMetadata>::THIS_MODULE;

/// The completion status of a refused request (`nic_proto.rs`).
const STATUS_REFUSED: u32 = 1;

/// Queues of a connection, queue 0 (the primary) included.
const MAX_QUEUES: u16 = 4;
/// Instances offered.
const INSTANCES: u8 = 4;

/// What a queue sends: its receive buffer and the frames still to write.
struct Tx {
    mapping: Option<GpadlMapping>,
    pageset: u16,
    next_seq: u32,
    remaining: u32,
    in_flight: usize,
}

/// One queue of a connection: a channel's callbacks and counters.
#[pin_data]
struct VspQueue {
    index: u16,
    #[pin]
    tx: SpinLockIrq<Tx>,
    /// The next sequence number expected from the VSC.
    #[pin]
    rx_next: SpinLockIrq<u32>,
    sent: AtomicU64,
    completed: AtomicU64,
    received: AtomicU64,
    bad: AtomicU64,
}

impl VspQueue {
    fn new(index: u16) -> Result<Arc<VspQueue>> {
        Arc::pin_init(
            try_pin_init!(VspQueue {
                index,
                tx <- new_spinlock_irq!(Tx {
                    mapping: None,
                    pageset: 0,
                    next_seq: 0,
                    remaining: 0,
                    in_flight: 0,
                }, "nic_vsp::VspQueue::tx"),
                rx_next <- new_spinlock_irq!(0, "nic_vsp::VspQueue::rx_next"),
                sent: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                received: AtomicU64::new(0),
                bad: AtomicU64::new(0),
            }),
            GFP_KERNEL,
        )
    }

    /// A new connection: no buffer, sequence numbers from 0. The mapping
    /// goes, so that the VSC can delete its GPADL.
    fn reset(&self) {
        let old = {
            let mut tx = self.tx.lock();
            tx.next_seq = 0;
            tx.remaining = 0;
            tx.mapping.take()
        };
        *self.rx_next.lock() = 0;
        drop(old);
    }

    /// Writes the next frame into `slot` and sends it with `packet`; the
    /// packet goes back to its pool when there is nothing to send.
    fn send_next(&self, tx: &mut Tx, packet: Packet, slot: usize) {
        if tx.remaining == 0 {
            return;
        }
        let Some(m) = tx.mapping.as_ref() else {
            return;
        };
        let mut f = [0u8; SLOT_SIZE];
        let n = build_frame(self.index, tx.next_seq, &mut f);
        let off = slot * SLOT_SIZE;
        if m.write(off, &f[..n]).is_err() {
            return;
        }
        let range = [TransferRange {
            byte_count: n as u32,
            byte_offset: off as u32,
        }];
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&MSG_RX.to_le_bytes());
        hdr[4..].copy_from_slice(&u32::from(self.index).to_le_bytes());
        let flags = SendFlags::WAIT_FOR_COMPLETION;
        if packet
            .send_transfer_pages(m, tx.pageset, &range, &hdr, flags)
            .is_ok()
        {
            tx.next_seq = tx.next_seq.wrapping_add(1);
            tx.remaining -= 1;
            tx.in_flight += 1;
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `TRANSMIT`: queues `frames` more; starts the slots if none is busy.
    fn transmit(self: &Arc<Self>, channel: &Channel, frames: u32) -> Result {
        let mut tx = self.tx.lock();
        if tx.mapping.is_none() {
            return Err(EINVAL);
        }
        tx.remaining = tx.remaining.saturating_add(frames);
        if tx.in_flight != 0 {
            // The busy slots carry on until `remaining` is spent.
            return Ok(());
        }
        for slot in 0..SLOTS {
            let mut p = channel.packet_allocate()?;
            p.set_completion(Arc::new(
                Slot {
                    queue: self.clone(),
                    slot,
                },
                GFP_ATOMIC,
            )?);
            self.send_next(&mut tx, p, slot);
        }
        Ok(())
    }

    /// `FRAME`: checks a frame the VSC sent by GPA direct.
    fn frame(&self, packet: &IncomingPacket) -> bool {
        let Some(ext) = packet.external_data() else {
            return false;
        };
        let mut f = [0u8; SLOT_SIZE];
        let len = ext.total_bytes() as usize;
        if len > SLOT_SIZE || ext.copy_to(&mut f[..len]) != Ok(len) {
            return false;
        }
        let Ok((queue, seq)) = check_frame(&f[..len]) else {
            return false;
        };
        let mut next = self.rx_next.lock();
        if queue != self.index || seq != *next {
            return false;
        }
        *next = next.wrapping_add(1);
        true
    }

    fn process(self: &Arc<Self>, channel: &Channel, packet: IncomingPacket) {
        let d = packet.data();
        let ok = match le_u32(d, 0) {
            Some(MSG_TRANSMIT) => {
                let frames = le_u32(d, 4).unwrap_or(0);
                self.transmit(channel, frames).is_ok()
            }
            Some(MSG_FRAME) => {
                let ok = self.frame(&packet);
                let c = if ok { &self.received } else { &self.bad };
                c.fetch_add(1, Ordering::Relaxed);
                ok
            }
            _ => false,
        };
        let status = if ok { STATUS_OK } else { STATUS_REFUSED };
        let _ = packet.complete(&status.to_le_bytes());
    }
}

/// The completion of a transfer-page packet: frees its slot, which takes
/// the queue's next frame.
struct Slot {
    queue: Arc<VspQueue>,
    slot: usize,
}

impl PacketCompletion for Slot {
    fn completed(&self, packet: Packet, status: Result, _response: &[u8]) {
        let q = &self.queue;
        let mut tx = q.tx.lock();
        tx.in_flight -= 1;
        if status.is_ok() {
            q.completed.fetch_add(1, Ordering::Relaxed);
            q.send_next(&mut tx, packet, self.slot);
        }
    }
}

/// The callbacks of a sub-channel: its queue.
struct SubQueue(Arc<VspQueue>);

impl ProcessPacket for SubQueue {
    fn process_packet(&self, channel: &Channel, packet: IncomingPacket) {
        self.0.process(channel, packet);
    }
}

impl StateChange for SubQueue {
    fn closed(&self, _channel: &Channel) {
        self.0.reset();
    }
}

/// One offered instance: its primary's callbacks, and its queues.
#[pin_data]
struct Instance {
    /// Queue 0, carried by the primary.
    queue0: Arc<VspQueue>,
    /// The sub-channels of the current connection, and their queues.
    #[pin]
    subs: Mutex<KVec<(ChannelHandle, Arc<VspQueue>)>>,
}

impl Instance {
    fn new() -> impl PinInit<Instance, Error> {
        try_pin_init!(Instance {
            queue0: VspQueue::new(0)?,
            subs <- new_mutex!(KVec::new(), "nic_vsp::Instance::subs"),
        })
    }

    /// `SUBCHANNEL_REQUEST`: offers up to `wanted` sub-channels; returns
    /// how many were offered, those before a failed one. Those of an
    /// earlier connection go first.
    fn offer(&self, primary: &Channel, wanted: u32) -> u32 {
        let mut subs = self.subs.lock();
        let old = core::mem::take(&mut *subs);
        // Disables the earlier connection's sub-channels.
        drop(old);
        let mut offered = 0;
        for i in 1..=wanted.min(u32::from(MAX_QUEUES - 1)) {
            if Self::offer_one(primary, &mut subs, i as u16).is_err() {
                break;
            }
            offered = i;
        }
        offered
    }

    /// Offers the sub-channel of queue `queue`.
    fn offer_one(
        primary: &Channel,
        subs: &mut KVec<(ChannelHandle, Arc<VspQueue>)>,
        queue: u16,
    ) -> Result {
        let q = VspQueue::new(queue)?;
        let cb = Arc::new(SubQueue(q.clone()), GFP_KERNEL)?;
        let mut h = Channel::builder(Endpoint::Server, &THIS_MODULE)
            .friendly_name(c"nic-vsp-queue")
            .process_packet_callbacks(cb.clone())
            .state_change_callbacks(cb)
            .build()?;
        subs.reserve(1, GFP_KERNEL)?;
        // The sub-channel index grows over the primary's connections; the
        // queue number is the order of the offer.
        primary.offer_subchannel(&mut h)?;
        subs.push((h, q), GFP_KERNEL)?;
        Ok(())
    }

    /// `RECEIVE_BUFFER`: maps the VSC's buffer for queue `queue`.
    fn receive_buffer(&self, primary: &Channel, d: &[u8]) -> Result {
        let queue = le_u16(d, 4).ok_or(EINVAL)?;
        let pageset = le_u16(d, 6).ok_or(EINVAL)?;
        let gpadl = le_u32(d, 8).ok_or(EINVAL)?;
        let len = le_u32(d, 12).ok_or(EINVAL)? as usize;
        let q = if queue == 0 {
            self.queue0.clone()
        } else {
            let subs = self.subs.lock();
            subs.get(usize::from(queue) - 1).ok_or(EINVAL)?.1.clone()
        };
        let m = primary.map_gpadl(gpadl)?;
        if len < SLOTS * SLOT_SIZE || m.len() < SLOTS * SLOT_SIZE {
            return Err(EINVAL);
        }
        let old = {
            let mut tx = q.tx.lock();
            tx.pageset = pageset;
            tx.mapping.replace(m)
        };
        drop(old);
        Ok(())
    }

    /// Adds up the counters of every queue, in queue order.
    fn report(&self) {
        let subs = self.subs.lock();
        let queues = core::iter::once(&self.queue0);
        for q in Iterator::chain(queues, subs.iter().map(|(_, q)| q)) {
            pr_info!(
                "queue {}: {} frames sent by transfer pages, {} completed; {} GPA-direct frames received intact, {} bad\n",
                q.index,
                q.sent.load(Ordering::Relaxed),
                q.completed.load(Ordering::Relaxed),
                q.received.load(Ordering::Relaxed),
                q.bad.load(Ordering::Relaxed)
            );
        }
    }
}

impl ProcessPacket for Instance {
    // The primary delivers at passive level: offering sub-channels and
    // mapping GPADLs sleep.
    fn process_packet(&self, channel: &Channel, packet: IncomingPacket) {
        let d = packet.data();
        let reply = match le_u32(d, 0) {
            Some(MSG_SUBCHANNEL_REQUEST) => {
                let wanted = le_u32(d, 4).unwrap_or(0);
                (STATUS_OK, self.offer(channel, wanted))
            }
            Some(MSG_RECEIVE_BUFFER) => match self.receive_buffer(channel, d) {
                Ok(()) => (STATUS_OK, 0),
                Err(_) => (STATUS_REFUSED, 0),
            },
            _ => return self.queue0.process(channel, packet),
        };
        let mut r = [0u8; 8];
        r[..4].copy_from_slice(&reply.0.to_le_bytes());
        r[4..].copy_from_slice(&reply.1.to_le_bytes());
        let _ = packet.complete(&r);
    }
}

impl StateChange for Instance {
    fn closed(&self, _channel: &Channel) {
        self.queue0.reset();
    }
}

struct NicVsp {
    /// Each instance's primary, whose driver data is the [`Instance`]; the
    /// primaries are disabled (their sub-channels with them) before the
    /// instances go.
    servers: KVec<ChannelHandle>,
}

impl kernel::Module for NicVsp {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let bus = loopback::default_bus()?;
        let mut servers = KVec::new();
        for instance in 1..=INSTANCES {
            let mut inst = [0u8; 16];
            inst[15] = instance;
            let mut h = Channel::builder(Endpoint::Server, &THIS_MODULE)
                .friendly_name(c"nic-vsp")
                .driver(Instance::new())
                .vmbus_handle(Bus::Loopback(bus.clone()))
                .target_interface_id(NIC_TYPE, Guid(inst))
                .build()?;
            h.set_incoming_processing_at_passive(true);
            h.enable()?;
            servers.push(h, GFP_KERNEL)?;
        }
        pr_info!(
            "offering the NIC interface ({} instances, up to {} queues each)\n",
            INSTANCES,
            MAX_QUEUES
        );
        Ok(NicVsp { servers })
    }
}

impl Drop for NicVsp {
    fn drop(&mut self) {
        for h in self.servers.iter() {
            if let Err(e) = h.disable() {
                pr_err!("nic_vsp: disable failed: {:?}\n", e);
            }
        }
        if let Some(inst) = self.servers.first().and_then(|h| h.data::<Instance>()) {
            inst.report();
        }
        for inst in self.servers.iter().filter_map(|h| h.data::<Instance>()) {
            drop(core::mem::take(&mut *inst.subs.lock()));
        }
    }
}
