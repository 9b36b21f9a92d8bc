//! What arrives from the network, handed to the core, and the answers that
//! must wait for the disk or for blobs (pushes, holds, a submit's copy on a
//! peer).

use std::time::Duration;

use pesc_protocol::api::RequestInfo;
use pesc_protocol::node::LogSource;
use pesc_protocol::node::{NodeError, Submitted};
use pesc_protocol::wire::{DocKey, LOG_CHUNK, SyncRequest, SyncResponse};
use pesc_protocol::{BlobHash, NodeId};
use tokio::sync::oneshot;

use super::{Agent, Reply};
use crate::net::{NetCmd, NetEvent, NetHandle, peer_of};
use crate::runner::RunnerCtx;

/// How long a submit waits for a peer to hold a copy before answering anyway.
const PUSH_TIMEOUT: Duration = Duration::from_secs(20);

impl Agent {
    pub(super) fn net_event(&mut self, ev: NetEvent) {
        // A peer asking about an archived request: read it back first.
        if let NetEvent::Sync {
            req:
                SyncRequest::Sync {
                    doc: DocKey::Request(id),
                    ..
                }
                | SyncRequest::Push {
                    doc: DocKey::Request(id),
                    ..
                },
            ..
        } = &ev
        {
            self.restore(&id.to_string());
        }
        let now = self.now();
        let n = &mut self.node;
        match ev {
            NetEvent::Connected(peer) => n.connected(now, peer),
            NetEvent::Disconnected(peer) => n.disconnected(now, &peer),
            NetEvent::Listening(addrs) => n.listening(addrs),
            NetEvent::Sync { from, req, channel } => {
                let resp = match req {
                    SyncRequest::Sync { doc, msg } => n.receive_sync(now, &from, doc, &msg),
                    SyncRequest::Ping(beat) => n.receive_ping(now, &from, *beat),
                    SyncRequest::Status => SyncResponse::Status(Box::new(n.status())),
                    SyncRequest::Push { doc, data, blobs } => {
                        match n.receive_push(now, &from, &doc, &data) {
                            Ok(()) => {
                                // Held once the document is on disk and the
                                // blobs are here.
                                let durable = self.durable();
                                let runner = self.runner.clone();
                                let net = self.net.clone();
                                tokio::spawn(async move {
                                    let mut resp = fetch_all(&runner, &blobs, from).await;
                                    match durable.await {
                                        Ok(true) => {}
                                        Ok(false) => {
                                            resp = SyncResponse::Refused(
                                                "this node could not write it to disk".into(),
                                            )
                                        }
                                        Err(_) => {
                                            resp = SyncResponse::Refused(
                                                "the node is shutting down".into(),
                                            )
                                        }
                                    }
                                    net.send(NetCmd::RespondSync { channel, resp });
                                });
                                return;
                            }
                            Err(why) => SyncResponse::Refused(why),
                        }
                    }
                    SyncRequest::LogTail {
                        request,
                        rank,
                        stderr,
                        offset,
                    } => {
                        // A user on that node follows a run of this one.
                        let src = n.log_source(now, request.as_str(), rank);
                        let runner = self.runner.clone();
                        let net = self.net.clone();
                        tokio::spawn(async move {
                            let resp = log_tail(&runner, src, stderr, offset).await;
                            net.send(NetCmd::RespondSync { channel, resp });
                        });
                        return;
                    }
                    SyncRequest::Hold { blobs } => {
                        // Fetches blobs a peer asks this node to keep a copy
                        // of, then says so.
                        let runner = self.runner.clone();
                        let net = self.net.clone();
                        tokio::spawn(async move {
                            let resp = fetch_all(&runner, &blobs, from).await;
                            net.send(NetCmd::RespondSync { channel, resp });
                        });
                        return;
                    }
                };
                self.net.send(NetCmd::RespondSync { channel, resp });
            }
            NetEvent::SyncFailed { peer, doc } => n.sync_failed(peer, doc),
            NetEvent::Gossip { from, msg } => n.gossip(now, &from, msg),
            NetEvent::Pong { from, beat } => n.receive_pong(now, &from, *beat),
        }
    }
}

/// Answers a submit once the request is durable here and held by one of
/// the peers asked (or at once without peers, or after a timeout).
pub(super) async fn replicate_then_reply(
    net: NetHandle,
    s: Submitted,
    durable: oneshot::Receiver<bool>,
    reply: Reply<Result<RequestInfo, NodeError>>,
) {
    // Not on disk: the submit fails (the user submits again), it is never
    // answered as kept.
    if !durable.await.unwrap_or(false) {
        let _ = reply.send(Err(NodeError::Internal(
            "the request could not be written to this node's disk: submit it again (and see the node's log)".into(),
        )));
        return;
    }
    let mut info = s.info;
    info.held_by_peer = Some(false);
    if let Some(push) = s.push {
        let id = info.id.clone();
        let mut asks = futures_util::stream::FuturesUnordered::new();
        for p in push.peers.iter().filter_map(peer_of) {
            let net = net.clone();
            let req = SyncRequest::Push {
                doc: push.doc.clone(),
                data: push.data.clone(),
                blobs: push.blobs.clone(),
            };
            asks.push(async move { (p, net.ask_sync(p, req).await) });
        }
        let first_holder = async {
            use futures_util::StreamExt;
            while let Some((p, r)) = asks.next().await {
                match r {
                    Ok(SyncResponse::Held) => return Some(p),
                    other => tracing::debug!("push of {id} to {p}: {other:?}"),
                }
            }
            None
        };
        match tokio::time::timeout(PUSH_TIMEOUT, first_holder).await {
            Ok(Some(p)) => {
                tracing::debug!(request = %id, "held by {p} too");
                info.held_by_peer = Some(true);
            }
            _ => tracing::warn!(
                request = %id,
                "no other node confirmed a copy of the request: it depends on this node until they sync"
            ),
        }
    }
    let _ = reply.send(Ok(info));
}

/// Fetches every blob (from `from` first): `Held` once all are on disk.
async fn fetch_all(runner: &RunnerCtx, blobs: &[BlobHash], from: NodeId) -> SyncResponse {
    for h in blobs {
        if let Err(e) = runner.fetcher.ensure(h, std::slice::from_ref(&from)).await {
            return SyncResponse::Refused(format!("{e:#}"));
        }
    }
    SyncResponse::Held
}

/// What a run running here has written to a log from `offset` (at most
/// [`LOG_CHUNK`] bytes). Not running here: nothing, `running: false`.
async fn log_tail(
    runner: &RunnerCtx,
    src: Result<LogSource, NodeError>,
    stderr: bool,
    offset: u64,
) -> SyncResponse {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(LogSource::Live { key, slot }) = src else {
        return SyncResponse::Log {
            data: Vec::new(),
            epoch: 0,
            running: false,
        };
    };
    let path = runner.log_path(slot, if stderr { "stderr" } else { "stdout" });
    let mut data = Vec::new();
    if let Ok(mut f) = tokio::fs::File::open(&path).await
        && f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
    {
        let _ = f.take(LOG_CHUNK as u64).read_to_end(&mut data).await;
    }
    SyncResponse::Log {
        data,
        epoch: key.2,
        running: true,
    }
}
