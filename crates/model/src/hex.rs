//! Lower-case hexadecimal text of bytes: keys, digests and sealed values in files and on the wire.

pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of an even number of hex digits (either case); `None` for anything else.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    // Digits only: `from_str_radix` alone would take a leading `+`.
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(encode(&[0, 0xab, 0x7f]), "00ab7f");
        assert_eq!(decode("00AB7f"), Some(vec![0, 0xab, 0x7f]));
        for bad in ["0", "zz", "0g", "é0", "+1"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decode(&encode(&bytes)), Some(bytes));
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = decode(&s);
        }
    }
}
