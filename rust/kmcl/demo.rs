// SPDX-License-Identifier: GPL-2.0

//! The `demo` module parameter: at load, connect a loopback echo server and
//! a client, exchange packets, and keep both open until unload so that their
//! debugfs status can be read. `make run` loads kmcl with `demo=1`.

use core::sync::atomic::{
    AtomicU32,
    Ordering, //
};

use kernel::{
    prelude::*,
    sync::Arc,
    time::{
        delay::fsleep,
        Delta, //
    },
};

use crate::{
    channel::{
        callbacks::{
            ProcessPacket,
            StateChange, //
        },
        incoming::IncomingPacket,
        outgoing::SendFlags,
        Channel,
        ChannelHandle,
        Endpoint,
        State, //
    },
    transport::{
        loopback::LoopbackBus,
        Bus, //
    },
    wire::guid::Guid,
};

const DEMO_TYPE: Guid = Guid::from_str_const("6b2a0e64-7c1f-4f6e-9d1e-4b5c2d3e8f01");
const DEMO_INSTANCE: Guid = Guid::from_str_const("00000000-0000-0000-0000-000000000001");

/// Echoes every packet back in its completion.
struct Echo {
    packets: AtomicU32,
}

impl ProcessPacket for Echo {
    fn process_packet(&self, _channel: &Channel, packet: IncomingPacket) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        let d = packet.data();
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        let _ = packet.complete(&buf[..n]);
    }
}

impl StateChange for Echo {}

/// The running demo; dropping it closes both channels.
pub(crate) struct Demo {
    _bus: Arc<LoopbackBus>,
    client: ChannelHandle,
    server: ChannelHandle,
}

fn endpoint(
    bus: &Arc<LoopbackBus>,
    e: Endpoint,
    cb: &Arc<Echo>,
    name: &CStr,
) -> Result<ChannelHandle> {
    let b = Channel::builder(e, &crate::THIS_MODULE)
        .friendly_name(name)
        .process_packet_callbacks(cb.clone())
        .state_change_callbacks(cb.clone())
        .vmbus_handle(Bus::Loopback(bus.clone()));
    let mut h = match e {
        Endpoint::Server => b.target_interface_id(DEMO_TYPE, DEMO_INSTANCE),
        Endpoint::Client => b.target_pnp(DEMO_TYPE, None),
    }
    .build()?;
    h.enable()?;
    Ok(h)
}

impl Demo {
    pub(crate) fn run() -> Result<Demo> {
        let bus = LoopbackBus::new()?;
        let server_cb = Arc::new(
            Echo {
                packets: AtomicU32::new(0),
            },
            GFP_KERNEL,
        )?;
        let client_cb = Arc::new(
            Echo {
                packets: AtomicU32::new(0),
            },
            GFP_KERNEL,
        )?;
        let server = endpoint(&bus, Endpoint::Server, &server_cb, c"demo-server")?;
        let client = endpoint(&bus, Endpoint::Client, &client_cb, c"demo-client")?;
        client.wait_for_state(State::Started, Delta::from_millis(5000))?;
        server.wait_for_state(State::Started, Delta::from_millis(5000))?;
        pr_info!("demo: loopback client and echo server connected\n");
        let mut answered = 0;
        for i in 0..8u64 {
            let mut resp = [0u8; 16];
            let req = (0x1000 + i).to_le_bytes();
            let n = client.send_synchronous_request(
                &req,
                SendFlags::WAIT_FOR_COMPLETION,
                &mut resp,
                Some(Delta::from_millis(2000)),
            )?;
            if resp[..n.min(8)] == req[..] {
                answered += 1;
            }
        }
        for i in 0..32u64 {
            let p = client.packet_allocate()?;
            p.send(&i.to_le_bytes(), SendFlags::NONE)
                .map_err(|e| e.error)?;
        }
        let mut waited = 0;
        while server_cb.packets.load(Ordering::Relaxed) < 40 && waited < 2000 {
            fsleep(Delta::from_millis(1));
            waited += 1;
        }
        pr_info!(
            "demo: {} synchronous requests echoed, {} packets received by the server\n",
            answered,
            server_cb.packets.load(Ordering::Relaxed)
        );
        Ok(Demo {
            _bus: bus,
            client,
            server,
        })
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.client.disable();
        let _ = self.server.disable();
        pr_info!("demo: channels closed\n");
    }
}
