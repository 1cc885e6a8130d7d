//! The rayon driver.
//!
//! Work is cut into chunks of rows by bytes (about `CHUNK_BYTES` of input each). Chunk
//! boundaries depend only on the row length and dtype, never on the thread count, and partial
//! results are combined in chunk order, so every reduction is identical bit for bit whatever
//! the number of threads.

use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};

pub const CHUNK_BYTES: usize = 1024 << 10;

struct PoolState {
    pool: Arc<rayon::ThreadPool>,
    pid: u32,
    threads: usize,
}

static POOL: Mutex<Option<PoolState>> = Mutex::new(None);
static REQUESTED: Mutex<Option<usize>> = Mutex::new(None);

fn env_threads() -> Option<usize> {
    ["FASTNLL_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .filter_map(|v| v.trim().parse::<usize>().ok())
        .find(|&n| n > 0)
}

/// Threads used by the next call: `set_num_threads`, else `FASTNLL_NUM_THREADS`, else
/// `RAYON_NUM_THREADS`, else the number of CPUs.
pub fn num_threads() -> usize {
    let requested = *REQUESTED.lock().unwrap_or_else(|e| e.into_inner());
    requested
        .or_else(env_threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the thread count (0 = back to the environment / CPU count).
pub fn set_num_threads(n: usize) {
    *REQUESTED.lock().unwrap_or_else(|e| e.into_inner()) = if n == 0 { None } else { Some(n) };
}

/// The pool for this process. A pool inherited through `fork` has no worker threads in the
/// child, so a pool is only reused by the process that built it.
fn pool() -> Arc<rayon::ThreadPool> {
    let want = num_threads();
    let pid = std::process::id();
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(st) = guard.as_ref() {
        if st.pid == pid && st.threads == want {
            return st.pool.clone();
        }
        if st.pid != pid {
            // The parent's workers do not exist here; dropping the pool would wait on them.
            std::mem::forget(guard.take());
        }
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(want)
            .thread_name(|i| format!("fastnll-{i}"))
            .build()
            .expect("building a rayon thread pool"),
    );
    *guard = Some(PoolState {
        pool: pool.clone(),
        pid,
        threads: want,
    });
    pool
}

/// Runs `f` on the fastnll pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Rows per chunk for rows of `row_bytes`.
pub fn chunk_rows(row_bytes: usize) -> usize {
    (CHUNK_BYTES / row_bytes.max(1)).max(1)
}

/// Chunk ranges covering 0..n.
pub fn chunks(n: usize, per: usize) -> Vec<Range<usize>> {
    (0..n.div_ceil(per))
        .map(|k| k * per..((k + 1) * per).min(n))
        .collect()
}

/// Applies `f` to every chunk in parallel; results come back in chunk order.
pub fn map_chunks<T: Send>(
    n: usize,
    per: usize,
    f: impl Fn(Range<usize>) -> T + Sync + Send,
) -> Vec<T> {
    let ranges = chunks(n, per);
    install(|| ranges.into_par_iter().map(&f).collect())
}

/// Like [`map_chunks`], handing each chunk its slice of `out` (`width` elements per row).
pub fn map_chunks_out<T: Send, O: Send>(
    out: &mut [O],
    width: usize,
    per: usize,
    f: impl Fn(Range<usize>, &mut [O]) -> T + Sync + Send,
) -> Vec<T> {
    if width == 0 {
        return Vec::new();
    }
    let n = out.len() / width;
    install(|| {
        out.par_chunks_mut(per * width)
            .enumerate()
            .map(|(k, o)| f(k * per..(k * per + o.len() / width).min(n), o))
            .collect()
    })
}
