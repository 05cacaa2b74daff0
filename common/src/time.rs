//! Wall-clock timestamps as seconds since the Unix epoch (f64), the form stored
//! and sent on the wire.

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
