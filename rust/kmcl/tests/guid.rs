// SPDX-License-Identifier: GPL-2.0

//! [`Guid`] checked against the kernel's own `guid_parse()` and `guid_t`
//! constants, so that kmcl and `hv_vmbus` agree on every byte.

use kernel::{
    prelude::*,
    str::CString, //
};

use crate::wire::guid::{
    Guid,
    ParseGuidError, //
};

extern "C" {
    fn kmcl_guid_parse(s: *const c_char, out: *mut Guid) -> c_int;
    fn kmcl_hv_heartbeat_guid(out: *mut Guid);
}

fn kernel_parse(s: &CStr) -> Option<Guid> {
    let mut g = Guid::NULL;
    // SAFETY: `s` is NUL-terminated and `g` is 16 writable bytes.
    (unsafe { kmcl_guid_parse(s.as_char_ptr(), &mut g) } == 0).then_some(g)
}

#[kunit_tests(kmcl_guid)]
mod tests {
    use super::*;

    #[test]
    fn parse_matches_kernel_guid_parse() -> Result {
        for s in [
            c"57164f39-9115-4e78-ab55-382f3bd5422d",
            c"F8615163-DF3E-46C5-913F-F2D2F965ED0E",
            c"00000000-0000-0000-0000-000000000001",
        ] {
            let ours = Guid::parse(s.to_str()?).map_err(|_| EINVAL)?;
            assert_eq!(Some(ours), kernel_parse(s));
        }
        Ok(())
    }

    #[test]
    fn parse_matches_hyperv_header_constant() -> Result {
        let mut hb = Guid::NULL;
        // SAFETY: `hb` is 16 writable bytes.
        unsafe { kmcl_hv_heartbeat_guid(&mut hb) };
        assert_eq!(Guid::parse("57164f39-9115-4e78-ab55-382f3bd5422d"), Ok(hb));
        Ok(())
    }

    #[test]
    fn display_round_trips() -> Result {
        let g = Guid::parse("f8615163-df3e-46c5-913f-f2d2f965ed0e").map_err(|_| EINVAL)?;
        let s = CString::try_from_fmt(fmt!("{g}"))?;
        assert_eq!(s.to_bytes(), b"f8615163-df3e-46c5-913f-f2d2f965ed0e");
        assert_eq!(kernel_parse(&s), Some(g));
        Ok(())
    }

    #[test]
    fn malformed_text_is_rejected_like_the_kernel_does() {
        let bad = [
            (
                c"57164f39-9115-4e78-ab55-382f3bd5422",
                ParseGuidError::Length,
            ),
            (
                c"57164f39+9115-4e78-ab55-382f3bd5422d",
                ParseGuidError::Dash(8),
            ),
            (
                c"57164f39-9115-4e78-ab55-382f3bd5422z",
                ParseGuidError::Digit(35),
            ),
        ];
        for (s, why) in bad {
            assert_eq!(Guid::parse(s.to_str().unwrap_or("")), Err(why));
            assert_eq!(kernel_parse(s), None);
        }
    }
}
