//! The grid's transport: TCP, then Noise (the node key is its identity)
//! bound to the grid key, then Yamux. No QUIC: it would not carry the
//! grid key.
//!
//! The grid key enters the Noise handshake as its prologue: both sides mix
//! it into the handshake hash, which authenticates every handshake message,
//! so a peer without the key fails the handshake before any protocol runs.
//! This replaces libp2p's private-network layer (XSalsa20 over the whole
//! stream, under Noise's own encryption): same gate, one cipher instead of
//! two; the second cipher cost half the CPU of a file transfer.

use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, upgrade::Version};
use libp2p::{PeerId, Transport, identity::Keypair, noise, tcp, yamux};

/// What goes into the Noise prologue: a key derived from the grid key, so
/// the key itself is never used for anything else.
pub fn prologue(psk: &[u8; 32]) -> Vec<u8> {
    blake3::derive_key("pesc 2026 grid key noise prologue v1", psk).to_vec()
}

pub fn build(key: &Keypair, psk: [u8; 32]) -> Result<Boxed<(PeerId, StreamMuxerBox)>> {
    let noise = noise::Config::new(key)
        .context("setting up Noise")?
        .with_prologue(prologue(&psk));
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(10))
            .boxed(),
    )
}
