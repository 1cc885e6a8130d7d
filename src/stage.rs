//! The one way rows reach the vector kernels, whatever their layout and target dtype.
//!
//! A run of rows is cut into tiles of a multiple of 16 rows. Each tile is read in place when
//! the kernels can (packed or row-strided rows; column-major short rows), else staged into this
//! thread's bounded scratch (rows packed, bytes swapped, columns transposed) and run through
//! the same kernel; targets of any integer dtype are widened to int64 per tile. Sums are
//! carried across tiles in one accumulator, in row order, so every layout, target dtype and
//! short-row scheme gives the same bits. Rows a kernel stops at (a bad target, an inf/NaN row)
//! are left to the caller's row kernel.

use crate::kernel::{self, Block, BlockSums, CeArgs, LANES_MAX_C};
use crate::simd::{self, Elem, Path, Short, BF16, F16};
use crate::tensor::{IntView, Storage, View};
use std::ops::Range;

/// Bytes of logits per staged tile of rows that are not short: small enough for L2.
const TILE_BYTES: usize = 64 << 10;
/// Rows per tile of short rows (C <= LANES_MAX_C) that softmax stages: at most 32 KiB of f32
/// column-major tile.
const SHORT_TILE: usize = 256;
/// Bytes of staged short rows (f32 column-major) per tile of the other operations.
const SHORT_TILE_BYTES: usize = 32 << 10;
/// Rows per tile when the rows are read in place and only the targets are widened: 32 KiB of
/// int64 targets. (Tiles of the short rows' 256 made cross_entropy at C = 2 up to 1.8x slower
/// with int32 or uint8 targets than with int64: a kernel call per 2 KiB of logits.)
pub(crate) const TARGET_TILE: usize = 4096;

/// This thread's staging memory for one call (reused tile after tile).
#[derive(Default)]
pub(crate) struct Scratch {
    f32: Vec<f32>,
    f16: Vec<F16>,
    bf16: Vec<BF16>,
    t: Vec<i64>,
}

/// A storage type the tiles hold: picks its buffer (and the targets') from a [`Scratch`].
pub(crate) trait Tile: Elem + Storage {
    fn bufs(s: &mut Scratch) -> (&mut Vec<Self>, &mut Vec<i64>);
}

macro_rules! tile_buf {
    ($t:ty, $f:ident) => {
        impl Tile for $t {
            fn bufs(s: &mut Scratch) -> (&mut Vec<Self>, &mut Vec<i64>) {
                (&mut s.$f, &mut s.t)
            }
        }
    };
}
tile_buf!(f32, f32);
tile_buf!(F16, f16);
tile_buf!(BF16, bf16);

/// Rows per tile: a multiple of 16 (so the lanes blocks and row groups fall on the same rows
/// in every layout), about `TILE_BYTES` of input, at least 16 rows.
fn tile_rows(c: usize, size: usize) -> usize {
    if c <= LANES_MAX_C {
        // 256 rows at C = 32, up to 4096 at C = 2
        return ((SHORT_TILE_BYTES / (4 * c.max(1))) & !15).clamp(SHORT_TILE, TARGET_TILE);
    }
    ((TILE_BYTES / (c * size).max(1)) & !15).max(16)
}

/// Rows of the next call of a run with `left` rows left: all of them when the rows are read
/// in place (`direct`) with packed int64 targets, [`TARGET_TILE`] when only the targets are
/// widened, else a staged `tile`.
fn run_rows(direct: bool, packed_targets: bool, tile: usize, left: usize) -> usize {
    match (direct, packed_targets) {
        (true, true) => left,
        (true, false) => TARGET_TILE.min(left),
        _ => tile.min(left),
    }
}

/// Whether [`source`] reads rows from `i` on in place (no staging, so no tile bound needed).
fn in_place(x: &View, i: usize) -> bool {
    macro_rules! at {
        ($t:ty) => {
            x.row_run::<$t>(i).is_some()
                || (x.cols() <= LANES_MAX_C && x.col_run::<$t>(i).is_some())
        };
    }
    match x.dtype {
        crate::tensor::DType::F32 => at!(f32),
        crate::tensor::DType::F16 => at!(F16),
        crate::tensor::DType::BF16 => at!(BF16),
        crate::tensor::DType::F64 => false,
    }
}

/// How a tile's rows are read: (pointer, stride, kernel mode), the mode one of
/// `kernel::{GATHER, COLS, TRANSPOSE}` for short rows (long rows always go row by row).
type Src<E> = (*const E, usize, u8);

/// Chooses how rows `i..i + n` are read, staging them into `buf` only when they cannot be read
/// in place (byte-swapped, misaligned, column-strided, or reversed rows).
fn source<E: Elem + Storage>(
    x: &View,
    i: usize,
    n: usize,
    scheme: Short,
    buf: &mut Vec<E>,
) -> Src<E> {
    let c = x.cols();
    if c <= LANES_MAX_C {
        if let Some((p, cs)) = x.col_run::<E>(i) {
            return (p, cs, kernel::COLS);
        }
        if let Some((p, st)) = x.row_run::<E>(i) {
            // C = 2 packed rows are deinterleaved by two loads and shuffles in either scheme.
            let mode = match scheme {
                Short::Gather => kernel::GATHER,
                Short::Transpose => kernel::TRANSPOSE,
            };
            return (p, st, mode);
        }
        x.copy_cols(i, n, n, buf);
        return (buf.as_ptr(), n, kernel::COLS);
    }
    if let Some((p, st)) = x.row_run::<E>(i) {
        return (p, st, kernel::GATHER);
    }
    x.copy_rows(i, n, buf);
    (buf.as_ptr(), c, kernel::GATHER)
}

/// Cross-entropy of rows `r` on a SIMD `path` with class targets `t`, carried in one
/// accumulator; stops at the first block the kernels leave (its rows are `acc.rows` on).
#[allow(clippy::too_many_arguments)]
pub(crate) fn ce<E: Tile>(
    path: Path,
    x: &View,
    t: &IntView,
    r: Range<usize>,
    ignore: i64,
    wt: Option<(&[f32], &[f64])>,
    mut out: Option<&mut [f32]>,
    s: &mut Scratch,
) -> BlockSums {
    let (xbuf, tbuf) = E::bufs(s);
    let c = x.cols();
    let tile = tile_rows(c, std::mem::size_of::<E>());
    let scheme = simd::short_scheme();
    let mut acc = BlockSums::default();
    let n = r.len();
    let mut done = 0;
    while done < n {
        let i = r.start + done;
        // read in place (logits and int64 targets): the whole run in one call, no per-tile
        // overhead (it cost C = 2 a third of its speed); staged: a bounded tile
        let m = run_rows(
            in_place(x, i),
            t.packed_i64(i, n - done).is_some(),
            tile,
            n - done,
        );
        let ts = t.to_i64(i, m, ignore, tbuf);
        let mut args = CeArgs {
            t: ts,
            ignore,
            wt,
            out: out.as_deref_mut().map(|o| &mut o[done..done + m]),
        };
        let (p, st, mode) = source(x, i, m, scheme, xbuf);
        let b = Block { p, st, n: m, c };
        let (a, acc) = (&mut args, &mut acc);
        let got = match mode {
            _ if c > LANES_MAX_C => kernel::ce_long_rows(path, b, a, acc),
            kernel::COLS => kernel::ce_short_rows::<E, { kernel::COLS }>(path, b, a, acc),
            kernel::TRANSPOSE => kernel::ce_short_rows::<E, { kernel::TRANSPOSE }>(path, b, a, acc),
            _ => kernel::ce_short_rows::<E, { kernel::GATHER }>(path, b, a, acc),
        };
        done += got;
        if got != m {
            break;
        }
    }
    acc
}

/// logsumexp of rows `r` into `out` (one f32 per row); returns the rows done (see [`ce`]).
pub(crate) fn lse<E: Tile>(
    path: Path,
    x: &View,
    r: Range<usize>,
    out: &mut [f32],
    s: &mut Scratch,
) -> usize {
    let xbuf = E::bufs(s).0;
    let c = x.cols();
    let tile = tile_rows(c, std::mem::size_of::<E>());
    let scheme = simd::short_scheme();
    let n = r.len();
    let mut done = 0;
    while done < n {
        let i = r.start + done;
        let m = if in_place(x, i) {
            n - done
        } else {
            tile.min(n - done)
        };
        let o = &mut out[done..done + m];
        let (p, st, mode) = source(x, i, m, scheme, xbuf);
        let b = Block { p, st, n: m, c };
        let got = match mode {
            _ if c > LANES_MAX_C => kernel::lse_long_rows(path, b, o),
            kernel::COLS => kernel::lse_short_rows::<E, { kernel::COLS }, false>(path, b, o),
            kernel::TRANSPOSE => {
                kernel::lse_short_rows::<E, { kernel::TRANSPOSE }, false>(path, b, o)
            }
            _ => kernel::lse_short_rows::<E, { kernel::GATHER }, false>(path, b, o),
        };
        done += got;
        if got != m {
            break;
        }
    }
    done
}

/// Metrics of rows `i..i + n` (n <= 16) in lanes (see `kernel::eval_short`), lane l against
/// class `kf[l]`; a group shorter than 16 is staged padded, so every row is scored by the same
/// arithmetic whatever group it falls in.
#[allow(clippy::too_many_arguments)]
pub(crate) fn eval_block<E: Tile>(
    path: Path,
    x: &View,
    i: usize,
    n: usize,
    kf: &[f32; 16],
    kind: u8,
    o: &mut kernel::LaneMetrics,
    s: &mut Scratch,
) {
    use kernel::{eval_short_rows as ev, COLS, GATHER, LOGITS, LOG_PROBS, PROBS, TRANSPOSE};
    let c = x.cols();
    let buf = E::bufs(s).0;
    let (p, st, mode) = if n == 16 {
        source(x, i, 16, simd::short_scheme(), buf)
    } else {
        x.copy_cols(i, n, 16, buf);
        (buf.as_ptr(), 16, kernel::COLS)
    };
    match (mode, kind) {
        (COLS, LOGITS) => ev::<E, COLS, LOGITS>(path, p, st, c, kf, o),
        (COLS, LOG_PROBS) => ev::<E, COLS, LOG_PROBS>(path, p, st, c, kf, o),
        (COLS, _) => ev::<E, COLS, PROBS>(path, p, st, c, kf, o),
        (TRANSPOSE, LOGITS) => ev::<E, TRANSPOSE, LOGITS>(path, p, st, c, kf, o),
        (TRANSPOSE, LOG_PROBS) => ev::<E, TRANSPOSE, LOG_PROBS>(path, p, st, c, kf, o),
        (TRANSPOSE, _) => ev::<E, TRANSPOSE, PROBS>(path, p, st, c, kf, o),
        (_, LOGITS) => ev::<E, GATHER, LOGITS>(path, p, st, c, kf, o),
        (_, LOG_PROBS) => ev::<E, GATHER, LOG_PROBS>(path, p, st, c, kf, o),
        (_, _) => ev::<E, GATHER, PROBS>(path, p, st, c, kf, o),
    }
}

/// `evaluate`'s clean groups of rows `r` (short rows: `kernel::eval_run`; longer logits rows:
/// `kernel::eval_long`, which the caller only asks for logits), the whole run in one
/// call when it is read in place with packed int64 targets, else a bounded tile at a time
/// (rows staged as in [`ce`], targets widened); `sums` = (top-k list, lanes' f64 sums, top-k
/// counts, histogram). Returns the rows done (a multiple of 16: it stops at the first group
/// that is not clean, or at fewer than 16 rows left) and [non-finite confidences, NLL +inf].
#[allow(clippy::too_many_arguments)]
pub(crate) fn eval_run<E: Tile>(
    path: Path,
    x: &View,
    t: &IntView,
    r: Range<usize>,
    ignore: i64,
    kind: u8,
    sums: (
        &[usize],
        &mut [[f64; 16]; 4],
        &mut [u64],
        &mut kernel::Hist<'_>,
    ),
    mut out: Option<kernel::EvalOut<'_>>,
    s: &mut Scratch,
) -> (usize, [u64; 2]) {
    use kernel::{eval_run_rows as ev, COLS, LOGITS, LOG_PROBS, TRANSPOSE};
    const GATHER: u8 = kernel::GATHER;
    const PROBS: u8 = kernel::PROBS;
    let (xbuf, tbuf) = E::bufs(s);
    let c = x.cols();
    let tile = tile_rows(c, std::mem::size_of::<E>());
    let scheme = simd::short_scheme();
    let (top_k, lacc, topk, hist) = sums;
    let n = r.len();
    let (mut done, mut counts) = (0, [0u64; 2]);
    while done + 16 <= n {
        let i = r.start + done;
        let m = run_rows(
            in_place(x, i),
            t.packed_i64(i, n - done).is_some(),
            tile,
            n - done,
        );
        let ts = t.to_i64(i, m, ignore, tbuf);
        let (p, st, mode) = source(x, i, m, scheme, xbuf);
        let mut a = kernel::EvalRun {
            t: ts,
            ignore,
            top_k,
            lacc: &mut *lacc,
            topk: &mut *topk,
            hist: kernel::Hist {
                ways: hist.ways,
                count: &mut *hist.count,
                conf: &mut *hist.conf,
                correct: &mut *hist.correct,
            },
            counts: [0; 2],
            out: out.as_mut().map(|(nl, rk, cf)| {
                (
                    &mut nl[done..],
                    &mut rk[done..],
                    cf.as_deref_mut().map(|c| &mut c[done..]),
                )
            }),
        };
        let b = Block { p, st, n: m, c };
        let got = match (mode, kind) {
            _ if c > LANES_MAX_C => kernel::eval_long_rows::<E>(path, b, &mut a),
            (COLS, LOGITS) => ev::<E, COLS, LOGITS>(path, b, &mut a),
            (COLS, LOG_PROBS) => ev::<E, COLS, LOG_PROBS>(path, b, &mut a),
            (COLS, _) => ev::<E, COLS, PROBS>(path, b, &mut a),
            (TRANSPOSE, LOGITS) => ev::<E, TRANSPOSE, LOGITS>(path, b, &mut a),
            (TRANSPOSE, LOG_PROBS) => ev::<E, TRANSPOSE, LOG_PROBS>(path, b, &mut a),
            (TRANSPOSE, _) => ev::<E, TRANSPOSE, PROBS>(path, b, &mut a),
            (_, LOGITS) => ev::<E, GATHER, LOGITS>(path, b, &mut a),
            (_, LOG_PROBS) => ev::<E, GATHER, LOG_PROBS>(path, b, &mut a),
            (_, _) => ev::<E, GATHER, PROBS>(path, b, &mut a),
        };
        counts[0] += a.counts[0];
        counts[1] += a.counts[1];
        done += got;
        if got != m {
            break;
        }
    }
    (done, counts)
}

/// log_softmax (`log`) or softmax of short rows `r` (C <= `LANES_MAX_C`) into the packed f32
/// `out`, a tile at a time: each row's max and ln s in lanes, then one flat vector pass over
/// the tile's rows (read in place when packed, else staged). Returns the rows done; it stops
/// at the first block holding a row that is not ordinary (left to the row writer).
pub(crate) fn softmax_short<E: Tile>(
    path: Path,
    x: &View,
    r: Range<usize>,
    log: bool,
    out: &mut [f32],
    parts: &mut Vec<f32>,
    spread: &mut Vec<f32>,
    s: &mut Scratch,
) -> usize {
    let c = x.cols();
    let scheme = simd::short_scheme();
    let xbuf = E::bufs(s).0;
    let (n, mut done) = (r.len(), 0);
    // packed binary rows: one pass, no tile (the same bits: see `kernel::softmax_pairs`)
    if let Some((p, 2)) = x.row_run::<E>(r.start).filter(|_| c == 2) {
        return if log {
            kernel::softmax_pairs_rows::<E, true>(path, p, n, out)
        } else {
            kernel::softmax_pairs_rows::<E, false>(path, p, n, out)
        };
    }
    while done < n {
        let i = r.start + done;
        let m = SHORT_TILE.min(n - done);
        parts.clear();
        parts.resize(2 * m, 0.0);
        let (p, st, mode) = source(x, i, m, scheme, xbuf);
        let b = Block { p, st, n: m, c };
        let got = match mode {
            kernel::COLS => kernel::lse_short_rows::<E, { kernel::COLS }, true>(path, b, parts),
            kernel::TRANSPOSE => {
                kernel::lse_short_rows::<E, { kernel::TRANSPOSE }, true>(path, b, parts)
            }
            _ => kernel::lse_short_rows::<E, { kernel::GATHER }, true>(path, b, parts),
        };
        if got > 0 {
            // the rows packed row-major: in place when they are, else staged
            let rows: &[E] = match x.row_run::<E>(i) {
                // SAFETY: packed rows i..i+got exist, so their got·c elements are readable.
                Some((p, st)) if st == c => unsafe { std::slice::from_raw_parts(p, got * c) },
                _ => {
                    x.copy_rows(i, got, xbuf);
                    &xbuf[..]
                }
            };
            let (pm, pl) = parts.split_at(m);
            let o = &mut out[done * c..(done + got) * c];
            if log {
                kernel::write_short_rows::<E, true>(
                    path,
                    rows,
                    c,
                    &pm[..got],
                    &pl[..got],
                    spread,
                    o,
                );
            } else {
                kernel::write_short_rows::<E, false>(
                    path,
                    rows,
                    c,
                    &pm[..got],
                    &pl[..got],
                    spread,
                    o,
                );
            }
        }
        done += got;
        if got != m {
            break;
        }
    }
    done
}

/// The mode rows `i..` of short rows are read in place in (`kernel::COLS` for column-major,
/// the scheme's mode for row-strided rows), or None when they must be staged.
fn short_mode<E: Storage>(x: &View, i: usize, scheme: Short) -> Option<u8> {
    if x.col_run::<E>(i).is_some() {
        return Some(kernel::COLS);
    }
    x.row_run::<E>(i).map(|_| match scheme {
        Short::Gather => kernel::GATHER,
        Short::Transpose => kernel::TRANSPOSE,
    })
}

/// The comparison's clean runs over both dumps' short rows `r` (see `compare_lanes::run`):
/// the whole run in one call when both dumps are read in place in the same mode, with
/// packed int64 targets; else a bounded tile at a time, each dump read in place or staged
/// column-major (both staged when their dtypes or modes differ). `run` = (lane sums, per-row
/// outputs, their index of row `r.start`, each dump's scratch). Returns the rows done (a
/// multiple of 16).
#[allow(clippy::too_many_arguments)]
pub(crate) fn compare_run<A: Tile, B: Tile>(
    path: Path,
    a: &View,
    b: &View,
    t: &IntView,
    r: Range<usize>,
    ignore: i64,
    log_probs: bool,
    run: CompareRun<'_, '_>,
) -> usize {
    use crate::compare_lanes::run_on;
    use kernel::{COLS, GATHER, TRANSPOSE};
    let (acc, mut out, at, sa, sb) = run;
    let c = a.cols();
    let scheme = simd::short_scheme();
    let n = r.len();
    let mut done = 0;
    while done + 16 <= n {
        let i = r.start + done;
        let (mode_a, mode_b) = (short_mode::<A>(a, i, scheme), short_mode::<B>(b, i, scheme));
        let direct = A::DTYPE == B::DTYPE && mode_a.is_some() && mode_a == mode_b;
        let m = run_rows(
            direct,
            t.packed_i64(i, n - done).is_some(),
            tile_rows(c, 4),
            n - done,
        );
        let (xa, ta) = A::bufs(sa);
        let xb = B::bufs(sb).0;
        let ts = t.to_i64(i, m, ignore, ta);
        let (pa, sta, mode) = if direct {
            source(a, i, m, scheme, xa)
        } else {
            a.copy_cols(i, m, m, xa);
            (xa.as_ptr(), m, COLS)
        };
        let (pb, stb, _) = if direct {
            source(b, i, m, scheme, xb)
        } else {
            b.copy_cols(i, m, m, xb);
            (xb.as_ptr(), m, COLS)
        };
        let (ba, bb) = (
            Block {
                p: pa,
                st: sta,
                n: m,
                c,
            },
            Block {
                p: pb,
                st: stb,
                n: m,
                c,
            },
        );
        let (o, k) = (out.as_deref_mut(), at + done);
        let got = match mode {
            COLS => run_on::<A, B, COLS>(path, ba, bb, ts, ignore, log_probs, acc, o, k),
            TRANSPOSE => run_on::<A, B, TRANSPOSE>(path, ba, bb, ts, ignore, log_probs, acc, o, k),
            _ => run_on::<A, B, GATHER>(path, ba, bb, ts, ignore, log_probs, acc, o, k),
        };
        done += got;
        if got != m {
            break;
        }
    }
    done
}

/// The accumulator side of [`compare_run`]: lane sums, per-row outputs, the outputs' index of
/// the run's first row, and each dump's scratch.
pub(crate) type CompareRun<'a, 'o> = (
    &'a mut crate::compare::LaneSums,
    Option<&'a mut crate::compare::CompareOut<'o>>,
    usize,
    &'a mut Scratch,
    &'a mut Scratch,
);

/// [`compare_run`] for the dumps' dtypes (neither float64).
#[allow(clippy::too_many_arguments)]
pub(crate) fn compare_run_any(
    path: Path,
    a: &View,
    b: &View,
    t: &IntView,
    r: Range<usize>,
    ignore: i64,
    log_probs: bool,
    run: CompareRun<'_, '_>,
) -> usize {
    use crate::tensor::DType;
    macro_rules! second {
        ($ta:ty) => {
            match b.dtype {
                DType::F32 => compare_run::<$ta, f32>(path, a, b, t, r, ignore, log_probs, run),
                DType::F16 => compare_run::<$ta, F16>(path, a, b, t, r, ignore, log_probs, run),
                DType::BF16 => compare_run::<$ta, BF16>(path, a, b, t, r, ignore, log_probs, run),
                DType::F64 => 0,
            }
        };
    }
    match a.dtype {
        DType::F32 => second!(f32),
        DType::F16 => second!(F16),
        DType::BF16 => second!(BF16),
        DType::F64 => 0,
    }
}
