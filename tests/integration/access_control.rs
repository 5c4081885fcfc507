//! Access control: the info_hash allow/deny list (and its live reloads), and the Origin
//! allow-list beyond the basic case in limits.rs. Every case also checks that an honest
//! pair of peers in another swarm keeps signalling.
//!
//! SIGHUP reloads are not tested here: a signal reaches the whole test process.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::common::*;
use p2p_mediastream::{config::AccessMode, protocol::InfoHash, Settings};

const NOT_ALLOWED: &str = "info_hash not allowed on this tracker";

/// A temp dir holding the list file; removed when dropped.
struct ListFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ListFile {
    fn new(contents: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("info_hashes.txt");
        let list = Self { _dir: dir, path };
        list.write(contents);
        list
    }

    /// Replaces the file atomically (write + rename), so a reload never sees half a file.
    fn write(&self, contents: &str) {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let temp = dir.join("next.tmp");
        std::fs::write(&temp, contents).expect("write list");
        std::fs::rename(&temp, &self.path).expect("rename list");
    }
}

/// One line per hash, in the 20-character wire form.
fn lines(hashes: &[InfoHash]) -> String {
    hashes
        .iter()
        .map(|hash| format!("{}\n", hash.to_wire()))
        .collect()
}

fn with_list(mode: AccessMode, list: &ListFile) -> Settings {
    let mut settings = test_settings();
    settings.access.mode = mode;
    settings.access.list_path = list.path.clone();
    settings.access.reload_interval_secs = 1;
    settings
}

fn honest_swarm() -> InfoHash {
    info_hash(HONEST_BASE)
}

/// Announces `swarm` from `peer` and returns the reply (an announce response or failure).
async fn announce_reply(peer: &mut TestPeer, swarm: InfoHash, n: u32) -> serde_json::Value {
    peer.announce(swarm, peer_id(n), None, &[]).await;
    peer.recv_json().await
}

fn assert_not_allowed(reply: &serde_json::Value, swarm: InfoHash) {
    assert_eq!(reply["failure reason"], NOT_ALLOWED, "{reply}");
    assert_eq!(reply["action"], "announce", "{reply}");
    assert_eq!(reply["info_hash"], swarm.to_wire(), "{reply}");
}

/// Announces until the reply is (or is not) a refusal, for at most 5 s.
async fn wait_until_allowed(peer: &mut TestPeer, swarm: InfoHash, n: u32, allowed: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = announce_reply(peer, swarm, n).await;
        let refused = reply["failure reason"] == NOT_ALLOWED;
        if refused != allowed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the list change never took effect (allowed={allowed}): {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// For `period_ms`, `swarm` keeps its current status (refused or not).
async fn stays(peer: &mut TestPeer, swarm: InfoHash, n: u32, allowed: bool, period_ms: u64) {
    let until = Instant::now() + Duration::from_millis(period_ms);
    while Instant::now() < until {
        let reply = announce_reply(peer, swarm, n).await;
        let refused = reply["failure reason"] == NOT_ALLOWED;
        assert_eq!(refused, !allowed, "status changed: {reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server whose access list file holds `contents` (applied in `mode`), an honest pair
/// signalling in its own swarm, and one more socket for the test. Fields drop in order:
/// the sockets, the server, then the list file.
struct Listed {
    peer: TestPeer,
    honest: HonestPair,
    app: TestApp,
    list: ListFile,
}

impl Listed {
    async fn start(mode: AccessMode, contents: &str) -> Self {
        let list = ListFile::new(contents);
        let app = spawn_app_with(with_list(mode, &list));
        let honest = HonestPair::join(&app).await;
        let peer = app.peer().await;
        Self {
            peer,
            honest,
            app,
            list,
        }
    }

    /// The end of every case: the honest pair still signals normally.
    async fn assert_honest_pair_unaffected(mut self) {
        self.honest.assert_unaffected().await;
    }
}

// ---------------------------------------------------------------------------------------
// allow / deny
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn allow_mode_refuses_an_unlisted_info_hash() {
    let mut t = Listed::start(AccessMode::Allow, &lines(&[honest_swarm(), info_hash(1)])).await;
    let reply = announce_reply(&mut t.peer, info_hash(2), 1).await;
    assert_not_allowed(&reply, info_hash(2));
    // Nothing was created for it, and the socket stays usable.
    assert_eq!(t.peer.scrape_counts(info_hash(2)).await, (0, 0));
    assert_eq!(peer_torrents(&t.app).await, 1);
    t.peer
        .assert_counts(info_hash(1), peer_id(1), None, (0, 1))
        .await;
    t.assert_honest_pair_unaffected().await;
}

async fn peer_torrents(app: &TestApp) -> u64 {
    peers_and_torrents(&app.stats().await).1
}

#[tokio::test]
async fn allow_mode_admits_a_listed_info_hash_with_comments_around_it() {
    let text = format!(
        "# live channels\n\n{}  # the honest pair\n{}\n",
        honest_swarm().to_wire(),
        info_hash(1).to_wire()
    );
    let mut t = Listed::start(AccessMode::Allow, &text).await;
    t.peer
        .assert_counts(info_hash(1), peer_id(1), None, (0, 1))
        .await;
    t.assert_honest_pair_unaffected().await;
}

#[tokio::test]
async fn allow_mode_accepts_hex_entries() {
    let binary = InfoHash(std::array::from_fn(|index| {
        (index as u8).wrapping_mul(13).wrapping_add(0x80)
    }));
    let text = format!(
        "{}\n{}\n",
        honest_swarm().to_hex(),
        binary.to_hex().to_uppercase()
    );
    let mut t = Listed::start(AccessMode::Allow, &text).await;
    t.peer.assert_counts(binary, peer_id(1), None, (0, 1)).await;
    t.assert_honest_pair_unaffected().await;
}

#[tokio::test]
async fn deny_mode_refuses_a_listed_info_hash() {
    let mut t = Listed::start(AccessMode::Deny, &lines(&[info_hash(1)])).await;
    let reply = announce_reply(&mut t.peer, info_hash(1), 1).await;
    assert_not_allowed(&reply, info_hash(1));
    assert_eq!(t.peer.scrape_counts(info_hash(1)).await, (0, 0));
    t.assert_honest_pair_unaffected().await;
}

#[tokio::test]
async fn deny_mode_admits_an_unlisted_info_hash() {
    let mut t = Listed::start(AccessMode::Deny, &lines(&[info_hash(1)])).await;
    t.peer
        .assert_counts(info_hash(2), peer_id(1), None, (0, 1))
        .await;
    t.assert_honest_pair_unaffected().await;
}

/// `stopped` is never refused: a peer must always be able to leave.
#[tokio::test]
async fn stopped_for_a_refused_info_hash_gets_counts_not_a_failure() {
    let mut t = Listed::start(AccessMode::Allow, &lines(&[honest_swarm()])).await;
    t.peer
        .assert_counts(info_hash(1), peer_id(1), Some("stopped"), (0, 0))
        .await;
    t.assert_honest_pair_unaffected().await;
}

/// Scrapes are not access-checked: an unlisted hash simply has no peers.
#[tokio::test]
async fn scrape_of_a_refused_info_hash_answers_zeros() {
    let mut t = Listed::start(AccessMode::Allow, &lines(&[honest_swarm()])).await;
    assert_eq!(t.peer.scrape_counts(info_hash(1)).await, (0, 0));
    assert_eq!(t.peer.scrape_counts(honest_swarm()).await, (0, 2));
    t.assert_honest_pair_unaffected().await;
}

#[tokio::test]
async fn an_answer_in_a_refused_swarm_is_refused() {
    let mut t = Listed::start(AccessMode::Allow, &lines(&[honest_swarm(), info_hash(1)])).await;
    let swarm = info_hash(1);
    let offerer = &mut t.peer;
    let mut answerer = t.app.peer().await;
    offerer.announce_counts(swarm, peer_id(1), None).await;
    answerer.announce_counts(swarm, peer_id(2), None).await;
    let offer = offer_id(1);
    offerer
        .announce(swarm, peer_id(1), None, &[(offer, "v=0 offer")])
        .await;
    offerer.recv_announce_reply().await;
    answerer.recv_json().await;

    // The swarm is delisted while the offer waits for its answer.
    t.list.write(&lines(&[honest_swarm()]));
    wait_until_allowed(offerer, swarm, 1, false).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert_not_allowed(&answerer.recv_json().await, swarm);
    offerer.expect_silence().await;
    // Members can still leave.
    answerer
        .assert_counts(swarm, peer_id(2), Some("stopped"), (0, 1))
        .await;
    t.assert_honest_pair_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Live reloads (access.reload_interval_secs = 1)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn adding_an_info_hash_to_the_allow_list_takes_effect_without_restart() {
    let mut t = Listed::start(AccessMode::Allow, &lines(&[honest_swarm()])).await;
    let reply = announce_reply(&mut t.peer, info_hash(1), 1).await;
    assert_not_allowed(&reply, info_hash(1));
    t.list.write(&lines(&[honest_swarm(), info_hash(1)]));
    wait_until_allowed(&mut t.peer, info_hash(1), 1, true).await;
    t.assert_honest_pair_unaffected().await;
}

#[tokio::test]
async fn adding_an_info_hash_to_the_deny_list_takes_effect_without_restart() {
    let mut t = Listed::start(AccessMode::Deny, "# nothing denied yet\n").await;
    t.peer
        .assert_counts(info_hash(1), peer_id(1), None, (0, 1))
        .await;
    t.list.write(&lines(&[info_hash(1)]));
    wait_until_allowed(&mut t.peer, info_hash(1), 1, false).await;
    t.assert_honest_pair_unaffected().await;
}

/// Over several reload intervals nothing changes: info_hash 1 stays allowed and 2 stays
/// refused, as in the list that applied before the file went bad.
async fn assert_previous_list_kept(peer: &mut TestPeer) {
    stays(peer, info_hash(1), 1, true, 2500).await;
    stays(peer, info_hash(2), 2, false, 500).await;
}

#[tokio::test]
async fn a_broken_list_file_keeps_the_previous_list() {
    let mut t = Listed::start(AccessMode::Allow, &lines(&[honest_swarm(), info_hash(1)])).await;
    // The broken file would allow info_hash 2 and drop 1, were it applied.
    t.list.write(&format!(
        "{}{}this line is not an info_hash\n",
        lines(&[honest_swarm()]),
        info_hash(2).to_wire()
    ));
    assert_previous_list_kept(&mut t.peer).await;
    // A fixed file applies.
    t.list.write(&lines(&[honest_swarm(), info_hash(2)]));
    wait_until_allowed(&mut t.peer, info_hash(2), 2, true).await;
    wait_until_allowed(&mut t.peer, info_hash(3), 3, false).await;
    let reply = announce_reply(&mut t.peer, info_hash(1), 4).await;
    assert_not_allowed(&reply, info_hash(1));
    t.assert_honest_pair_unaffected().await;
}

#[tokio::test]
async fn a_deleted_list_file_keeps_the_previous_list() {
    let mut t = Listed::start(AccessMode::Allow, &lines(&[honest_swarm(), info_hash(1)])).await;
    std::fs::remove_file(&t.list.path).expect("remove list");
    assert_previous_list_kept(&mut t.peer).await;
    t.assert_honest_pair_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Origin allow-list (ws.allowed_origins)
// ---------------------------------------------------------------------------------------

const ORIGIN: &str = "https://example.com";

fn with_origins() -> Settings {
    let mut settings = test_settings();
    settings.ws.allowed_origins = vec![ORIGIN.into(), "https://player.example.org".into()];
    settings
}

async fn origin_case(origin: Option<&str>, admitted: bool) {
    let app = spawn_app_with(with_origins());
    let mut honest =
        HonestPair::join_with(&app, &[("Origin", ORIGIN)], &[("Origin", ORIGIN)]).await;
    let headers: Vec<(&str, &str)> = origin.map(|value| ("Origin", value)).into_iter().collect();
    match try_connect(&app.ws_url(), &headers).await {
        Ok(mut peer) => {
            assert!(admitted, "origin {origin:?} was admitted");
            assert_eq!(
                peer.announce_counts(info_hash(1), peer_id(1), None).await,
                (0, 1)
            );
        }
        Err((status, body)) => {
            assert!(!admitted, "origin {origin:?} was refused: {status} {body}");
            assert_eq!(status, 403, "{body}");
            assert_eq!(websockets(&app.stats().await), 2, "no slot taken");
        }
    }
    honest.assert_unaffected().await;
}

/// One test per Origin header: `name: origin (None: no header) => outcome;`. Each case is
/// its own test, so a failure names it.
macro_rules! origin_tests {
    ($($name:ident: $origin:expr => $admitted:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                origin_case($origin, $admitted).await;
            }
        )*
    };
}

const ADMITTED: bool = true;
const REFUSED: bool = false;

origin_tests! {
    origin_match_is_case_sensitive: Some("https://EXAMPLE.com") => REFUSED;
    origin_scheme_must_match: Some("http://example.com") => REFUSED;
    missing_origin_is_refused_when_a_list_is_set: None => REFUSED;
    origin_with_a_trailing_slash_is_refused: Some("https://example.com/") => REFUSED;
    origin_with_an_explicit_default_port_is_refused: Some("https://example.com:443") => REFUSED;
    null_origin_is_refused: Some("null") => REFUSED;
    a_subdomain_of_an_allowed_origin_is_refused: Some("https://evil.example.com") => REFUSED;
    every_listed_origin_is_admitted: Some("https://player.example.org") => ADMITTED;
}
