//! Identifiers: nodes, requests, processes and content-addressed blobs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A node's identity: the textual form of its libp2p peer id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn new(s: impl Into<String>) -> Self {
        NodeId(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! hex_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("Identifier of a ", $what, ": 16 lowercase hex digits.")]
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Builds an id from 8 bytes (random, or a hash prefix).
            pub fn from_bytes(b: [u8; 8]) -> Self {
                let mut s = String::with_capacity(16);
                for x in b {
                    s.push_str(&format!("{x:02x}"));
                }
                $name(s)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The first 8 digits, for display.
            pub fn short(&self) -> &str {
                &self.0[..8]
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                if s.len() == 16 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                    Ok($name(s.to_string()))
                } else {
                    Err(Error::invalid(format!(
                        concat!("'{}' is not a ", $what, " id (16 hex digits)"),
                        s
                    )))
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

hex_id!(RequestId, "request");
hex_id!(ProcessId, "process");

/// BLAKE3 hash naming a blob (process code, output archive, log, checkpoint).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    pub fn of(data: &[u8]) -> Self {
        BlobHash(*blake3::hash(data).as_bytes())
    }
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(h: blake3::Hash) -> Self {
        BlobHash(*h.as_bytes())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.to_hex())
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for BlobHash {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        blake3::Hash::from_hex(s)
            .map(|h| BlobHash(*h.as_bytes()))
            .map_err(|_| Error::invalid(format!("'{s}' is not a BLAKE3 hash (64 hex digits)")))
    }
}

impl TryFrom<String> for BlobHash {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<BlobHash> for String {
    fn from(v: BlobHash) -> String {
        v.to_hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = RequestId::from_bytes([0xab, 1, 2, 3, 4, 5, 6, 0xff]);
        assert_eq!(id.as_str(), "ab010203040506ff");
        assert_eq!(id.as_str().parse::<RequestId>().unwrap(), id);
        assert!("xyz".parse::<RequestId>().is_err());
        assert!("AB010203040506FF".parse::<RequestId>().is_err());
        let h = BlobHash::of(b"hello");
        assert_eq!(h.to_hex().parse::<BlobHash>().unwrap(), h);
        assert!("00".parse::<BlobHash>().is_err());
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<BlobHash>(&json).unwrap(), h);
    }
}

/// Ids and hashes are strings in the API.
#[cfg(feature = "openapi")]
mod schemas {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

    macro_rules! string_schema {
        ($($t:ty => $desc:literal),*) => {$(
            impl utoipa::PartialSchema for $t {
                fn schema() -> RefOr<Schema> {
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some($desc))
                        .into()
                }
            }
            impl utoipa::ToSchema for $t {}
        )*};
    }
    string_schema!(
        super::NodeId => "a node's libp2p peer id",
        super::RequestId => "16 lowercase hex digits",
        super::ProcessId => "16 lowercase hex digits",
        super::BlobHash => "BLAKE3 hash, 64 lowercase hex digits"
    );
}
