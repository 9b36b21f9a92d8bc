//! The grid's transport: TCP, then the private-network handshake with the
//! grid's pre-shared key, then Noise (the node key is its identity), then
//! Yamux. No QUIC: the pre-shared key does not cover it.

use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, upgrade::Version};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::{PeerId, Transport, identity::Keypair, noise, tcp, yamux};

pub fn build(key: &Keypair, psk: [u8; 32]) -> Result<Boxed<(PeerId, StreamMuxerBox)>> {
    let psk = PreSharedKey::new(psk);
    let noise = noise::Config::new(key).context("setting up Noise")?;
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(10))
            .boxed(),
    )
}
