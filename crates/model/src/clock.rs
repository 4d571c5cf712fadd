//! The clock: every "now" of the gateway comes from here, so that storage and the model need nothing
//! from authentication or HTTP to read it.

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Now as an ISO-8601 UTC string with milliseconds (`2026-11-22T10:00:00.000Z`).
pub fn iso_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A new unique id: time-ordered hex milliseconds plus randomness (`m18c3f...-9f3a1b2c`).
pub fn new_id(prefix: &str) -> String {
    use rand::Rng;
    let r: u64 = rand::rng().random();
    format!("{prefix}{:011x}{:012x}", unix_now_ms(), r & 0xffff_ffff_ffff)
}
