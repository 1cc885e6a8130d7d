//! Per-thread access to the rows of a [`View`], with dtype and instruction-set dispatch.
//!
//! Every loss, metric and softmax goes through [`Rows::stats`], the single one-read row
//! statistics kernel; what differs between them is only what they do with the statistics.

use crate::kernel::{self, Stats};
use crate::parallel;
use crate::simd::{self, Path, BF16, F16};
use crate::tensor::{DType, Storage, View};
use rayon::prelude::*;

/// Rows longer than this are split into segments processed in parallel and merged in order
/// (few rows of huge C would otherwise leave threads idle). Fixed, so results do not depend
/// on the thread count.
pub const SEGMENT: usize = 1 << 16;

/// What a caller wants from a row besides max and exp-sum.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want {
    /// Σ e*(x-m), Σ e², and the count of entries above the target (metrics).
    pub eval: bool,
}

/// Row statistics with the shift kept in f64 (exact for f64 input).
#[derive(Clone, Copy, Debug)]
pub struct RowStats {
    pub m: f64,
    pub st: Stats,
}

impl RowStats {
    /// Whether the row is ordinary: finite max and exp-sum, no NaN.
    pub(crate) fn finite(&self) -> bool {
        self.m.is_finite() && !self.st.nan && self.st.s.is_finite()
    }

    /// (shift, ln s) with lse = shift + ln s: (m, ln s) for ordinary rows, (lse, 0) otherwise.
    /// Losses use `(shift - x) + ln s`, which keeps its accuracy at large offsets where
    /// `(m + ln s) - x` would round ln s away.
    pub fn split(&self) -> (f64, f64) {
        if self.finite() {
            (self.m, self.st.s.ln())
        } else {
            (self.lse(), 0.0)
        }
    }

    /// lse - x, accurately.
    pub fn minus(&self, x: f64) -> f64 {
        let (shift, ln_s) = self.split();
        (shift - x) + ln_s
    }

    /// log Σ exp of the row (NaN, +inf and all -inf rows as in [`Stats::lse`]).
    pub fn lse(&self) -> f64 {
        if self.st.nan || self.st.s.is_nan() {
            f64::NAN
        } else if self.m.is_finite() {
            self.m + self.st.s.ln()
        } else {
            self.m
        }
    }
}

pub struct Rows<'v, 'a> {
    pub view: &'v View<'a>,
    path: Path,
    s32: RowCache<f32>,
    s64: RowCache<f64>,
    s16: RowCache<F16>,
    sb16: RowCache<BF16>,
    lanes: F64Block,
}

/// Rows per staged tile of a column-major view (see [`RowCache::row`]).
const COL_TILE_ROWS: usize = crate::kernel::GROUP;

/// One element type's row memory: the scratch of a gathered row, and for column-major views
/// (Fortran order, a transposed array) a tile of the next `COL_TILE_ROWS` rows packed by
/// [`View::copy_rows`]. Gathering such a row alone reads one element per cache line (and per
/// page once the column stride reaches 4 KiB), so each line came from memory once per row;
/// the tile reads each column's run of rows once, prefetched, and the rows after it are
/// served from it.
pub(crate) struct RowCache<T> {
    scratch: Vec<T>,
    tile: Vec<T>,
    /// Rows `at..at + n` are in `tile`.
    at: usize,
    n: usize,
}

impl<T> Default for RowCache<T> {
    fn default() -> Self {
        RowCache {
            scratch: Vec::new(),
            tile: Vec::new(),
            at: 0,
            n: 0,
        }
    }
}

impl<T: Storage> RowCache<T> {
    /// Row `i` of `view`: borrowed in place when its elements are contiguous, from the tile
    /// for column-major views, else gathered into the scratch.
    #[inline]
    pub(crate) fn row<'s>(&'s mut self, view: &'s View, i: usize) -> &'s [T] {
        let c = view.cols();
        if c > 1 && view.col_run::<T>(i).is_some() {
            if !(self.at..self.at + self.n).contains(&i) {
                // (rows over GROUP_ROW_BYTES come in chunks of a row or two: a tile of 16
                // would stage rows the chunk never reads)
                let group = c * view.dtype.size() <= parallel::GROUP_ROW_BYTES;
                let n = (view.rows() - i).min(if group { COL_TILE_ROWS } else { 1 });
                view.copy_rows::<T>(i, n, &mut self.tile);
                (self.at, self.n) = (i, n);
            }
            let o = (i - self.at) * c;
            return &self.tile[o..o + c];
        }
        view.row(i, &mut self.scratch)
    }
}

/// The float64 statistics of the block of rows `at..at + n` (short rows: see
/// [`kernel::stats_f64_lanes`]), computed when a row outside it is asked for, and its values
/// column-major (for the rank counts, which need each row's target value).
pub(crate) struct F64Block {
    /// The first row and the number of rows (the last block may hold fewer than 16).
    pub at: usize,
    pub n: usize,
    /// Whether `st` holds the metrics' sums.
    pub eval: bool,
    /// Element j of row at + l at `16 j + l` (lanes past n hold 0).
    pub cols: Vec<f64>,
    pub st: kernel::F64Lanes,
}

fn typed_stats<E: simd::Elem>(path: Path, x: &[E], xt: f32, want: Want) -> Stats {
    let one = |seg: &[E]| {
        if want.eval {
            kernel::row_stats::<E, true>(path, seg, xt)
        } else {
            kernel::row_stats::<E, false>(path, seg, xt)
        }
    };
    if x.len() <= 2 * SEGMENT {
        return one(x);
    }
    // the same segments, merged in the same order, whether on the pool or on this thread
    let parts: Vec<Stats> = if parallel::is_serial() {
        x.chunks(SEGMENT).map(one).collect()
    } else {
        x.par_chunks(SEGMENT).map(one).collect()
    };
    parts
        .into_iter()
        .reduce(Stats::merge)
        .unwrap_or(Stats::EMPTY)
}

impl<'v, 'a> Rows<'v, 'a> {
    pub fn new(view: &'v View<'a>) -> Self {
        Rows {
            view,
            path: simd::current(),
            s32: RowCache::default(),
            s64: RowCache::default(),
            s16: RowCache::default(),
            sb16: RowCache::default(),
            lanes: F64Block {
                at: 0,
                n: 0,
                eval: false,
                cols: Vec::new(),
                st: kernel::F64Lanes::default(),
            },
        }
    }

    pub fn cols(&self) -> usize {
        self.view.cols()
    }

    /// Element (row, col) widened to f64.
    #[inline]
    pub fn value(&self, row: usize, col: usize) -> f64 {
        let v = self.view;
        match v.dtype {
            DType::F32 => v.get::<f32>(row, col) as f64,
            DType::F64 => v.get::<f64>(row, col),
            DType::F16 => simd::Elem::to_f32(v.get::<F16>(row, col)) as f64,
            DType::BF16 => simd::Elem::to_f32(v.get::<BF16>(row, col)) as f64,
        }
    }

    /// One read of row `i`. `xt` is the target's value (for the rank count of `want.eval`).
    pub fn stats(&mut self, i: usize, xt: f64, want: Want) -> RowStats {
        let (view, path) = (self.view, self.path);
        match view.dtype {
            DType::F32 => {
                let st = typed_stats(path, self.s32.row(view, i), xt as f32, want);
                RowStats { m: st.m as f64, st }
            }
            DType::F16 => {
                let st = typed_stats(path, self.s16.row(view, i), xt as f32, want);
                RowStats { m: st.m as f64, st }
            }
            DType::BF16 => {
                let st = typed_stats(path, self.sb16.row(view, i), xt as f32, want);
                RowStats { m: st.m as f64, st }
            }
            DType::F64 => {
                if (1..=kernel::F64_LANES_MAX_C).contains(&view.cols()) {
                    if let Some(rs) = self.stats_lanes(i, xt, want) {
                        return rs;
                    }
                }
                let (m, st) = kernel::stats_f64(path, self.s64.row(view, i), xt, want.eval);
                RowStats { m, st }
            }
        }
    }

    /// The block of (up to) 16 float64 rows holding row `i` (short rows: C in
    /// 1..=[`kernel::F64_LANES_MAX_C`]), with the metrics' sums if `eval`: the last one if it
    /// holds row i, else rows i.. read and their statistics computed in vectors.
    pub(crate) fn f64_block(&mut self, i: usize, eval: bool) -> &F64Block {
        const L: usize = kernel::F64_LANES;
        let (view, b) = (self.view, &mut self.lanes);
        let c = view.cols();
        debug_assert!(view.dtype == DType::F64 && (1..=kernel::F64_LANES_MAX_C).contains(&c));
        if i < b.at || i >= b.at + b.n || (eval && !b.eval) {
            let n = (view.rows() - i).min(L);
            b.cols.clear();
            b.cols.resize(L * c, 0.0);
            let cols = &mut b.cols;
            match view.row_run::<f64>(i) {
                Some((p, st)) => {
                    // the next block's lines, for the row after it (C = 32: 1.5x faster)
                    #[cfg(target_arch = "x86_64")]
                    for l in L..2 * L {
                        let r = p.wrapping_add(l * st) as *const i8;
                        for k in (0..8 * c).step_by(64) {
                            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                            // SAFETY: a prefetch never faults, whatever the address.
                            unsafe { _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(k)) };
                        }
                    }
                    // column by column: the stores in order, each row's loads in order
                    for (j, col) in cols.chunks_exact_mut(L).enumerate() {
                        for (l, d) in col[..n].iter_mut().enumerate() {
                            // SAFETY: rows i..i + n are rows of the view, `st` elements apart
                            // from row i at p, each of c readable elements (`View::row_run`).
                            *d = unsafe { p.add(l * st + j).read() };
                        }
                    }
                }
                None => {
                    for l in 0..n {
                        for j in 0..c {
                            cols[j * L + l] = view.get::<f64>(i + l, j);
                        }
                    }
                }
            }
            kernel::stats_f64_lanes(self.path, cols, eval, &mut b.st);
            (b.at, b.n, b.eval) = (i, n, eval);
        }
        b
    }

    /// [`Rows::stats`] of a short float64 row from its block of 16 (computed, in vectors,
    /// when row `i` is not in the last one): the same bits as `kernel::stats_f64`, or None for
    /// a row whose max is not finite (which that kernel handles).
    fn stats_lanes(&mut self, i: usize, xt: f64, want: Want) -> Option<RowStats> {
        const L: usize = kernel::F64_LANES;
        let b = self.f64_block(i, want.eval);
        let l = i - b.at;
        let m = b.st.m[l];
        if !m.is_finite() {
            return None;
        }
        let s = b.st.s[l];
        let (t, q, gt) = if want.eval {
            let gt = b.cols[l..].iter().step_by(L).filter(|&&v| v > xt).count();
            (b.st.t[l], b.st.q[l], gt as u64)
        } else {
            (0.0, 0.0, 0)
        };
        // with a finite max, s is NaN exactly when the row holds a NaN
        let nan = s.is_nan();
        Some(RowStats {
            m,
            st: Stats {
                m: m as f32,
                s,
                t,
                q,
                gt,
                nan,
            },
        })
    }

    /// Writes log_softmax (`log`) or softmax of row `i` into `out` (f32 output, 16/32-bit input).
    pub fn write_f32(&mut self, i: usize, log: bool, out: &mut [f32]) {
        let rs = self.stats(i, 0.0, Want::default());
        let (view, path) = (self.view, self.path);
        if !rs.m.is_finite() || rs.st.nan || rs.st.s.is_nan() {
            let lse = rs.lse();
            for (j, o) in out.iter_mut().enumerate() {
                let y = self.value(i, j) - lse;
                *o = if log { y } else { y.exp() } as f32;
            }
            return;
        }
        let (m, ln_s) = (rs.m as f32, rs.st.s.ln() as f32);
        macro_rules! go {
            ($buf:ident) => {{
                let x = self.$buf.row(view, i);
                if log {
                    kernel::row_write::<_, true>(path, x, m, ln_s, out)
                } else {
                    kernel::row_write::<_, false>(path, x, m, ln_s, out)
                }
            }};
        }
        match view.dtype {
            DType::F32 => go!(s32),
            DType::F16 => go!(s16),
            DType::BF16 => go!(sb16),
            DType::F64 => unreachable!("f64 rows are written by write_f64"),
        }
    }

    /// Writes log_softmax or softmax of a float64 row.
    pub fn write_f64(&mut self, i: usize, log: bool, out: &mut [f64]) {
        let (shift, ln_s) = self.stats(i, 0.0, Want::default()).split();
        let x = self.s64.row(self.view, i);
        for (o, &v) in out.iter_mut().zip(x) {
            let y = (v - shift) - ln_s;
            *o = if log { y } else { y.exp() };
        }
    }

    /// Σ_c w_c·(shift - x_ic) over row i in f64 (all weights 1 without `weight`; zero weights
    /// skip their term). Label smoothing's Σ_c w_c·(lse - x_c) is Σw·ln s plus this with the
    /// row max as shift, free of the cancellation of C·lse - Σx at large offsets.
    pub fn dev_sum(&mut self, i: usize, shift: f64, weight: Option<&[f64]>) -> f64 {
        fn go<T: Copy>(x: &[T], f: impl Fn(T) -> f64, shift: f64, w: Option<&[f64]>) -> f64 {
            match w {
                None => x.iter().map(|&v| shift - f(v)).sum(),
                Some(w) => x
                    .iter()
                    .zip(w)
                    .filter(|(_, &wc)| wc != 0.0)
                    .map(|(&v, &wc)| wc * (shift - f(v)))
                    .sum(),
            }
        }
        let (view, path) = (self.view, self.path);
        // 16/32-bit rows: the vectorised float64 sum (a serial f64 chain was 4 cycles per
        // element: label smoothing ran at a quarter of cross_entropy's speed)
        match view.dtype {
            DType::F32 => kernel::dev_sum(path, self.s32.row(view, i), shift, weight),
            DType::F64 => go(self.s64.row(view, i), |v| v, shift, weight),
            DType::F16 => kernel::dev_sum(path, self.s16.row(view, i), shift, weight),
            DType::BF16 => kernel::dev_sum(path, self.sb16.row(view, i), shift, weight),
        }
    }

    /// Probabilities-row statistics of row i (`pt`: the target's probability): the SIMD
    /// kernel for 16/32-bit rows, a float64 loop for float64 rows.
    pub(crate) fn probs(&mut self, i: usize, pt: f64) -> kernel::ProbStats {
        let (view, path) = (self.view, self.path);
        match view.dtype {
            DType::F32 => kernel::probs_row(path, self.s32.row(view, i), pt as f32),
            DType::F16 => kernel::probs_row(path, self.s16.row(view, i), pt as f32),
            DType::BF16 => kernel::probs_row(path, self.sb16.row(view, i), pt as f32),
            DType::F64 => {
                let mut o = kernel::ProbStats {
                    pmax: f64::NEG_INFINITY,
                    ..Default::default()
                };
                for &p in self.s64.row(view, i) {
                    o.pmax = o.pmax.max(p);
                    o.sq += p * p;
                    if p > 0.0 {
                        o.plogp += p * p.ln();
                    }
                    o.gt += (p > pt) as u64;
                    o.nan |= p.is_nan();
                }
                o
            }
        }
    }

    /// The number of classes before `k` whose value equals the target's (row i): what the
    /// argmax tie rule adds to a rank (the first maximal index wins).
    pub fn count_eq_before(&mut self, i: usize, k: usize) -> u64 {
        fn go<T: Copy + PartialEq>(x: &[T], k: usize) -> u64 {
            let xt = x[k];
            x[..k].iter().filter(|&&v| v == xt).count() as u64
        }
        let view = self.view;
        match view.dtype {
            DType::F32 => go(self.s32.row(view, i), k),
            DType::F64 => go(self.s64.row(view, i), k),
            // equal bits are equal values for finite halves; -0 / +0 and NaN compared as f32
            DType::F16 => {
                let r = self.s16.row(view, i);
                let w: Vec<f32> = r[..=k].iter().map(|v| simd::Elem::to_f32(*v)).collect();
                go(&w, k)
            }
            DType::BF16 => {
                let r = self.sb16.row(view, i);
                let w: Vec<f32> = r[..=k].iter().map(|v| simd::Elem::to_f32(*v)).collect();
                go(&w, k)
            }
        }
    }

    /// Row `i` of a float32 view as stored (in place, or from the column-major tile).
    pub(crate) fn row_f32(&mut self, i: usize) -> &[f32] {
        self.s32.row(self.view, i)
    }

    /// Row `i` of a float16 view as stored.
    pub(crate) fn row_f16(&mut self, i: usize) -> &[F16] {
        self.s16.row(self.view, i)
    }

    /// Row `i` of a bfloat16 view as stored.
    pub(crate) fn row_bf16(&mut self, i: usize) -> &[BF16] {
        self.sb16.row(self.view, i)
    }

    /// Row `i` widened to f64 (borrowed for float64 rows read in place or from the tile).
    pub fn f64_row<'s>(&'s mut self, i: usize, buf: &'s mut Vec<f64>) -> &'s [f64] {
        fn widen<T: simd::Elem>(x: &[T], buf: &mut Vec<f64>) {
            buf.clear();
            buf.extend(x.iter().map(|v| f64::from(v.to_f32())));
        }
        let view = self.view;
        if view.dtype == DType::F64 {
            return self.s64.row(view, i);
        }
        match view.dtype {
            DType::F32 => widen(self.s32.row(view, i), buf),
            DType::F16 => widen(self.s16.row(view, i), buf),
            DType::BF16 => widen(self.sb16.row(view, i), buf),
            DType::F64 => unreachable!("returned above"),
        }
        buf
    }

    /// Read-only sum of row `i` (the streaming roofline).
    pub fn sum(&mut self, i: usize) -> f64 {
        let (view, path) = (self.view, self.path);
        match view.dtype {
            DType::F32 => kernel::row_sum(path, self.s32.row(view, i)),
            DType::F16 => kernel::row_sum(path, self.s16.row(view, i)),
            DType::BF16 => kernel::row_sum(path, self.sb16.row(view, i)),
            DType::F64 => self.s64.row(view, i).iter().sum(),
        }
    }
}
