//! The rayon driver.
//!
//! Work is cut into chunks of rows by bytes (about `CHUNK_BYTES` of input each). Chunk
//! boundaries depend only on the row length and dtype, never on the thread count, and partial
//! results are combined in chunk order, so every reduction is identical bit for bit whatever
//! the number of threads.
//!
//! A call run through [`run_cancellable`] can be cancelled between chunks (Ctrl-C): every
//! chunk first looks at its call's flag and, once it is set, unwinds with a [`Cancelled`]
//! payload instead of computing, so a long call stops within one chunk's time.

use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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
    let requested = *REQUESTED.lock().unwrap_or_else(PoisonError::into_inner);
    requested
        .or_else(env_threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

/// Sets the thread count (0 = back to the environment / CPU count).
pub fn set_num_threads(n: usize) {
    *REQUESTED.lock().unwrap_or_else(PoisonError::into_inner) = if n == 0 { None } else { Some(n) };
}

/// The pool for this process. A pool inherited through `fork` has no worker threads in the
/// child, so a pool is only reused by the process that built it.
fn pool() -> Arc<rayon::ThreadPool> {
    let want = num_threads();
    let pid = std::process::id();
    let mut guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
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

/// The panic payload of a chunk whose call was cancelled; [`run_cancellable`] returns it as
/// its `Err`. It is raised with `resume_unwind`, so no panic message is printed.
pub struct Cancelled;

/// How often the caller of [`run_cancellable`] asks whether to cancel.
pub const POLL: Duration = Duration::from_millis(50);

type Token = Option<Arc<AtomicBool>>;

thread_local! {
    /// The cancellation flag of the call this thread is working for (set for the call's own
    /// job and for every chunk it runs, so nested `map_chunks` see the right flag).
    static TOKEN: RefCell<Token> = const { RefCell::new(None) };
}

/// Sets this thread's token; the previous one comes back on drop (also when unwinding).
struct TokenScope(Token);

impl TokenScope {
    fn set(t: Token) -> Self {
        TokenScope(TOKEN.with(|c| c.replace(t)))
    }
}

impl Drop for TokenScope {
    fn drop(&mut self) {
        let prev = self.0.take();
        TOKEN.with(|c| *c.borrow_mut() = prev);
    }
}

fn current_token() -> Token {
    TOKEN.with(|c| c.borrow().clone())
}

/// Before a chunk: unwind with [`Cancelled`] if its call was cancelled, else run the chunk
/// with the call's token (no cost when the call is not cancellable).
fn enter_chunk(tok: &Token) -> Option<TokenScope> {
    let t = tok.as_ref()?;
    if t.load(Ordering::Relaxed) {
        resume_unwind(Box::new(Cancelled));
    }
    Some(TokenScope::set(Some(t.clone())))
}

/// A cancellable call on its calling thread: its flag and how to ask whether to cancel.
struct Call {
    flag: Arc<AtomicBool>,
    poll: Box<dyn FnMut() -> bool>,
}

impl Call {
    /// Asks the caller whether to cancel (once the call is cancelled it is not asked again).
    fn poll(&mut self) {
        if !self.flag.load(Ordering::Relaxed) && (self.poll)() {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

thread_local! {
    static CALL: RefCell<Option<Call>> = const { RefCell::new(None) };
}

/// Parallel sections of at least this many chunks (each about `CHUNK_BYTES`, so a few ms of
/// work) are watched: the calling thread waits on them with a timeout and polls. Smaller ones
/// keep the plain blocking `install` (a watched section costs a few tens of microseconds).
const WATCH_CHUNKS: usize = 16;

/// Runs `job` on this thread as a cancellable call: while one of its parallel sections is
/// long ([`WATCH_CHUNKS`]), this thread waits for the pool with a timeout and calls
/// `interrupted` every [`POLL`]; once it returns true the call's remaining chunks are skipped
/// and the call ends with an `Err` holding [`Cancelled`]. A panic in the job is returned as
/// `Err` too (as `catch_unwind`). The flag belongs to this call only: other calls running at
/// the same time are not affected.
pub fn run_cancellable<R>(
    job: impl FnOnce() -> R,
    interrupted: impl FnMut() -> bool + 'static,
) -> std::thread::Result<R> {
    let flag = Arc::new(AtomicBool::new(false));
    let call = Call {
        flag: flag.clone(),
        poll: Box::new(interrupted),
    };
    let prev = CALL.with(|c| c.replace(Some(call)));
    let r = {
        let _scope = TokenScope::set(Some(flag));
        catch_unwind(AssertUnwindSafe(job))
    };
    CALL.with(|c| *c.borrow_mut() = prev);
    r
}

fn watching() -> bool {
    CALL.with(|c| c.borrow().is_some())
}

/// Runs `work` on the pool while this (calling) thread polls its call (see
/// [`run_cancellable`]); a panic or cancellation in `work` is resumed here.
fn watched<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let Some(mut call) = CALL.with(|c| c.borrow_mut().take()) else {
        return install(work);
    };
    let (tx, rx) = channel();
    let tok = Some(call.flag.clone());
    let out = pool().in_place_scope(|s| {
        s.spawn(move |_| {
            let _scope = TokenScope::set(tok);
            let _ = tx.send(catch_unwind(AssertUnwindSafe(work)));
        });
        loop {
            match rx.recv_timeout(POLL) {
                Ok(r) => break r,
                Err(RecvTimeoutError::Timeout) => call.poll(),
                Err(RecvTimeoutError::Disconnected) => {
                    break Err(Box::new("a parallel section ended without a result"));
                }
            }
        }
    });
    CALL.with(|c| *c.borrow_mut() = Some(call));
    out.unwrap_or_else(|p| resume_unwind(p))
}

/// Runs a parallel section: watched when it is long and this is a cancellable call's thread.
fn section<T: Send>(chunks: usize, work: impl FnOnce() -> T + Send) -> T {
    if chunks >= WATCH_CHUNKS && watching() {
        watched(work)
    } else {
        install(work)
    }
}

/// Runs `f` on the fastnll pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Rows per chunk for rows of `row_bytes`: about `CHUNK_BYTES`, and at least one group
/// ([`crate::kernel::GROUP`] rows) for rows of up to [`GROUP_ROW_BYTES`], since the long-row
/// kernels take rows a group at a time and leave a chunk of fewer to the row-by-row path (rows of 16 K float32 classes and
/// more in 1 MiB chunks had taken it, so every layout that is not read in place, Fortran
/// order among them, gathered each row element by element: 20x slower than C order at
/// C = 32000).
pub fn chunk_rows(row_bytes: usize) -> usize {
    let least = if row_bytes <= GROUP_ROW_BYTES {
        crate::kernel::GROUP
    } else {
        1
    };
    (CHUNK_BYTES / row_bytes.max(1)).max(least)
}

/// Longest row, in bytes, that [`chunk_rows`] gives chunks of at least a group of rows: a float32 row
/// of `2·rows::SEGMENT` classes, the longest the kernels take whole (longer rows are split
/// into segments on the pool).
pub const GROUP_ROW_BYTES: usize = 2 * crate::rows::SEGMENT * 4;

/// Chunk ranges covering 0..n.
pub fn chunks(n: usize, per: usize) -> Vec<Range<usize>> {
    (0..n.div_ceil(per))
        .map(|k| k * per..((k + 1) * per).min(n))
        .collect()
}

thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread runs a one-chunk section inline (see [`inline`]): nested parallel
/// loops then run their pieces in order on this thread instead.
pub fn is_serial() -> bool {
    SERIAL.with(std::cell::Cell::get)
}

/// Runs a section of one chunk of several rows (at most `CHUNK_BYTES` of input, tens of
/// microseconds) on the calling thread: handing it to a pool thread costs a wake-up of about
/// 50 us, which was the whole time of a small call. Same chunk, same arithmetic: results are
/// unchanged.
fn inline<T>(f: impl FnOnce() -> T) -> T {
    let _reset = SerialReset(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Whether a section of several chunks runs on the calling thread: with one thread the pool's
/// only worker would compute the same chunks in the same order, after a wake-up (measured
/// through the API at one thread: 2 chunks of [512, 1000] float32 rows 252 us median against
/// 2 x 54 us for one chunk).
fn one_thread() -> bool {
    num_threads() == 1
}

/// Runs `f` on each item in order on this thread (see [`inline`]), asking the cancellable
/// call this thread runs (if any) whether to cancel every [`POLL`] between items, as a
/// watched section's caller does; a cancelled call's next item unwinds in `enter_chunk`.
fn inline_each<I, T>(items: impl IntoIterator<Item = I>, mut f: impl FnMut(I) -> T) -> Vec<T> {
    inline(|| {
        let mut last = std::time::Instant::now();
        items
            .into_iter()
            .map(|it| {
                if watching() && last.elapsed() >= POLL {
                    last = std::time::Instant::now();
                    CALL.with(|c| c.borrow_mut().as_mut().map(Call::poll));
                }
                f(it)
            })
            .collect()
    })
}

/// Restores the thread's serial flag when an inline section ends (or unwinds).
struct SerialReset(bool);

impl Drop for SerialReset {
    fn drop(&mut self) {
        SERIAL.with(|s| s.set(self.0));
    }
}

/// Applies `f` to each item (a chunk of `per` rows), in parallel on the pool unless there is
/// only one chunk of several rows (then on this thread, see [`inline`]; one row of half a
/// chunk or more stays on the pool, where its class axis is split); results in item order.
pub fn map_items<I: Send, T: Send>(
    items: Vec<I>,
    per: usize,
    f: impl Fn(I) -> T + Sync + Send,
) -> Vec<T> {
    if (items.len() <= 1 && per > 1) || one_thread() {
        let tok = current_token();
        return inline_each(items, |it| {
            let _scope = enter_chunk(&tok);
            f(it)
        });
    }
    install(|| items.into_par_iter().map(&f).collect())
}

/// Applies `f` to every chunk in parallel; results come back in chunk order.
pub fn map_chunks<T: Send>(
    n: usize,
    per: usize,
    f: impl Fn(Range<usize>) -> T + Sync + Send,
) -> Vec<T> {
    let ranges = chunks(n, per);
    let tok = current_token();
    let _ = enter_chunk(&tok);
    // (per = 1: rows of half a chunk or more; a single one splits its class axis on the pool)
    if (ranges.len() <= 1 && per > 1) || one_thread() {
        return inline_each(ranges, |r| {
            let _scope = enter_chunk(&tok);
            f(r)
        });
    }
    section(ranges.len(), || {
        ranges
            .into_par_iter()
            .map(|r| {
                let _scope = enter_chunk(&tok);
                f(r)
            })
            .panic_fuse() // once a chunk unwinds (cancelled), the others stop at once
            .collect()
    })
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
    let tok = current_token();
    let _ = enter_chunk(&tok);
    if n <= per && per > 1 {
        return inline(|| {
            let _scope = enter_chunk(&tok);
            vec![f(0..n, out)]
        });
    }
    if one_thread() {
        let per = per.max(1);
        return inline_each(out.chunks_mut(per * width).enumerate(), |(k, o)| {
            let _scope = enter_chunk(&tok);
            f(k * per..(k * per + o.len() / width).min(n), o)
        });
    }
    section(n.div_ceil(per.max(1)), || {
        out.par_chunks_mut(per * width)
            .enumerate()
            .map(|(k, o)| {
                let _scope = enter_chunk(&tok);
                f(k * per..(k * per + o.len() / width).min(n), o)
            })
            .panic_fuse()
            .collect()
    })
}

/// Held by tests that change the thread count or depend on it (cargo runs tests in parallel).
#[cfg(test)]
pub(crate) static THREADS_LOCK: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod cancel_tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn threads_lock() -> std::sync::MutexGuard<'static, ()> {
        THREADS_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resets the thread count when a test ends (also when it fails).
    struct Threads;
    impl Drop for Threads {
        fn drop(&mut self) {
            set_num_threads(0);
        }
    }

    #[test]
    fn one_chunk_runs_inline_and_more_on_the_pool() {
        let _g = threads_lock();
        let _t = Threads;
        set_num_threads(2);
        let me = std::thread::current().id();
        let one = map_chunks(10, 100, |_| (std::thread::current().id(), is_serial()));
        assert_eq!(one, vec![(me, true)]);
        assert!(!is_serial(), "the flag is reset after the section");
        let many = map_chunks(1000, 10, |_| is_serial());
        assert!(many.iter().all(|&s| !s), "pool chunks are not serial");
        // one row of half a chunk or more stays on the pool (its class axis is split there)
        assert_eq!(map_chunks(1, 1, |_| is_serial()), vec![false]);
        let mut out = vec![0u8; 10];
        let r = map_chunks_out(&mut out, 1, 100, |_, _| std::thread::current().id());
        assert_eq!(r, vec![me]);
        assert_eq!(map_items(vec![0], 100, |_| is_serial()), vec![true]);
        assert_eq!(map_items(vec![0], 1, |_| is_serial()), vec![false]);
    }

    #[test]
    fn with_one_thread_every_section_runs_in_order_on_the_calling_thread() {
        let _g = threads_lock();
        let _t = Threads;
        let me = std::thread::current().id();
        let here = |v: &[(std::thread::ThreadId, bool)]| v.iter().all(|&(id, s)| id == me && s);
        set_num_threads(1);
        let many = map_chunks(1000, 10, |r| {
            (r.start, (std::thread::current().id(), is_serial()))
        });
        assert_eq!(many.len(), 100);
        assert!(
            many.iter().map(|p| p.0).eq((0..1000).step_by(10)),
            "chunks in order"
        );
        assert!(here(&many.iter().map(|p| p.1).collect::<Vec<_>>()));
        assert!(!is_serial(), "the flag is reset after the section");
        // one row of half a chunk or more: no pool either (its class axis splits in order)
        assert_eq!(map_chunks(3, 1, |_| is_serial()), vec![true; 3]);
        let mut out = vec![0u32; 95];
        let r = map_chunks_out(&mut out, 5, 4, |rg, o| {
            assert_eq!(o.len(), 5 * rg.len());
            o.fill(rg.start as u32);
            (std::thread::current().id(), is_serial())
        });
        assert_eq!(r.len(), 5);
        assert!(here(&r));
        let want: Vec<u32> = (0..95).map(|i| (i / 5 / 4 * 4) as u32).collect();
        assert_eq!(out, want, "each chunk got its own rows of out");
        let items = map_items(vec![3, 1, 2], 1, |i| (i, std::thread::current().id()));
        assert_eq!(items, vec![(3, me), (1, me), (2, me)]);
        // and the same rows on two threads go to the pool, with the same results
        set_num_threads(2);
        let two = map_chunks(1000, 10, |r| (r.start, std::thread::current().id() == me));
        assert!(two.iter().map(|p| p.0).eq((0..1000).step_by(10)));
        assert!(two.iter().any(|p| !p.1), "two threads: pool workers");
    }

    #[test]
    fn a_cancelled_one_thread_call_polls_between_chunks_and_stops() {
        let _g = threads_lock();
        let _t = Threads;
        set_num_threads(1);
        let done = AtomicUsize::new(0);
        let polls = Arc::new(AtomicUsize::new(0));
        let seen = polls.clone();
        let me = std::thread::current().id();
        let r = run_cancellable(
            || {
                map_chunks(10_000, 1, |_| {
                    assert_eq!(std::thread::current().id(), me);
                    std::thread::sleep(Duration::from_millis(1));
                    done.fetch_add(1, Ordering::Relaxed);
                })
            },
            move || seen.fetch_add(1, Ordering::Relaxed) >= 2, // cancel at the third poll
        );
        let e = r.expect_err("cancelled");
        assert!(e.is::<Cancelled>());
        assert_eq!(
            polls.load(Ordering::Relaxed),
            3,
            "polled every POLL until it said so"
        );
        let n = done.load(Ordering::Relaxed);
        // three polls 50 ms apart: about 150 one-millisecond chunks (fewer on a loaded
        // machine, where a sleep of 1 ms lasts longer), then nothing more
        assert!((10..2000).contains(&n), "{n} chunks ran");
        // an uncancelled one-thread call returns its result
        let r = run_cancellable(
            || map_chunks(100, 7, |r| r.len()).iter().sum::<usize>(),
            || false,
        );
        assert_eq!(r.ok(), Some(100));
    }

    #[test]
    fn a_cancelled_call_skips_its_remaining_chunks() {
        let done = AtomicUsize::new(0);
        let polls = Arc::new(AtomicUsize::new(0));
        let seen = polls.clone();
        let r = run_cancellable(
            || {
                map_chunks(10_000, 1, |_| {
                    std::thread::sleep(Duration::from_millis(1));
                    done.fetch_add(1, Ordering::Relaxed);
                })
            },
            move || {
                seen.fetch_add(1, Ordering::Relaxed);
                true
            },
        );
        let e = r.expect_err("cancelled");
        assert!(e.is::<Cancelled>());
        assert!(polls.load(Ordering::Relaxed) >= 1);
        assert!(done.load(Ordering::Relaxed) < 10_000);
    }

    #[test]
    fn an_uncancelled_call_returns_its_result_and_panics_come_back() {
        let r = run_cancellable(
            || map_chunks(100, 7, |r| r.len()).iter().sum::<usize>(),
            || false,
        );
        assert_eq!(r.ok(), Some(100));
        let r = run_cancellable(|| -> usize { panic!("boom") }, || false);
        assert!(r.is_err());
        // Outside run_cancellable nothing is cancellable and the thread keeps no token.
        assert!(current_token().is_none());
        assert_eq!(map_chunks(5, 1, |r| r.start), vec![0, 1, 2, 3, 4]);
    }
}
