//! The machine's cores split in two for the intake figure: the broker and the bench's
//! feeding clients on one half, the receiving side (the agent, or the floor's plain
//! subscriber) on the other.
//!
//! Why: in a shop the broker runs elsewhere (the cloud), so the agent's CPU is not the
//! broker's. On one shared machine the broker's own throughput depends on how much CPU its
//! receiver leaves it, and the figure becomes the whole machine's CPU per message, which
//! an agent doing anything at all beyond a bare subscriber's read and PUBACK loses (the
//! nineteenth measurement in `docs/performance.md`). With the halves split, the floor is
//! what the broker side can deliver, the same in both runs, and the figure says whether
//! the agent keeps up with it. The shared-machine figure is still measured beside it.

use std::io;

/// Which CPUs each side gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub(crate) broker: Vec<usize>,
    pub(crate) receiver: Vec<usize>,
    /// Every CPU this process may run on (restored when the figure is done).
    pub(crate) all: Vec<usize>,
}

impl Split {
    /// The CPUs this process may run on, halved: the lower half for the broker side, the
    /// upper for the receiver. `None` with fewer than two.
    pub(crate) fn of_this_process() -> Option<Split> {
        Split::halve(allowed(0).ok()?)
    }

    fn halve(all: Vec<usize>) -> Option<Split> {
        if all.len() < 2 {
            return None;
        }
        let (broker, receiver) = all.split_at(all.len() / 2);
        Some(Split { broker: broker.to_vec(), receiver: receiver.to_vec(), all: all.clone() })
    }
}

/// The CPUs thread (or process) `tid` may run on; 0 is the calling thread.
fn allowed(tid: u32) -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid as libc::pid_t, std::mem::size_of_val(&set), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set within its size (CPU_SETSIZE bits).
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

fn set(tid: u32, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in `allowed`; CPU_SET writes within the set for c < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(tid as libc::pid_t, std::mem::size_of_val(&set), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The calling thread onto `cpus` (threads it starts later inherit them).
pub(crate) fn pin_this_thread(cpus: &[usize]) -> io::Result<()> {
    set(0, cpus)
}

/// Every thread of process `pid` onto `cpus`; threads they start later inherit them.
/// A thread that ended meanwhile is no error.
pub(crate) fn pin_process(pid: u32, cpus: &[usize]) -> io::Result<()> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        match set(tid, cpus) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            r => r?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpus_are_halved_broker_side_first_and_one_cpu_cannot_be_split() {
        assert_eq!(Split::halve(vec![0]), None);
        let s = Split::halve(vec![0, 1]).expect("two");
        assert_eq!((s.broker, s.receiver), (vec![0], vec![1]));
        let s = Split::halve(vec![0, 1, 2, 3, 4]).expect("five");
        assert_eq!((s.broker, s.receiver, s.all.len()), (vec![0, 1], vec![2, 3, 4], 5));
    }

    #[test]
    fn a_process_pinned_runs_only_where_it_was_put_and_can_be_put_back() {
        let Some(split) = Split::of_this_process() else {
            return; // one CPU: nothing to split
        };
        // A child process: pinning this test's own process would move its sibling tests.
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        pin_process(child.id(), &split.receiver).expect("pin");
        assert_eq!(allowed(child.id()).expect("read"), split.receiver);
        pin_process(child.id(), &split.all).expect("unpin");
        assert_eq!(allowed(child.id()).expect("read"), split.all);
        let _ = child.kill();
        let _ = child.wait();
    }
}
