//! The 20-byte identifiers of the WebTorrent protocol: `info_hash`, `peer_id`, `offer_id`.
//!
//! On the wire each is a JSON string of exactly 20 characters, every one in U+0000..U+00FF:
//! the JavaScript "binary string" form that `bittorrent-tracker`'s `hex2bin` produces, where
//! each character stands for one byte. A byte 0xE9 therefore travels as the two UTF-8 bytes
//! C3 A9, and control bytes may arrive escaped (`\u0003`). We keep the raw bytes and encode
//! them back the same way, so clients that compare strings see their own ids byte-exact.
//!
//! Unlike aquatic (which silently truncates longer strings) we refuse anything that is not
//! exactly 20 characters: a truncated id would silently alias two different peers.

use std::fmt;

use serde::{Serialize, Serializer};

/// Length of every id, in characters (= bytes once decoded).
pub const ID_LEN: usize = 20;

/// Why a string is not a valid id; the text ends up in a `failure reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    /// The string does not hold exactly 20 characters (the count it had).
    Length(usize),
    /// A character above U+00FF cannot stand for a single byte.
    NotSingleByte,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Length(n) => write!(f, "must be 20 characters, got {n}"),
            IdError::NotSingleByte => f.write_str("has a character above U+00FF"),
        }
    }
}

/// Decodes a binary string into its 20 bytes.
pub fn decode_latin1(text: &str) -> Result<[u8; ID_LEN], IdError> {
    let mut bytes = [0u8; ID_LEN];
    let mut count = 0usize;
    for ch in text.chars() {
        let code = u32::from(ch);
        if code > 0xFF {
            return Err(IdError::NotSingleByte);
        }
        if count < ID_LEN {
            // Lossless: checked to be <= 0xFF just above.
            bytes[count] = code as u8;
        }
        count += 1;
    }
    if count != ID_LEN {
        return Err(IdError::Length(count));
    }
    Ok(bytes)
}

/// Encodes 20 bytes as a binary string, into a stack buffer (at most 2 UTF-8 bytes per char).
fn encode_latin1(bytes: &[u8; ID_LEN], buf: &mut [u8; ID_LEN * 2]) -> usize {
    let mut len = 0;
    for &byte in bytes {
        len += char::from(byte).encode_utf8(&mut buf[len..]).len();
    }
    len
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            /// Parses the wire form (a 20-character binary string).
            pub fn from_wire(text: &str) -> Result<Self, IdError> {
                decode_latin1(text).map(Self)
            }

            /// The wire form: one character per byte.
            pub fn to_wire(&self) -> String {
                let mut buf = [0u8; ID_LEN * 2];
                let len = encode_latin1(&self.0, &mut buf);
                String::from_utf8_lossy(&buf[..len]).into_owned()
            }

            /// Lower-case hex, for logs and metrics (never the raw bytes: they may be
            /// control characters).
            pub fn to_hex(&self) -> String {
                let mut out = String::with_capacity(ID_LEN * 2);
                for byte in self.0 {
                    out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
                    out.push(char::from_digit(u32::from(byte & 0xF), 16).unwrap_or('0'));
                }
                out
            }

            /// Parses 40 hex digits (access lists, tests).
            pub fn from_hex(hex: &str) -> Option<Self> {
                let hex = hex.trim();
                if hex.len() != ID_LEN * 2 || !hex.is_ascii() {
                    return None;
                }
                let mut bytes = [0u8; ID_LEN];
                for (index, byte) in bytes.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).ok()?;
                }
                Some(Self(bytes))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut buf = [0u8; ID_LEN * 2];
                let len = encode_latin1(&self.0, &mut buf);
                // encode_latin1 writes whole UTF-8 sequences, so this never fails.
                match std::str::from_utf8(&buf[..len]) {
                    Ok(text) => serializer.serialize_str(text),
                    Err(err) => Err(serde::ser::Error::custom(err)),
                }
            }
        }
    };
}

id_type!(
    /// A swarm key: SHA-1 of a torrent's info dictionary, or (P2P Media Loader v2) 20 ASCII
    /// characters derived from the stream URL and rendition.
    InfoHash
);
id_type!(
    /// A client's id within a swarm. P2P Media Loader v2 uses `-PM0203-` + 12 alphanumerics,
    /// one per info_hash, all on one shared socket.
    PeerId
);
id_type!(
    /// Names one pre-made WebRTC offer; always 20 random (binary) bytes, even with P2P Media
    /// Loader v2.
    OfferId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_round_trips() {
        let id = PeerId::from_wire("-PM0203-qhhxsCc0iJvL").expect("valid");
        assert_eq!(id.to_wire(), "-PM0203-qhhxsCc0iJvL");
    }

    #[test]
    fn binary_bytes_round_trip_through_json() {
        let bytes: [u8; 20] = std::array::from_fn(|i| (i as u8) * 13);
        let id = OfferId(bytes);
        let json = serde_json::to_string(&id).expect("serialise");
        let back: String = serde_json::from_str(&json).expect("json string");
        assert_eq!(OfferId::from_wire(&back).expect("valid"), id);
    }

    #[test]
    fn every_byte_value_survives() {
        for start in (0u16..=255).step_by(20) {
            let bytes: [u8; 20] = std::array::from_fn(|i| ((start + i as u16) % 256) as u8);
            let id = InfoHash(bytes);
            assert_eq!(InfoHash::from_wire(&id.to_wire()), Ok(id));
        }
    }

    #[test]
    fn wrong_length_is_refused() {
        assert_eq!(PeerId::from_wire("short"), Err(IdError::Length(5)));
        assert_eq!(
            PeerId::from_wire("-PM0203-qhhxsCc0iJvLX"),
            Err(IdError::Length(21))
        );
        assert_eq!(PeerId::from_wire(""), Err(IdError::Length(0)));
    }

    #[test]
    fn characters_above_u00ff_are_refused() {
        assert_eq!(
            PeerId::from_wire("-PM0203-qhhxsCc0iJv\u{0100}"),
            Err(IdError::NotSingleByte)
        );
        assert_eq!(
            PeerId::from_wire("😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀"),
            Err(IdError::NotSingleByte)
        );
    }

    #[test]
    fn hex_round_trips() {
        let id = InfoHash(std::array::from_fn(|i| i as u8 * 7));
        assert_eq!(InfoHash::from_hex(&id.to_hex()), Some(id));
        assert_eq!(InfoHash::from_hex("zz"), None);
    }
}
