// SPDX-License-Identifier: GPL-2.0

//! Typed flag sets: channel flags, server flags and GPADL flags. Each is a
//! set of the flags KMCL defines; a set with a bit KMCL does not define
//! cannot be made, so the setters that take one need no check of their own.

/// Defines a flag set: a `u32` newtype with one constant per flag, `NONE`,
/// `ALL`, and the set operations, all inline (nothing to export).
macro_rules! flag_set {
    (
        $(#[$meta:meta])*
        $name:ident {
            $(
                $(#[$fmeta:meta])*
                $flag:ident = $value:expr;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
        pub struct $name(u32);

        impl $name {
            /// The empty set.
            pub const NONE: $name = $name(0);
            $(
                $(#[$fmeta])*
                pub const $flag: $name = $name($value);
            )*
            /// Every flag of the set.
            pub const ALL: $name = $name(0 $(| $value)*);

            /// The set of `bits`; `None` when a bit is not a flag of the
            /// set.
            ///
            /// Context: any context.
            #[inline]
            pub const fn from_bits(bits: u32) -> Option<$name> {
                if bits & !Self::ALL.0 == 0 {
                    Some($name(bits))
                } else {
                    None
                }
            }

            /// The raw bits, as the KMCL interface carries them.
            ///
            /// Context: any context.
            #[inline]
            pub const fn bits(self) -> u32 {
                self.0
            }

            /// Whether every flag of `other` is in the set.
            ///
            /// Context: any context.
            #[inline]
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }

            /// Whether the set is empty.
            ///
            /// Context: any context.
            #[inline]
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
        }

        impl core::ops::BitOr for $name {
            type Output = $name;

            #[inline]
            fn bitor(self, rhs: $name) -> $name {
                $name(self.0 | rhs.0)
            }
        }

        impl core::ops::BitOrAssign for $name {
            #[inline]
            fn bitor_assign(&mut self, rhs: $name) {
                self.0 |= rhs.0;
            }
        }
    };
}

flag_set! {
    /// Channel flags (`VmbChannelInitSetFlags`), for
    /// [`ChannelBuilder::flags`](super::ChannelBuilder::flags).
    ///
    /// # Examples
    ///
    /// ```
    /// use kmcl::ChannelFlags;
    ///
    /// let flags = ChannelFlags::IS_PIPE;
    /// assert!(flags.contains(ChannelFlags::IS_PIPE));
    /// assert_eq!(ChannelFlags::from_bits(0x2), None);
    /// ```
    #[doc(alias = "VMBUS_CHANNEL_FLAGS")]
    ChannelFlags {
        /// The channel is a pipe.
        #[doc(alias = "VMBUS_CHANNEL_FLAG_IS_PIPE")]
        #[doc(alias = "CHANNEL_FLAG_IS_PIPE")]
        IS_PIPE = 0x1;
    }
}

flag_set! {
    /// Server channel flags (`VMBUS_SERVER_CHANNEL_FLAGS`), for
    /// [`ChannelBuilder::server_flags`](super::ChannelBuilder::server_flags).
    ///
    /// # Examples
    ///
    /// ```
    /// use kmcl::ServerFlags;
    ///
    /// let flags = ServerFlags::LOOPBACK_OFFER | ServerFlags::OFFER_AS_PIPE;
    /// assert_eq!(flags.bits(), 0x5);
    /// assert_eq!(ServerFlags::from_bits(0x20), None);
    /// ```
    #[doc(alias = "VMBUS_SERVER_CHANNEL_FLAGS")]
    ServerFlags {
        /// Offer the channel to the same partition (loopback).
        #[doc(alias = "VMBUS_SERVER_CHANNEL_FLAG_LOOPBACK_OFFER")]
        LOOPBACK_OFFER = 0x1;
        /// Enumerate a device interface for the offer.
        #[doc(alias = "VMBUS_SERVER_CHANNEL_FLAG_ENUMERATE_DEVICE_INTERFACE")]
        ENUMERATE_DEVICE_INTERFACE = 0x2;
        /// Offer the channel as a pipe.
        #[doc(alias = "VMBUS_SERVER_CHANNEL_FLAG_OFFER_AS_PIPE")]
        OFFER_AS_PIPE = 0x4;
        /// Always create a new channel rather than reuse one.
        #[doc(alias = "VMBUS_SERVER_CHANNEL_FLAG_FORCE_NEW_CHANNEL")]
        FORCE_NEW_CHANNEL = 0x8;
        /// The offer is a TL NPI provider (hvsocket) offer.
        #[doc(alias = "VMBUS_SERVER_CHANNEL_FLAG_TLNPI_PROVIDER_OFFER")]
        TLNPI_PROVIDER_OFFER = 0x10;
    }
}

flag_set! {
    /// GPADL creation flags, for
    /// [`Channel::create_gpadl_from_buffer`](super::Channel::create_gpadl_from_buffer)
    /// and the other creators.
    ///
    /// # Examples
    ///
    /// ```
    /// use kmcl::GpadlFlags;
    ///
    /// assert!(GpadlFlags::NONE.is_empty());
    /// assert_eq!(GpadlFlags::from_bits(0x1), Some(GpadlFlags::READ_ONLY));
    /// ```
    GpadlFlags {
        /// The server should only read (a hint, not protection).
        #[doc(alias = "VMBUS_CHANNEL_GPADL_READ_ONLY")]
        #[doc(alias = "GPADL_READ_ONLY")]
        READ_ONLY = 0x1;
    }
}
