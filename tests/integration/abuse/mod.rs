//! Abuse: hostile or broken clients, each checked for its exact outcome and for an
//! honest pair of peers in another swarm that must keep signalling normally
//! (`HonestPair::assert_unaffected`). One module per kind of abuse.

mod answers;
mod caps;
mod fragments;
mod huge_json;
mod ids;
mod offers;
mod rate_limits;
mod slow_clients;
mod upgrades;

use p2p_mediastream::protocol::{InfoHash, PeerId};
use tokio::io::AsyncWriteExt;

use crate::common::*;

/// The next frame on `peer` is a failure of an announce containing `reason` (naming
/// `swarm`, if given); returned for further checks.
async fn assert_refused(
    peer: &mut TestPeer,
    swarm: Option<InfoHash>,
    reason: &str,
) -> serde_json::Value {
    let failure = match swarm {
        Some(swarm) => peer.recv_failure_in(swarm).await,
        None => peer.recv_failure().await,
    };
    assert_eq!(failure["action"], "announce", "{failure}");
    let got = failure["failure reason"].as_str().unwrap_or_default();
    assert!(
        got.contains(reason),
        "failure {got:?} should contain {reason:?}"
    );
    failure
}

/// `peer` announces `peer_id` in `swarm` (no event, no offers); it must be refused with a
/// failure containing `reason`.
async fn assert_announce_refused(
    peer: &mut TestPeer,
    swarm: InfoHash,
    peer_id: PeerId,
    reason: &str,
) {
    peer.announce(swarm, peer_id, None, &[]).await;
    assert_refused(peer, Some(swarm), reason).await;
}

/// Encoded client frames of each kind (`fin` false: more fragments follow).
fn text_frame(fin: bool, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, opcode::TEXT, payload)
}

fn continuation_frame(fin: bool, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, opcode::CONTINUATION, payload)
}

fn binary_frame(fin: bool, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, opcode::BINARY, payload)
}

/// Opens a raw socket and sends `writes`, each in one write: a test chooses how its
/// frames are split over writes (one frame each, or a whole flood at once).
async fn raw_socket_sending(app: &TestApp, writes: &[Vec<u8>]) -> RawWs {
    let mut raw = RawWs::connect(app.addr).await;
    for bytes in writes {
        raw.stream.write_all(bytes).await.expect("send");
    }
    raw
}
