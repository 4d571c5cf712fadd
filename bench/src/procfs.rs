//! Reading a process's memory and CPU time from /proc.

use std::fs;

/// USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100 on every x86-64 Linux build).
const CLK_TCK: u64 = 100;

/// Resident set size in KiB (`VmRSS` of /proc/<pid>/status); 0 when the process is gone.
pub fn rss_kib(pid: u32) -> u64 {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of every thread of the process, in microseconds (10 ms resolution).
pub fn cpu_us(pid: u32) -> u64 {
    cpu_us_of(&format!("/proc/{pid}/stat"))
}

/// The same for this process.
pub fn self_cpu_us() -> u64 {
    cpu_us_of("/proc/self/stat")
}

fn cpu_us_of(path: &str) -> u64 {
    let Ok(s) = fs::read_to_string(path) else { return 0 };
    // The command name may hold spaces: the fields we want come after the last ')'.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14) + ticks(15)) * 1_000_000 / CLK_TCK
}

/// Summed over several processes (the two nodes of S5).
pub fn cpu_us_all(pids: &[u32]) -> u64 {
    pids.iter().map(|p| cpu_us(*p)).sum()
}

pub fn rss_kib_all(pids: &[u32]) -> u64 {
    pids.iter().map(|p| rss_kib(*p)).sum()
}

/// Busy time of the whole machine (every core: user, nice, system, irq, softirq, steal) in µs,
/// from the `cpu` line of /proc/stat. Minus the server's and the generator's own CPU time it tells
/// how much else ran during a measurement (other processes, interrupts not charged to either).
pub fn machine_busy_us() -> u64 {
    let Ok(s) = fs::read_to_string("/proc/stat") else { return 0 };
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else { return 0 };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0usize, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum::<u64>();
    busy * 1_000_000 / CLK_TCK
}
