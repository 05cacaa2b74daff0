//! The short chaos suite, run by `make test` with a fixed seed (a schedule that
//! has passed, so CI tests the same faults every time). LIANDAN_CHAOS_SEED=<n>
//! replays another schedule and LIANDAN_CHAOS_SEED=random draws a new one (its
//! seed is printed). LIANDAN_CHAOS_SECS sets how long faults are injected
//! (default 20 s); `liandan-bench chaos SECS SEED` runs longer soaks.

use liandan_e2e::chaos;

/// A schedule that passed; CI replays it on every change.
const CI_SEED: u64 = 1795804993605528451;

#[test]
fn chaos_short() {
    let seed = match std::env::var("LIANDAN_CHAOS_SEED").ok().as_deref() {
        None | Some("") => CI_SEED,
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        Some(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("LIANDAN_CHAOS_SEED={s:?}: expected a number or `random`")),
    };
    let secs = match std::env::var("LIANDAN_CHAOS_SECS").ok().as_deref() {
        None | Some("") => 20,
        Some(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("LIANDAN_CHAOS_SECS={s:?}: expected whole seconds")),
    };
    eprintln!("chaos seed {seed} (replay with LIANDAN_CHAOS_SEED={seed})");
    let r = chaos::run(seed, secs);
    eprintln!("{}", r.table());
    assert!(
        r.ok(),
        "{}\nreplay with LIANDAN_CHAOS_SEED={seed}",
        r.table()
    );
}

/// Regression: seed 1795805961348097836's fifth fault froze the coordinator
/// for 4.4 s (longer than the 2 s lease); when it ran again it expired every
/// worker's lease at once and restarted all four running jobs, although their
/// workers were fine. Leases now count only time the coordinator ran.
#[test]
fn chaos_regression_a_stalled_coordinator_keeps_its_workers_leases() {
    let seed = 1795805961348097836;
    let r = chaos::run_for(seed, chaos::Length::Faults(5));
    eprintln!("{}", r.table());
    assert!(
        r.faults
            .last()
            .is_some_and(|f| f.starts_with("freeze coordinator")),
        "the schedule changed: {:?}",
        r.faults
    );
    assert!(r.ok(), "{}", r.table());
}
