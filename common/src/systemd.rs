//! systemd integration shared by the daemons: readiness and status lines, and
//! a watchdog that pings only while the daemon's main loop makes progress (a
//! wedged loop stops the pings and systemd restarts the service), never from a
//! bare timer. Everything is a no-op outside systemd (no `NOTIFY_SOCKET`).

use sd_notify::NotifyState;
use std::sync::{Arc, Mutex};
use tokio::time::{Duration, Instant};

/// When the main loop last made progress.
pub struct Liveness(Mutex<Instant>);

impl Liveness {
    pub fn new() -> Arc<Liveness> {
        Arc::new(Liveness(Mutex::new(Instant::now())))
    }

    /// Records progress of the main loop.
    pub fn beat(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Time since the last progress.
    pub fn age(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

/// Tells systemd the service is ready (after its state is loaded), with a status line.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A STATUS= line (shown by `systemctl status`).
pub fn status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings at half the interval while the loop's last beat is younger than the
/// interval; stays silent while the loop is stuck. Runs until cancelled.
pub async fn watchdog_loop(interval: Duration, liveness: Arc<Liveness>, mut ping: impl FnMut()) {
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if liveness.age() < interval {
            ping();
        }
    }
}

/// Spawns the watchdog when systemd asked for one.
pub fn spawn_watchdog(liveness: Arc<Liveness>) -> Option<tokio::task::JoinHandle<()>> {
    let interval = watchdog_interval()?;
    Some(tokio::spawn(watchdog_loop(interval, liveness, || {
        let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn pings_at_half_the_interval_only_while_the_loop_progresses() {
        let live = Liveness::new();
        let pings = Arc::new(AtomicU32::new(0));
        let p = pings.clone();
        let task = tokio::spawn(watchdog_loop(
            Duration::from_secs(10),
            live.clone(),
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
        ));
        // A healthy loop beats every second: a ping every 5 s.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            live.beat();
        }
        let healthy = pings.load(Ordering::SeqCst);
        assert!((4..=5).contains(&healthy), "{healthy} pings in 20 s");
        // The loop gets stuck: after the interval, no more pings.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let at_stall = pings.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(pings.load(Ordering::SeqCst), at_stall, "pinged while stuck");
        // It recovers: pings resume.
        live.beat();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(pings.load(Ordering::SeqCst) > at_stall);
        task.abort();
    }
}
