//! The grid secret and the join token that carries it to a new desktop.
//!
//! A grid is named by a random 128-bit id and guarded by a 256-bit
//! pre-shared key (libp2p private network): without the key a machine cannot
//! complete a connection. The join token is the secret plus the addresses
//! where the issuing node listens, as one shell word:
//! `pesc1:<32 hex grid id><64 hex key>[@addr,addr…]`.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

const PREFIX: &str = "pesc1:";

/// The grid id and its pre-shared key.
#[derive(Clone, PartialEq, Eq)]
pub struct GridSecret {
    pub grid_id: [u8; 16],
    pub psk: [u8; 32],
}

impl GridSecret {
    /// The grid id as stored in documents (32 hex digits).
    pub fn grid_id_hex(&self) -> String {
        hex(&self.grid_id)
    }
}

// Never print the key by accident.
impl fmt::Debug for GridSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GridSecret({}, key hidden)", self.grid_id_hex())
    }
}

/// What `pesc node --join` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: GridSecret,
    /// Multiaddrs of the node that issued the token (may be empty).
    pub addrs: Vec<String>,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}{}",
            hex(&self.secret.grid_id),
            hex(&self.secret.psk)
        )?;
        if !self.addrs.is_empty() {
            write!(f, "@{}", self.addrs.join(","))?;
        }
        Ok(())
    }
}

impl FromStr for JoinToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "this is not a PESC join token ({why}); print one with `pesc grid token` on a node of the grid"
            ))
        };
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("it must start with pesc1:"))?;
        let (secret, addrs) = match rest.split_once('@') {
            Some((k, a)) => (k, a),
            None => (rest, ""),
        };
        if secret.len() != 96 {
            return Err(bad("the secret must be 96 hex digits"));
        }
        let bytes = unhex(secret).ok_or_else(|| bad("the secret must be hex digits"))?;
        let mut grid_id = [0u8; 16];
        let mut psk = [0u8; 32];
        grid_id.copy_from_slice(&bytes[..16]);
        psk.copy_from_slice(&bytes[16..]);
        let addrs: Vec<String> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(a) = addrs.iter().find(|a| !a.starts_with('/')) {
            return Err(bad(&format!("'{a}' is not a multiaddr")));
        }
        Ok(JoinToken {
            secret: GridSecret { grid_id, psk },
            addrs,
        })
    }
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes from hex (None unless every pair of digits parses).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses a grid id written as 32 hex digits.
pub fn parse_grid_id(s: &str) -> Option<[u8; 16]> {
    let b = unhex(s.trim())?;
    b.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let t = JoinToken {
            secret: GridSecret {
                grid_id: [7; 16],
                psk: [9; 32],
            },
            addrs: vec!["/ip4/10.0.0.1/tcp/7373/p2p/12D3KooW".into()],
        };
        assert_eq!(t.to_string().parse::<JoinToken>().unwrap(), t);
        let bare = JoinToken {
            addrs: vec![],
            ..t.clone()
        };
        assert_eq!(bare.to_string().parse::<JoinToken>().unwrap(), bare);
        assert!(!format!("{:?}", t.secret).contains("0909"));
    }

    #[test]
    fn garbage_is_refused_with_a_sentence() {
        for bad in [
            "",
            "pesc1:",
            "pesc2:00",
            "pesc1:zz",
            &format!("pesc1:{}", "g".repeat(96)),
            &format!("pesc1:{}@not-an-addr", "0".repeat(96)),
        ] {
            let e = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.contains("join token"), "{bad}: {e}");
        }
    }
}
