// SPDX-License-Identifier: GPL-2.0

//! Save and restore of a server channel.

use kernel::prelude::*;

use super::{
    outgoing::Packet,
    Channel, //
};

impl Channel {
    pub(crate) fn restore_packet_transaction(&self, packet: Packet) -> Result {
        let (id, _) = packet.restore_parts();
        let mut g = self.inner.lock();
        g.tx.restore_slot(packet, id).map_err(|(e, _)| e)
    }
}
