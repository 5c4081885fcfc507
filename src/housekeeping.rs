//! Housekeeping: background tasks on the system's main arbiter, started once the server is
//! built: the sessions' heartbeat sweep (one timer for all of them), the frozen-session
//! watchdog (it cuts the socket of a session stuck behind a client that stopped reading),
//! the access list reloads (on its timer and on SIGHUP) and the return of freed memory to
//! the OS. They end with the System.

use std::{sync::Arc, time::Duration};

use log::{info, warn};

use crate::{config::AccessMode, shared::Shared};

/// The heartbeat sweep visits the sessions in this many slots per ping interval.
const HEARTBEAT_SLOTS: u64 = 16;

/// Starts the housekeeping tasks on the current (the system's main) arbiter.
pub fn spawn(shared: &Arc<Shared>) {
    let ws = &shared.settings.ws;
    let ping = Duration::from_secs(ws.ping_interval_secs);
    // A live session runs at least once per ping interval (its heartbeat), so one that has
    // not run for the idle timeout plus two pings is frozen behind a full socket.
    let frozen_after = Duration::from_secs(ws.idle_timeout_secs) + 2 * ping;
    let sweep = shared.clone();
    actix_web::rt::spawn(async move {
        // One slot of the sessions per tick, so a ping interval's pings are spread out.
        let mut ticks = actix_web::rt::time::interval(ping / HEARTBEAT_SLOTS as u32);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for slot in (0..HEARTBEAT_SLOTS).cycle() {
            ticks.tick().await;
            sweep.connections.heartbeat(slot, HEARTBEAT_SLOTS);
        }
    });
    let watchdog = shared.clone();
    actix_web::rt::spawn(async move {
        let mut ticks = actix_web::rt::time::interval(ping);
        loop {
            ticks.tick().await;
            let cut = watchdog.connections.cut_frozen(frozen_after);
            if cut > 0 {
                watchdog
                    .metrics
                    .closed_by_server_n("stopped_reading", cut as u64);
            }
        }
    });

    let trim_every = shared.settings.server.memory_trim_secs;
    if trim_every > 0 {
        actix_web::rt::spawn(async move {
            let period = Duration::from_secs(trim_every);
            let first = tokio::time::Instant::now() + period;
            let mut ticks = tokio::time::interval_at(first, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                return_freed_memory();
            }
        });
    }

    if shared.settings.dashboard.enabled {
        // The dashboard's chart of the last minutes, ready when the page opens.
        let sampler = shared.clone();
        actix_web::rt::spawn(async move {
            let mut ticks = actix_web::rt::time::interval(Duration::from_secs(
                crate::usage::HISTORY_INTERVAL_SECS,
            ));
            loop {
                ticks.tick().await;
                sampler
                    .usage
                    .record_sample(sampler.started_at.elapsed().as_secs_f64());
            }
        });
    }

    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered here, synchronously, before the server says it is listening: a SIGHUP
        // that arrived before the handler existed would kill the process (its default).
        let hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(err) => {
                warn!(
                    "cannot listen for SIGHUP ({err}); the access list reloads on its timer only"
                );
                None
            }
        };
        if let Some(mut hangups) = hangups {
            let reloader = shared.clone();
            actix_web::rt::spawn(async move {
                while hangups.recv().await.is_some() {
                    match reloader.access.reload() {
                        Ok(_) if reloader.access.mode() == AccessMode::Off => {
                            info!("SIGHUP: no access list configured; nothing to reload")
                        }
                        Ok(count) => info!("SIGHUP: access list reloaded: {count} info_hashes"),
                        Err(err) => warn!("SIGHUP: {err}; keeping the previous list"),
                    }
                }
            });
        }
    }

    if shared.access.mode() == AccessMode::Off {
        return;
    }
    let reloader = shared.clone();
    let every = Duration::from_secs(shared.settings.access.reload_interval_secs);
    actix_web::rt::spawn(async move {
        let mut ticks = actix_web::rt::time::interval(every);
        loop {
            ticks.tick().await;
            match reloader.access.reload_if_changed() {
                Ok(Some(count)) => info!("access list reloaded: {count} info_hashes"),
                Ok(None) => {}
                Err(err) => warn!("{err}; keeping the previous list"),
            }
        }
    });
}

/// Hands the heap's free pages back to the OS. glibc keeps memory freed in its arenas (the
/// worker threads' above all) for reuse, so the RSS after a burst of traffic would stay at
/// the burst's peak for the life of the process. `malloc_trim` releases the free pages of
/// every arena; it takes each arena's lock in turn, for about a millisecond per hundred
/// megabytes of heap, which is why it runs on a timer rather than after every free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    let started = std::time::Instant::now();
    // SAFETY: malloc_trim takes no pointers and only rearranges the allocator's own state
    // under its locks; it is safe to call from any thread at any time.
    let released = unsafe { libc::malloc_trim(0) };
    log::debug!(
        "memory trim: {} in {:?}",
        if released == 1 {
            "released pages"
        } else {
            "nothing to release"
        },
        started.elapsed()
    );
}

/// Other C libraries return freed memory by themselves or offer no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}
