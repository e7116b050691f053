//! An ordered parallel map: worker threads compute results for a list of jobs, and one consumer (the
//! calling thread, which writes the output file) receives them in job order. Each worker has at most
//! `QUEUE` finished results waiting, so memory stays at a few results however long the list.

use std::sync::mpsc::sync_channel;

use crate::error::Result;

/// Finished results a worker may hold before it waits for the consumer: enough that a consumer
/// busy for a moment (a large direct write, a copied tensor) does not stop the workers.
const QUEUE: usize = 4;

/// How many threads to work with: the machine's cores, but no more than there are jobs.
pub(crate) fn worker_count(jobs: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, jobs.max(1))
}

/// Runs `work` on every job across the cores (`init` makes each worker's scratch state) and hands
/// each result to `sink` in job order. Stops at the first error `sink` returns.
pub(crate) fn ordered<J, S, R>(
    jobs: &[J],
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &J) -> R + Sync,
    mut sink: impl FnMut(&J, R) -> Result<()>,
) -> Result<()>
where
    J: Sync,
    R: Send,
{
    let workers = worker_count(jobs.len());
    std::thread::scope(|scope| {
        let mut queues = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel::<R>(QUEUE);
            queues.push(rx);
            let (init, work) = (&init, &work);
            scope.spawn(move || {
                let mut state = init();
                for job in jobs.iter().skip(w).step_by(workers) {
                    // The consumer stopped (an error): nothing more to do.
                    if tx.send(work(&mut state, job)).is_err() {
                        return;
                    }
                }
            });
        }
        for (i, job) in jobs.iter().enumerate() {
            let result = queues[i % workers].recv().expect("worker thread panicked");
            sink(job, result)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_order_and_errors_stop_the_run() {
        let jobs: Vec<u64> = (0..1000).collect();
        let mut seen = Vec::new();
        ordered(
            &jobs,
            || 0u64,
            |calls, j| {
                *calls += 1;
                j * 2
            },
            |j, r| {
                seen.push((*j, r));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, jobs.iter().map(|j| (*j, j * 2)).collect::<Vec<_>>());
        let mut n = 0;
        let err = ordered(
            &jobs,
            || (),
            |_, j| *j,
            |j, _| {
                n += 1;
                if *j == 10 { Err(crate::Error::Cancelled) } else { Ok(()) }
            },
        );
        assert!(matches!(err, Err(crate::Error::Cancelled)));
        assert_eq!(n, 11);
    }
}
