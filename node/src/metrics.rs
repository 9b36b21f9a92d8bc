//! `/metrics` in Prometheus text format.

use std::fmt::Write;

use pesc_protocol::api::Metrics;

/// The exposition text: runs by state, slots and leases, peers and sync
/// backlog, traffic, blob store usage.
pub fn prometheus(m: &Metrics, blobs: usize, blob_bytes: u64, partial_bytes: u64) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP pesc_{name} {help}\n# TYPE pesc_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "pesc_{name}{labels} {v}");
        }
    };
    let r = &m.runs;
    metric(
        "runs",
        "gauge",
        "Runs of the requests this node knows, by state.",
        &[
            ("{state=\"queued\"}", r.queued.into()),
            ("{state=\"claimed\"}", r.claimed.into()),
            ("{state=\"running\"}", r.running.into()),
            ("{state=\"succeeded\"}", r.succeeded.into()),
            ("{state=\"failed\"}", r.failed.into()),
            ("{state=\"cancelled\"}", r.cancelled.into()),
        ],
    );
    metric(
        "requests",
        "gauge",
        "Requests this node knows.",
        &[("", m.requests.into())],
    );
    metric(
        "slots",
        "gauge",
        "Runs this node may run at once.",
        &[("", m.slots.into())],
    );
    metric(
        "leases",
        "gauge",
        "Attempts this node holds now.",
        &[("", m.leases.into())],
    );
    metric(
        "peers",
        "gauge",
        "Peers connected now.",
        &[("", m.peers.into())],
    );
    metric(
        "sync_pending",
        "gauge",
        "Document changes not yet sent to peers (the sync backlog).",
        &[("", m.sync_pending.into())],
    );
    metric(
        "paused",
        "gauge",
        "1 while the owner's policy keeps the node from taking runs.",
        &[("", m.paused.into())],
    );
    metric(
        "gpus",
        "gauge",
        "GPUs of this node.",
        &[("", m.gpus.into())],
    );
    metric(
        "skipped_entries",
        "gauge",
        "Malformed entries of the grid's documents this node skips (see /api/v1/node).",
        &[("", m.skipped)],
    );
    let t = &m.traffic;
    metric(
        "traffic_bytes_total",
        "counter",
        "Payload bytes exchanged with peers.",
        &[
            ("{kind=\"sync\",direction=\"sent\"}", t.sync_sent),
            ("{kind=\"sync\",direction=\"received\"}", t.sync_received),
            ("{kind=\"gossip\",direction=\"sent\"}", t.gossip_sent),
            (
                "{kind=\"gossip\",direction=\"received\"}",
                t.gossip_received,
            ),
            ("{kind=\"blob\",direction=\"sent\"}", t.blob_sent),
            ("{kind=\"blob\",direction=\"received\"}", t.blob_received),
        ],
    );
    metric(
        "blob_rejected_total",
        "counter",
        "Blocks or trees from peers that failed the hash check.",
        &[("", t.blob_rejected)],
    );
    metric(
        "blobs",
        "gauge",
        "Blobs in the store.",
        &[("", blobs as u64)],
    );
    metric(
        "blob_bytes",
        "gauge",
        "Bytes in the blob store.",
        &[
            ("{kind=\"kept\"}", blob_bytes),
            ("{kind=\"partial\"}", partial_bytes),
        ],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_samples() {
        let mut m = Metrics {
            slots: 4,
            leases: 2,
            ..Default::default()
        };
        m.runs.succeeded = 7;
        let text = prometheus(&m, 3, 1024, 0);
        assert!(text.contains("# TYPE pesc_runs gauge\n"));
        assert!(text.contains("pesc_runs{state=\"succeeded\"} 7\n"));
        assert!(text.contains("pesc_slots 4\n") && text.contains("pesc_leases 2\n"));
        assert!(text.contains("pesc_blob_bytes{kind=\"kept\"} 1024\n"));
        // Every sample line is NAME[{labels}] VALUE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, v) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("pesc_") && v.parse::<u64>().is_ok(), "{l}");
        }
    }
}
