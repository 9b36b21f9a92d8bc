//! Getting a blob this node lacks from the peers that have it: a swarm
//! download, every block checked against the blob's hash as it arrives.
//!
//! 1. **Who has it.** Ask the hinted holders (the documents record who made
//!    or keeps a blob), and if none of them answers, every connected peer.
//!    While a large blob downloads the question is asked again every second,
//!    so peers that are downloading it too (and serve the blocks they have)
//!    join as providers.
//! 2. **The tree.** Got from a provider and checked against the hash (see
//!    `pesc_protocol::blob_tree`); a provider whose tree is wrong is avoided.
//! 3. **Blocks.** Up to [`PER_PEER`] block requests in flight to each
//!    provider, each download starting at a random block so downloaders ask
//!    for different blocks and can trade them. A wrong block is dropped, the
//!    peer is not asked for this blob again, and the block goes to another
//!    provider. Blocks go straight to disk: memory use does not grow with
//!    the blob's size.
//! 4. An interrupted download (error, restart) keeps its blocks on disk and
//!    resumes from them next time.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use libp2p::PeerId;
use pesc_protocol::blob_tree::{VerifiedTree, block_count};
use pesc_protocol::wire::{BlobRequest, BlobResponse, Holding};
use pesc_protocol::{BlobHash, NodeId};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{NetHandle, peer_of};
use crate::blobs::BlobStore;
use crate::blobs::partial::Partial;

/// Block requests in flight to one provider at a time.
pub const PER_PEER: usize = 8;

/// How often a download of many blocks looks for new providers.
const WHO_HAS_EVERY: Duration = Duration::from_secs(1);

/// Blobs of at least this many blocks look for providers among all
/// connected peers as they download (swarm), not only the hinted ones.
const SWARM_BLOCKS: u64 = 8;

/// Rounds of "who has" (a second apart) before a download gives up for
/// want of any holder.
const FIND_ROUNDS: u32 = 5;

/// How long a "who has" answer may take.
const WHO_HAS_TIMEOUT: Duration = Duration::from_secs(5);

/// A download gives up after this long without a block arriving.
const STALL_LIMIT: Duration = Duration::from_secs(30);

pub struct Fetcher {
    net: NetHandle,
    blobs: Arc<BlobStore>,
    /// One download per blob at a time; others wait for it.
    inflight: Mutex<HashMap<BlobHash, Arc<tokio::sync::Mutex<()>>>>,
}

/// What the download knows of one peer.
struct Provider {
    holding: Holding,
    inflight: usize,
    /// Sent a wrong tree or block: never asked for this blob again.
    bad: bool,
}

impl Fetcher {
    pub fn new(net: NetHandle, blobs: Arc<BlobStore>) -> Self {
        Fetcher {
            net,
            blobs,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Makes sure the blob is in the local store. `hints` are nodes the
    /// documents say hold it (asked first).
    pub async fn ensure(&self, h: &BlobHash, hints: &[NodeId]) -> Result<()> {
        if self.blobs.contains(h) {
            self.blobs.touch(h);
            return Ok(());
        }
        let lock = self
            .inflight
            .lock()
            .expect("fetch lock")
            .entry(*h)
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let result = if self.blobs.contains(h) {
            Ok(())
        } else {
            self.download(h, hints).await
        };
        self.inflight.lock().expect("fetch lock").remove(h);
        result
    }

    async fn download(&self, h: &BlobHash, hints: &[NodeId]) -> Result<()> {
        let hinted: BTreeSet<PeerId> = hints.iter().filter_map(peer_of).collect();
        let mut providers: HashMap<PeerId, Provider> = HashMap::new();
        // Connections may be coming back (a restart, a healed link): a few
        // rounds before concluding that nobody has it.
        for round in 0..FIND_ROUNDS {
            if round > 0 {
                tokio::time::sleep(WHO_HAS_EVERY).await;
            }
            self.who_has(h, &hinted, &mut providers).await;
            if !providers.values().any(|p| p.holding != Holding::None) {
                let others: BTreeSet<PeerId> =
                    self.net.connected().difference(&hinted).copied().collect();
                self.who_has(h, &others, &mut providers).await;
            }
            if providers.values().any(|p| p.holding != Holding::None) {
                break;
            }
        }
        let blobs = self.blobs.clone();
        let hh = *h;
        let resumed = tokio::task::spawn_blocking(move || blobs.partials.resume(&hh)).await??;
        let partial = match resumed {
            Some(p) => p,
            None => {
                let tree = self.fetch_tree(h, &mut providers).await?;
                self.blobs.partials.start(tree)?
            }
        };
        let filled = self.fill(h, &partial, &mut providers).await;
        if let Err(e) = filled {
            // The blocks stay on disk; the next attempt resumes from them.
            self.blobs.partials.release(h);
            return Err(e);
        }
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || partial.finish(&blobs))
            .await?
            .with_context(|| format!("storing the downloaded blob {h}"))?;
        Ok(())
    }

    /// Asks `peers` what they hold of `h`, in parallel, and records the answers.
    async fn who_has(
        &self,
        h: &BlobHash,
        peers: &BTreeSet<PeerId>,
        providers: &mut HashMap<PeerId, Provider>,
    ) {
        for (peer, holding) in who_has(&self.net, h, peers).await {
            merge_answer(providers, peer, holding);
        }
    }

    /// The blob's tree, from the first provider whose tree checks out.
    async fn fetch_tree(
        &self,
        h: &BlobHash,
        providers: &mut HashMap<PeerId, Provider>,
    ) -> Result<VerifiedTree> {
        let mut why = Vec::new();
        let mut order: Vec<(PeerId, u64)> = providers
            .iter()
            .filter(|(_, p)| !p.bad)
            .filter_map(|(peer, p)| Some((*peer, p.holding.total()?)))
            .collect();
        // Whole holders first: they surely have the tree.
        order.sort_by_key(|(peer, _)| !matches!(providers[peer].holding, Holding::All { .. }));
        for (peer, total) in order {
            if block_count(total) == 1 {
                // One block: no tree, the block is checked against the hash.
                if let Ok(t) = VerifiedTree::check(*h, total, &[]) {
                    return Ok(t);
                }
            }
            match self
                .net
                .ask_blob(peer, BlobRequest::Tree { hash: *h })
                .await
            {
                Ok(BlobResponse::Tree { total, tree }) => {
                    match VerifiedTree::check(*h, total, &tree) {
                        Ok(t) => return Ok(t),
                        Err(e) => {
                            self.reject(h, peer, &e.to_string());
                            providers.entry(peer).and_modify(|p| p.bad = true);
                            why.push(format!("{peer}: {e}"));
                        }
                    }
                }
                Ok(other) => why.push(format!("{peer}: {}", answer_text(&other))),
                Err(e) => why.push(format!("{peer}: {e}")),
            }
        }
        if why.is_empty() {
            bail!("no connected node has file {h}");
        }
        bail!("no node could give file {h} ({})", why.join("; "))
    }

    fn reject(&self, h: &BlobHash, peer: PeerId, why: &str) {
        self.net.stats.blob_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "{peer} sent bad data for {h} ({why}): dropped, and {peer} is not asked for it again"
        );
    }

    /// Fetches every missing block of a download.
    async fn fill(
        &self,
        h: &BlobHash,
        partial: &Arc<Partial>,
        providers: &mut HashMap<PeerId, Provider>,
    ) -> Result<()> {
        let blocks = partial.tree().blocks();
        let mut missing: BTreeSet<u64> = (0..blocks).filter(|i| !partial.has(*i)).collect();
        let mut asked: BTreeSet<u64> = BTreeSet::new();
        let start = rand::random_range(0..blocks);
        let mut tasks: JoinSet<(PeerId, u64, Result<BlobResponse, String>)> = JoinSet::new();
        let mut refresh: Option<tokio::task::JoinHandle<Vec<(PeerId, Holding)>>> = None;
        let mut next_refresh = Instant::now() + WHO_HAS_EVERY;
        let mut last_progress = Instant::now();
        let mut last_error = String::new();
        while !missing.is_empty() {
            // Keep every usable provider busy with blocks it has.
            let mut peers: Vec<PeerId> = providers.keys().copied().collect();
            peers.sort_by_key(|p| providers[p].inflight);
            for peer in peers {
                let p = providers.get_mut(&peer).expect("listed");
                while !p.bad && p.inflight < PER_PEER {
                    let pick = missing
                        .range(start..)
                        .chain(missing.range(..start))
                        .find(|i| !asked.contains(i) && p.holding.has_block(**i))
                        .copied();
                    let Some(i) = pick else { break };
                    asked.insert(i);
                    p.inflight += 1;
                    let net = self.net.clone();
                    let req = BlobRequest::Block { hash: *h, index: i };
                    tasks.spawn(async move { (peer, i, net.ask_blob(peer, req).await) });
                }
            }
            if tasks.is_empty() && refresh.is_none() {
                if last_progress.elapsed() > STALL_LIMIT {
                    bail!(
                        "download of file {h} stalled: {} of {blocks} blocks missing and no node gives them{}",
                        missing.len(),
                        if last_error.is_empty() {
                            String::new()
                        } else {
                            format!(" (last: {last_error})")
                        }
                    );
                }
                tokio::time::sleep_until(next_refresh).await;
            }
            if refresh.is_none() && Instant::now() >= next_refresh {
                let mut peers: BTreeSet<PeerId> = providers
                    .iter()
                    .filter(|(_, p)| !p.bad && !matches!(p.holding, Holding::All { .. }))
                    .map(|(peer, _)| *peer)
                    .collect();
                if blocks >= SWARM_BLOCKS
                    || providers
                        .values()
                        .all(|p| p.bad || p.holding == Holding::None)
                {
                    peers.extend(
                        self.net
                            .connected()
                            .into_iter()
                            .filter(|peer| !providers.contains_key(peer)),
                    );
                }
                let net = self.net.clone();
                let hh = *h;
                refresh = Some(tokio::spawn(
                    async move { who_has(&net, &hh, &peers).await },
                ));
                next_refresh = Instant::now() + WHO_HAS_EVERY;
            }
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let (peer, i, answer) = done.context("a block request panicked")?;
                    asked.remove(&i);
                    let p = providers.get_mut(&peer).expect("asked providers are listed");
                    p.inflight -= 1;
                    match answer {
                        Ok(BlobResponse::Block { data }) => {
                            let part = partial.clone();
                            let written = tokio::task::spawn_blocking(move || part.put_block(i, &data)).await?;
                            match written {
                                Ok(()) => {
                                    missing.remove(&i);
                                    last_progress = Instant::now();
                                }
                                Err(why) => {
                                    p.bad = true;
                                    self.reject(h, peer, &why);
                                    last_error = format!("{peer}: {why}");
                                }
                            }
                        }
                        Ok(other) => {
                            // Not (or no longer) there: ask again at the next refresh.
                            last_error = format!("{peer}: {}", answer_text(&other));
                            p.holding = Holding::None;
                        }
                        Err(e) => {
                            last_error = format!("{peer}: {e}");
                            p.holding = Holding::None;
                        }
                    }
                }
                answers = async { refresh.as_mut().expect("guarded").await }, if refresh.is_some() => {
                    refresh = None;
                    for (peer, holding) in answers.unwrap_or_default() {
                        merge_answer(providers, peer, holding);
                    }
                }
                _ = tokio::time::sleep_until(next_refresh), if refresh.is_none() => {}
            }
        }
        if let Some(r) = refresh {
            r.abort();
        }
        Ok(())
    }
}

/// Records a "who has" answer, keeping what is known of bad peers.
fn merge_answer(providers: &mut HashMap<PeerId, Provider>, peer: PeerId, holding: Holding) {
    let p = providers.entry(peer).or_insert(Provider {
        holding: Holding::None,
        inflight: 0,
        bad: false,
    });
    p.holding = holding;
}

/// Asks each peer what it holds of `h`, in parallel, each within a time limit.
async fn who_has(
    net: &NetHandle,
    h: &BlobHash,
    peers: &BTreeSet<PeerId>,
) -> Vec<(PeerId, Holding)> {
    let mut asks = JoinSet::new();
    for peer in peers {
        let net = net.clone();
        let (peer, hash) = (*peer, *h);
        asks.spawn(async move {
            let answer = tokio::time::timeout(
                WHO_HAS_TIMEOUT,
                net.ask_blob(peer, BlobRequest::Has { hash }),
            )
            .await;
            match answer {
                Ok(Ok(BlobResponse::Has(holding))) => (peer, holding),
                _ => (peer, Holding::None),
            }
        });
    }
    let mut out = Vec::new();
    while let Some(Ok(a)) = asks.join_next().await {
        out.push(a);
    }
    out
}

fn answer_text(r: &BlobResponse) -> String {
    match r {
        BlobResponse::NotFound => "does not have it".into(),
        BlobResponse::Refused(why) => format!("refused: {why}"),
        _ => "answered something else".into(),
    }
}
