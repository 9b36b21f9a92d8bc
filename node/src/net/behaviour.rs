//! The libp2p behaviours a node runs.

use std::time::Duration;

use anyhow::{Result, anyhow};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, behaviour::toggle::Toggle};
use libp2p::{StreamProtocol, gossipsub, identify, identity::Keypair, mdns, ping};
use pesc_protocol::wire::{SyncRequest, SyncResponse};

use super::blob_codec::{self, BlobCodec};

/// Name and version peers tell each other (identify).
pub const AGENT_PROTOCOL: &str = "/pesc/1";

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub gossipsub: gossipsub::Behaviour,
    pub sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    pub blobs: request_response::Behaviour<BlobCodec>,
}

impl Behaviour {
    pub fn new(key: &Keypair, use_mdns: bool) -> Result<Self> {
        let peer = key.public().to_peer_id();
        let mdns = if use_mdns {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config {
                    query_interval: Duration::from_secs(30),
                    ..Default::default()
                },
                peer,
            )?)
        } else {
            None
        };
        let gossip_cfg = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_secs(1))
            .validation_mode(gossipsub::ValidationMode::Strict)
            .max_transmit_size(256 * 1024)
            .build()
            .map_err(|e| anyhow!("gossip config: {e}"))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_cfg,
        )
        .map_err(|e| anyhow!("gossip: {e}"))?;
        // A document sync message may carry a whole request document.
        let sync_codec = request_response::cbor::codec::Codec::default()
            .set_request_size_maximum(256 << 20)
            .set_response_size_maximum(1 << 20);
        let rr_cfg = request_response::Config::default()
            .with_request_timeout(Duration::from_secs(60))
            .with_max_concurrent_streams(256);
        Ok(Behaviour {
            identify: identify::Behaviour::new(identify::Config::new(
                AGENT_PROTOCOL.into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5))),
            mdns: mdns.into(),
            gossipsub,
            sync: request_response::Behaviour::with_codec(
                sync_codec,
                [(StreamProtocol::new("/pesc/sync/1"), ProtocolSupport::Full)],
                rr_cfg.clone(),
            ),
            blobs: request_response::Behaviour::with_codec(
                BlobCodec,
                [(blob_codec::PROTOCOL, ProtocolSupport::Full)],
                rr_cfg,
            ),
        })
    }
}
