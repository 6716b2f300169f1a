// SPDX-License-Identifier: GPL-2.0

//! Which module owns each channel, so that kmcl never calls into a module
//! that has gone.
//!
//! Every [`ChannelHandle`](super::ChannelHandle) is recorded here with the
//! module that built it, from [`ChannelBuilder::build`](super::ChannelBuilder::build) until the handle is
//! dropped. A module that drops its handles in its exit, as it should,
//! leaves nothing behind. One that leaked a handle (forgot it, or lost it on
//! an error path) would leave kmcl holding callbacks into code about to be
//! freed: when the kernel announces that the module is going away (after
//! its exit ran, before its memory is freed), kmcl disables each such
//! channel, which waits for every call into the driver to return, and drops
//! the driver's callbacks, so that nothing of the module can be reached
//! again.

use kernel::{
    bindings,
    prelude::*,
    sync::Arc, //
};

use super::Channel;

/// A live channel handle and the module that allocated it.
struct Owned {
    module: &'static ThisModule,
    chan: Arc<Channel>,
}

kernel::sync::global_lock! {
    // SAFETY: `init` runs in kmcl's module init, before any channel exists.
    unsafe(uninit) static OWNED: Mutex<KVec<Owned>> = KVec::new();
}

/// Makes the registry usable. Called once, from kmcl's module init.
pub(crate) fn init() {
    // SAFETY: called once, before any other use of `OWNED`.
    unsafe { OWNED.init() };
}

/// Records `chan` as owned by `module`.
pub(crate) fn add(module: &'static ThisModule, chan: Arc<Channel>) -> Result {
    OWNED.lock().push(Owned { module, chan }, GFP_KERNEL)?;
    Ok(())
}

/// The module that owns `chan`, while its handle lives.
pub(crate) fn module_of(chan: &Channel) -> Option<&'static ThisModule> {
    let g = OWNED.lock();
    g.iter()
        .find(|o| core::ptr::eq(&*o.chan, chan))
        .map(|o| o.module)
}

/// Forgets `chan`: its handle was dropped.
pub(crate) fn remove(chan: &Channel) {
    let gone = {
        let mut g = OWNED.lock();
        let pos = g.iter().position(|o| core::ptr::eq(&*o.chan, chan));
        pos.and_then(|i| g.remove(i).ok())
    };
    // The last reference may go here: outside the registry's lock.
    drop(gone);
}

/// Takes one channel of `module` out of the registry, if one is left.
fn take_one(module: *mut bindings::module) -> Option<Arc<Channel>> {
    let mut g = OWNED.lock();
    let pos = g.iter().position(|o| o.module.as_ptr() == module)?;
    g.remove(pos).ok().map(|o| o.chan)
}

/// Called by the kernel's module notifier (`rust/helpers/sys.c`) when a
/// module is going away: its exit has run (or its init failed), its memory
/// is not freed yet. Process context.
///
/// # Safety
///
/// `module` is the module being removed; it is only compared, never
/// dereferenced.
#[no_mangle]
pub(crate) unsafe extern "C" fn kmcl_module_going(module: *mut bindings::module) {
    while let Some(chan) = take_one(module) {
        pr_err!(
            "channel {}: its module went away without dropping it; disabling it\n",
            chan.id()
        );
        // Process context, outside every callback of the channel: it runs.
        let _ = chan.disable();
        chan.drop_driver_callbacks();
    }
}
