//! Loss semantics (PyTorch's) on top of the row statistics.
//!
//! Every function returns the pair (Σ loss, Σ weight) over the rows, summed in fixed chunk
//! order, and optionally writes the per-row losses. `mean` is `sum / weight`, which gives NaN
//! for an empty or all-ignored batch, as PyTorch does.

use crate::error::{Error, Result};
use crate::kernel::{self, BlockSums};
use crate::parallel;
use crate::rows::{RowCache, RowStats, Rows, Want, SEGMENT};
use crate::simd::{self, Path, BF16, F16};
use crate::stage::{self, Scratch};
use crate::tensor::{check_target_shape, DType, FlatScratch, IntView, View};
use std::ops::Range;

/// Above this a gathered value cannot be a log-probability (room for rounding only).
pub const NLL_TOLERANCE: f64 = 1e-5;

/// Σ loss and Σ weight (the denominator of `mean`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Total {
    pub sum: f64,
    pub weight: f64,
}

impl Total {
    pub fn mean(&self) -> f64 {
        self.sum / self.weight
    }
}

/// A per-row output element (f32 for 16/32-bit inputs, f64 for f64).
pub trait Out: Copy + Send + Sync + Default {
    fn from_f64(v: f64) -> Self;
    /// The slice as f32, for the kernels that write f32 directly.
    fn as_f32(s: &mut [Self]) -> Option<&mut [f32]>;
}
impl Out for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn as_f32(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
}
impl Out for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn as_f32(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
}

/// Options of the class-index losses.
#[derive(Clone, Copy, Debug)]
pub struct ClassOptions<'a> {
    pub weight: Option<&'a [f64]>,
    pub ignore_index: i64,
    pub label_smoothing: f64,
}

impl Default for ClassOptions<'_> {
    fn default() -> Self {
        ClassOptions {
            weight: None,
            ignore_index: -100,
            label_smoothing: 0.0,
        }
    }
}

impl ClassOptions<'_> {
    fn check(&self, classes: usize) -> Result<()> {
        if let Some(w) = self.weight {
            if w.len() != classes {
                return Err(Error::Value(format!(
                    "weight has {} elements but the input has {classes} classes",
                    w.len()
                )));
            }
        }
        let ls = self.label_smoothing;
        if !(0.0..=1.0).contains(&ls) {
            return Err(Error::Value(format!(
                "label_smoothing must be in [0, 1], got {ls}"
            )));
        }
        Ok(())
    }
}

/// Runs `row` over all rows in chunks, with or without a per-row output, and adds up.
/// `fast` may take a run of rows first (the vectorised short-row kernels): it returns None if
/// it does not apply to this input at all, else how far it got; the rows where it stopped
/// (a bad target or an inf/NaN row) go through `row`, which reports or handles them.
fn drive<O: Out>(
    view: &View,
    per: usize,
    out: Option<&mut [O]>,
    row: impl Fn(&mut Rows, usize) -> Result<(f64, f64)> + Sync + Send,
    fast: impl Fn(Range<usize>, Option<&mut [O]>, &mut Scratch) -> Option<BlockSums> + Sync + Send,
) -> Result<Total> {
    drive2(view, None, per, out, |rw, _, i| row(rw, i), fast)
}

/// [`drive`] whose row kernel also reads the rows of a `second` view of the same shape (soft
/// targets), through a [`Rows`] of its own (so column-major targets are tiled too).
fn drive2<O: Out>(
    view: &View,
    second: Option<&View>,
    per: usize,
    out: Option<&mut [O]>,
    row: impl Fn(&mut Rows, Option<&mut Rows>, usize) -> Result<(f64, f64)> + Sync + Send,
    fast: impl Fn(Range<usize>, Option<&mut [O]>, &mut Scratch) -> Option<BlockSums> + Sync + Send,
) -> Result<Total> {
    let rows = view.rows();
    let chunk = |r: Range<usize>, mut o: Option<&mut [O]>| -> Result<Total> {
        let mut rw = Rows::new(view);
        let mut rw2 = second.map(Rows::new);
        let mut scratch = Scratch::default();
        let mut t = Total::default();
        let mut i = r.start;
        let mut use_fast = true;
        while i < r.end {
            if use_fast {
                let sub = o.as_deref_mut().map(|o| &mut o[i - r.start..]);
                match fast(i..r.end, sub, &mut scratch) {
                    None => use_fast = false,
                    Some(b) => {
                        t.sum += b.sum;
                        t.weight += b.weight;
                        i += b.rows;
                    }
                }
            }
            // The row kernel takes what the fast path left: one SIMD block's worth, or all.
            let stop = if use_fast { (i + 16).min(r.end) } else { r.end };
            while i < stop {
                let (loss, w) = row(&mut rw, rw2.as_mut(), i)?;
                if let Some(o) = o.as_deref_mut() {
                    o[i - r.start] = O::from_f64(loss);
                }
                t.sum += loss;
                t.weight += w;
                i += 1;
            }
        }
        Ok(t)
    };
    let parts = match out {
        Some(o) => {
            if o.len() != rows {
                return Err(Error::Shape(format!(
                    "output has {} elements, expected {rows}",
                    o.len()
                )));
            }
            parallel::map_chunks_out(o, 1, per, |r, o| chunk(r, Some(o)))
        }
        None => parallel::map_chunks(rows, per, |r| chunk(r, None)),
    };
    let mut total = Total::default();
    for p in parts {
        let p = p?;
        total.sum += p.sum;
        total.weight += p.weight;
    }
    Ok(total)
}

/// The vectorised cross-entropy over rows `r`, where it applies: a SIMD path, 16/32-bit rows
/// of any layout (rows long enough to be split across threads excepted), targets of any
/// integer dtype, f32 outputs (see `stage`).
fn ce_fast(
    x: &View,
    t: &IntView,
    r: Range<usize>,
    ignore: i64,
    wt: Option<(&[f32], &[f64])>,
    out: Option<&mut [f32]>,
    s: &mut Scratch,
) -> Option<BlockSums> {
    let path = simd::current();
    let c = x.cols();
    if path == Path::Scalar || c == 0 || c > 2 * SEGMENT {
        return None;
    }
    Some(match x.dtype {
        DType::F32 => stage::ce::<f32>(path, x, t, r, ignore, wt, out, s),
        DType::F16 => stage::ce::<F16>(path, x, t, r, ignore, wt, out, s),
        DType::BF16 => stage::ce::<BF16>(path, x, t, r, ignore, wt, out, s),
        DType::F64 => return None,
    })
}

/// The class index of row `i`, or None when ignored; errors name value, position and C.
#[inline]
pub(crate) fn class_of(t: &IntView, x: &View, i: usize, ignore: i64) -> Result<Option<usize>> {
    let v = t.get(i);
    if v == ignore as i128 {
        return Ok(None);
    }
    let c = x.cols();
    if v < 0 || v >= c as i128 {
        return Err(Error::TargetOutOfRange {
            value: v,
            position: x.position(i),
            classes: c,
        });
    }
    Ok(Some(v as usize))
}

fn chunk_per(x: &View) -> usize {
    parallel::chunk_rows(x.cols() * x.dtype.size())
}

/// Cross-entropy of logits `[..., C]` against class indices `[...]`.
///
/// loss_i = (1-ε)·w[t]·(lse_i - x_it) + ε/C · Σ_c w_c·(lse_i - x_ic); Σ weight = Σ w[t] over
/// non-ignored rows. Ignored rows give 0.
pub fn cross_entropy<O: Out>(
    x: &View,
    t: &IntView,
    opt: &ClassOptions,
    out: Option<&mut [O]>,
) -> Result<Total> {
    check_target_shape(x, t.shape(), "target")?;
    let c = x.cols();
    opt.check(c)?;
    let eps = opt.label_smoothing;
    let wsum: f64 = opt.weight.map_or(c as f64, |w| w.iter().sum());
    // The loss of row i with class k, given its target value and statistics.
    let finish = |rw: &mut Rows, i: usize, k: usize, xt: f64, rs: RowStats| -> (f64, f64) {
        let w = opt.weight.map_or(1.0, |w| w[k]);
        let mut loss = w * rs.minus(xt);
        if eps > 0.0 {
            let (shift, ln_s) = rs.split();
            let smooth = wsum * ln_s + rw.dev_sum(i, shift, opt.weight);
            loss = (1.0 - eps) * loss + eps / c as f64 * smooth;
        }
        (loss, w)
    };
    let row = |rw: &mut Rows, i: usize| -> Result<(f64, f64)> {
        let Some(k) = class_of(t, x, i, opt.ignore_index)? else {
            return Ok((0.0, 0.0));
        };
        let xt = rw.value(i, k);
        let rs = rw.stats(i, xt, Want::default());
        Ok(finish(rw, i, k, xt, rs))
    };
    let w32: Option<Vec<f32>> = opt.weight.map(|w| w.iter().map(|&v| v as f32).collect());
    let wt = w32.as_deref().zip(opt.weight);
    let fast = |r: Range<usize>, o: Option<&mut [O]>, s: &mut Scratch| -> Option<BlockSums> {
        if x.dtype == DType::F64 && eps == 0.0 && (1..=kernel::F64_LANES_MAX_C).contains(&c) {
            return Some(ce_f64_short(x, t, r, opt, o));
        }
        if eps > 0.0 && eps < 1.0 && opt.weight.is_none() && o.is_none() {
            // without class weights the smoothed loss is the plain one plus ε·(x_t - mean x):
            // (1-ε)·(lse - x_t) + ε/C·Σ_c (lse - x_c) = (lse - x_t) + ε·(x_t - Σ_c x_c / C),
            // so the rows take the cross-entropy kernel and one float64 row sum (not at ε = 1,
            // where a masked -inf target makes PyTorch's 0·inf a NaN: the row path keeps it)
            let mut b = ce_fast(x, t, r.clone(), opt.ignore_index, None, None, s)?;
            b.sum += eps
                * SMOOTH_T.with(|tb| {
                    let tb = &mut *tb.borrow_mut();
                    let ts = t.to_i64(r.start, b.rows, opt.ignore_index, tb);
                    match x.dtype {
                        DType::F32 => target_gap::<f32>(x, r.start, ts, opt.ignore_index),
                        DType::F16 => target_gap::<F16>(x, r.start, ts, opt.ignore_index),
                        DType::BF16 => target_gap::<BF16>(x, r.start, ts, opt.ignore_index),
                        DType::F64 => unreachable!("ce_fast excludes float64"),
                    }
                });
            return Some(b);
        }
        if eps > 0.0 {
            // short rows: (1-ε)·w_t·(-lp_t) + ε/C·Σ_c w_c·(-lp_c) from a log-probability tile
            let mut o = o;
            return with_logp(x, r.clone(), s, |lp, done, _| {
                let mut b = BlockSums::default();
                for l in 0..done {
                    let i = r.start + l;
                    let v = t.get(i);
                    let (loss, w) = if v == opt.ignore_index as i128 {
                        (0.0, 0.0)
                    } else if v < 0 || v >= c as i128 {
                        break; // the row kernel reports it
                    } else {
                        let k = v as usize;
                        let row = &lp[l * c..(l + 1) * c];
                        let wk = opt.weight.map_or(1.0, |w| w[k]);
                        let smooth: f64 = match opt.weight {
                            None => row.iter().map(|&p| -f64::from(p)).sum(),
                            // zero weights skip their term (a masked -inf class: 0·inf)
                            Some(w) => row
                                .iter()
                                .zip(w)
                                .filter(|(_, &wc)| wc != 0.0)
                                .map(|(&p, &wc)| -wc * f64::from(p))
                                .sum(),
                        };
                        let loss = (1.0 - eps) * wk * -f64::from(row[k]) + eps / c as f64 * smooth;
                        (loss, wk)
                    };
                    if let Some(o) = o.as_deref_mut() {
                        o[l] = O::from_f64(loss);
                    }
                    b.sum += loss;
                    b.weight += w;
                    b.rows += 1;
                }
                b
            });
        }
        let o = match o {
            Some(o) => Some(O::as_f32(o)?),
            None => None,
        };
        ce_fast(x, t, r, opt.ignore_index, wt, o, s)
    };
    drive(x, chunk_per(x), out, row, fast)
}

/// Cross-entropy (no label smoothing) of short float64 rows `r`, 16 at a time from their
/// vectorised statistics (`Rows::f64_block`), until the end or the first row with a target
/// out of range or an inf/NaN (left to the row kernel, which reports or handles it). Each
/// row's loss is the row kernel's arithmetic on the same statistics, w·((m - x_t) + ln s),
/// so the losses are its bits; the sum runs in row order.
fn ce_f64_short<O: Out>(
    x: &View,
    t: &IntView,
    r: Range<usize>,
    opt: &ClassOptions,
    mut out: Option<&mut [O]>,
) -> BlockSums {
    const L: usize = kernel::F64_LANES;
    let c = x.cols();
    let mut rw = Rows::new(x);
    let mut b = BlockSums::default();
    let mut i = r.start;
    while i < r.end {
        let blk = rw.f64_block(i, false);
        // (a fresh Rows, stepped by whole blocks: row i + l is lane l)
        debug_assert_eq!(blk.at, i);
        for l in 0..blk.n.min(r.end - i) {
            let v = t.get(i + l);
            let (loss, w) = if v == opt.ignore_index as i128 {
                (0.0, 0.0)
            } else if v < 0 || v >= c as i128 {
                return b;
            } else {
                let k = v as usize;
                let (m, s) = (blk.st.m[l], blk.st.s[l]);
                // (s is NaN where the row holds a NaN)
                if !(m.is_finite() && s.is_finite()) {
                    return b;
                }
                let w = opt.weight.map_or(1.0, |w| w[k]);
                (w * ((m - blk.cols[k * L + l]) + s.ln()), w)
            };
            if let Some(o) = out.as_deref_mut() {
                o[i + l - r.start] = O::from_f64(loss);
            }
            b.sum += loss;
            b.weight += w;
            b.rows += 1;
        }
        i += L;
    }
    b
}

thread_local! {
    /// Per-thread targets of the smoothed cross-entropy's fast path, widened to int64.
    static SMOOTH_T: std::cell::RefCell<Vec<i64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Σ_c x_c of a short row in float64, in order.
#[inline(always)]
fn short_row_sum<E: simd::Elem>(row: &[E]) -> f64 {
    row.iter().map(|v| f64::from(v.to_f32())).sum::<f64>()
}

/// Σ over the scored rows `start..start + ts.len()` (targets `ts`, all in range or ignored:
/// the rows the cross-entropy kernel finished) of x_t - Σ_c x_c / C, in float64. The row sum
/// is a plain loop for short rows and the vectorised one (`kernel::dev_sum`) from 64 classes:
/// a choice by C alone, so every layout and thread count sums a row the same way.
fn target_gap<E: simd::Elem + crate::tensor::Storage>(
    x: &View,
    start: usize,
    ts: &[i64],
    ignore: i64,
) -> f64 {
    let (c, path) = (x.cols(), simd::current());
    // Σ x_t and Σ_rows Σ_c x_c apart, divided once: no division per row
    let (mut sum_t, mut sum_rows) = (0.0, 0.0);
    let mut add = |row: &[E], k: i64| {
        sum_rows += if c >= 64 {
            -kernel::dev_sum(path, row, 0.0, None)
        } else {
            short_row_sum(row)
        };
        #[allow(clippy::cast_sign_loss)] // the kernel finished the row: 0 <= k < C
        let xt = f64::from(row[k as usize].to_f32());
        // a masked (-inf) target: its row's sum is -inf too, so the gap is +inf as it should
        // be (adding it here as well would make -inf + inf = NaN)
        if xt != f64::NEG_INFINITY {
            sum_t += xt;
        }
    };
    if c < 64 {
        // packed short rows: the same sums in one inlined loop (a call per row was 3x the
        // cross-entropy kernel at C = 2)
        if let Some(flat) = x.packed_rows::<E>(start, ts.len()) {
            for (row, &k) in flat.chunks_exact(c).zip(ts) {
                if k != ignore {
                    sum_rows += short_row_sum(row);
                    #[allow(clippy::cast_sign_loss)] // as above
                    let xt = f64::from(row[k as usize].to_f32());
                    if xt != f64::NEG_INFINITY {
                        sum_t += xt; // as above
                    }
                }
            }
            return sum_t - sum_rows / c as f64;
        }
    }
    if let Some(flat) = x.packed_rows::<E>(start, ts.len()) {
        for (row, &k) in flat.chunks_exact(c).zip(ts) {
            if k != ignore {
                add(row, k);
            }
        }
    } else {
        let mut rows = RowCache::<E>::default();
        for (l, &k) in ts.iter().enumerate() {
            if k != ignore {
                add(rows.row(x, start + l), k);
            }
        }
    }
    sum_t - sum_rows / c as f64
}

/// NLL of log-probabilities `[..., C]`: loss_i = -w[t]·x_it. A gathered value above
/// [`NLL_TOLERANCE`] cannot be a log-probability and is an error.
pub fn nll_loss<O: Out>(
    x: &View,
    t: &IntView,
    opt: &ClassOptions,
    out: Option<&mut [O]>,
) -> Result<Total> {
    check_target_shape(x, t.shape(), "target")?;
    opt.check(x.cols())?;
    let path = simd::current();
    // One gathered element per row: chunk by the bytes a row costs, not its length. Rows of
    // at most 64 bytes are read whole (16384 rows per chunk); a longer row's element is a
    // cache miss, which costs about as long as streaming 256 bytes: 4096 rows per chunk from
    // 256-byte rows on, so two threads share a [33554, 1000] input evenly (at 16384 rows: 3
    // chunks, two of them on one thread).
    drive(
        x,
        parallel::chunk_rows((x.cols() * x.dtype.size()).clamp(64, 256)),
        out,
        |rw, i| {
            let Some(k) = class_of(t, x, i, opt.ignore_index)? else {
                return Ok((0.0, 0.0));
            };
            let v = rw.value(i, k);
            if v > NLL_TOLERANCE {
                let mut position = x.position(i);
                position.push(k);
                return Err(Error::NotLogProbabilities { value: v, position });
            }
            let w = opt.weight.map_or(1.0, |w| w[k]);
            Ok((-w * v, w))
        },
        |r: Range<usize>, mut o: Option<&mut [O]>, _: &mut Scratch| -> Option<BlockSums> {
            // targets widened per run by one typed loop, the gathered values read by one
            // typed loop, 16 rows at a time into 16 partial f64 sums (one serial chain of adds
            // was the bound: 4 cycles per row); it stops at the first block holding a row to
            // report (bad target, not a log-prob), which the row kernel then takes
            NLL_T.with(|b| {
                let tb = &mut *b.borrow_mut();
                let ts = t.to_i64(r.start, r.len(), opt.ignore_index, tb);
                let c = x.cols() as u64;
                let mut acc = BlockSums::default();
                let mut sums = [[0f64; 16]; 2];
                macro_rules! go {
                    ($ty:ty, $f:expr) => {
                        go!($ty, $f, |p, n| kernel::nll_pairs_rows::<$ty>(
                            path,
                            p,
                            n,
                            ts,
                            opt.ignore_index,
                            NLL_TOLERANCE,
                            &mut sums
                        ))
                    };
                    ($ty:ty, $f:expr, $pairs:expr) => {{
                        let f = $f;
                        // rows read in place through one pointer and row stride where they
                        // are native and uniformly strided, else element by element
                        let run = x.row_run::<$ty>(r.start);
                        let at = |i: usize, k: usize| -> $ty {
                            match run {
                                // SAFETY: row r.start + i exists (i < r.len()) and k < c, so
                                // the element is inside the view, readable and aligned.
                                Some((p, st)) => unsafe { p.add(i * st + k).read() },
                                None => x.get::<$ty>(r.start + i, k),
                            }
                        };
                        // packed binary rows without weights or output: in SIMD lanes,
                        // the same sums (the loop below goes on where they stop)
                        let mut done = match run {
                            Some((p, 2))
                                if c == 2
                                    && opt.weight.is_none()
                                    && o.is_none()
                                    && path != Path::Scalar =>
                            {
                                #[allow(clippy::redundant_closure_call)]
                                ($pairs)(p, ts.len())
                            }
                            _ => 0,
                        };
                        'blocks: while done + 16 <= ts.len() {
                            let (mut loss, mut wl) = ([0f64; 16], [0f64; 16]);
                            for l in 0..16 {
                                let v = ts[done + l];
                                if v == opt.ignore_index {
                                    continue;
                                }
                                if (v as u64) >= c {
                                    break 'blocks;
                                }
                                let k = v as usize;
                                let xv: f64 = f(at(done + l, k));
                                if xv > NLL_TOLERANCE {
                                    break 'blocks;
                                }
                                let w = opt.weight.map_or(1.0, |w| w[k]);
                                (loss[l], wl[l]) = (-w * xv, w);
                            }
                            if let Some(o) = o.as_deref_mut() {
                                for l in 0..16 {
                                    o[done + l] = O::from_f64(loss[l]);
                                }
                            }
                            for l in 0..16 {
                                sums[0][l] += loss[l];
                                sums[1][l] += wl[l];
                            }
                            done += 16;
                        }
                        acc.rows = done;
                    }};
                }
                match x.dtype {
                    DType::F32 => go!(f32, |v: f32| f64::from(v)),
                    DType::F64 => go!(f64, |v: f64| v, |_: *const f64, _: usize| 0),
                    DType::F16 => go!(F16, |v: F16| f64::from(half::f16::from_bits(v.0).to_f32())),
                    DType::BF16 => go!(BF16, |v: BF16| f64::from(f32::from_bits(
                        u32::from(v.0) << 16
                    ))),
                }
                (acc.sum, acc.weight) = (sums[0].iter().sum(), sums[1].iter().sum());
                Some(acc)
            })
        },
    )
}

thread_local! {
    /// Per-thread targets of [`nll_loss`]'s fast path, widened to int64.
    static NLL_T: std::cell::RefCell<Vec<i64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Per-thread buffers of [`with_logp`]: log-probabilities, lanes parts, spread, targets.
type LogpBufs = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

thread_local! {
    static LOGP: std::cell::RefCell<LogpBufs> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new(), Vec::new()))
    };
}

/// Short rows (C <= `LANES_MAX_C`, 16/32-bit, a SIMD path): the log-probabilities of rows `r`
/// in one tile (their max and ln s in lanes, one flat vector pass; see
/// `stage::softmax_short`), handed to `f` with the rows done (it stops before a block holding
/// a row that is not ordinary) and a spare f32 buffer. None where it does not apply.
fn with_logp<T>(
    x: &View,
    r: Range<usize>,
    s: &mut Scratch,
    f: impl FnOnce(&[f32], usize, &mut Vec<f32>) -> T,
) -> Option<T> {
    let (c, path) = (x.cols(), simd::current());
    if path == Path::Scalar || !(1..=kernel::LANES_MAX_C).contains(&c) || x.dtype == DType::F64 {
        return None;
    }
    LOGP.with(|b| {
        let (lp, parts, spread, spare) = &mut *b.borrow_mut();
        lp.clear();
        lp.resize(r.len() * c, 0.0);
        let done = match x.dtype {
            DType::F32 => stage::softmax_short::<f32>(path, x, r, true, lp, parts, spread, s),
            DType::F16 => stage::softmax_short::<F16>(path, x, r, true, lp, parts, spread, s),
            DType::BF16 => stage::softmax_short::<BF16>(path, x, r, true, lp, parts, spread, s),
            DType::F64 => return None,
        };
        Some(f(&lp[..done * c], done, spare))
    })
}

thread_local! {
    /// Per-thread rows of [`cross_entropy_soft`] widened to f64 (logits, targets).
    static SOFT_ROWS: std::cell::RefCell<(Vec<f64>, Vec<f64>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Cross-entropy against probability targets of the input's shape (PyTorch's soft targets):
/// loss_i = Σ_c w_c·y'_ic·(lse_i - x_ic), y' = (1-ε)·y + ε/C, terms with y' = 0 count 0.
/// Σ weight is the number of rows (PyTorch divides the mean by it).
pub fn cross_entropy_soft<O: Out>(
    x: &View,
    y: &View,
    opt: &ClassOptions,
    out: Option<&mut [O]>,
) -> Result<Total> {
    if x.shape() != y.shape() {
        return Err(Error::Shape(format!(
            "probability target shape {:?} does not match input shape {:?}",
            y.shape(),
            x.shape()
        )));
    }
    let c = x.cols();
    opt.check(c)?;
    let eps = opt.label_smoothing;
    drive2(
        x,
        Some(y),
        chunk_per(x),
        out,
        |rw, yr, i| {
            let (shift, ln_s) = rw.stats(i, 0.0, Want::default()).split();
            // the row and its targets widened to f64 once (typed loops), then summed
            let Some(yr) = yr else {
                return Err(Error::Value("soft targets: no target rows (a bug)".into()));
            };
            SOFT_ROWS.with(|b| {
                let (bx, by) = &mut *b.borrow_mut();
                let (xs, ys) = (rw.f64_row(i, bx), yr.f64_row(i, by));
                let (path, cf) = (simd::current(), c as f64);
                let loss = kernel::soft_sum::<f32>(path, xs, ys, shift, ln_s, eps, cf, opt.weight);
                Ok((loss, 1.0))
            })
        },
        |r: Range<usize>, mut o: Option<&mut [O]>, s: &mut Scratch| -> Option<BlockSums> {
            // short rows: Σ_c w_c·y'_c·(-lp_c) from a log-probability tile, y' = (1-ε)·y + ε/C
            with_logp(x, r.clone(), s, |lp, done, _| {
                // packed targets: one typed loop over the tile's rows
                let packed = match y.dtype {
                    DType::F32 => y.packed_rows::<f32>(r.start, done).map(|ys| {
                        soft_tile(lp, ys, c, eps, opt.weight, o.as_deref_mut(), f64::from)
                    }),
                    DType::F64 => y
                        .packed_rows::<f64>(r.start, done)
                        .map(|ys| soft_tile(lp, ys, c, eps, opt.weight, o.as_deref_mut(), |v| v)),
                    DType::F16 => y.packed_rows::<F16>(r.start, done).map(|ys| {
                        soft_tile(lp, ys, c, eps, opt.weight, o.as_deref_mut(), |v| {
                            f64::from(simd::Elem::to_f32(v))
                        })
                    }),
                    DType::BF16 => y.packed_rows::<BF16>(r.start, done).map(|ys| {
                        soft_tile(lp, ys, c, eps, opt.weight, o.as_deref_mut(), |v| {
                            f64::from(simd::Elem::to_f32(v))
                        })
                    }),
                };
                if let Some(b) = packed {
                    return b;
                }
                let mut b = BlockSums::default();
                let mut ybuf: Vec<f64> = Vec::new();
                for l in 0..done {
                    let i = r.start + l;
                    let row = &lp[l * c..(l + 1) * c];
                    let yrow = y.f64_run(i, &mut ybuf);
                    let loss = soft_row(row, yrow, eps, eps / c as f64, opt.weight, |v| v);
                    if let Some(o) = o.as_deref_mut() {
                        o[l] = O::from_f64(loss);
                    }
                    b.sum += loss;
                    b.weight += 1.0;
                    b.rows += 1;
                }
                b
            })
        },
    )
}

/// Σ_c w_c·y'_c·(-lp_c) of one row, y' = (1-ε)·y + tail (tail = ε/C), terms with y' = 0
/// counting 0 (a -inf log-probability there is no NaN).
#[inline(always)]
fn soft_row<Y: Copy>(
    row: &[f32],
    yrow: &[Y],
    eps: f64,
    tail: f64,
    weight: Option<&[f64]>,
    conv: impl Fn(Y) -> f64,
) -> f64 {
    let mut loss = 0.0;
    for (j, (&p, &yv)) in row.iter().zip(yrow).enumerate() {
        let yj = (1.0 - eps) * conv(yv) + tail;
        if yj != 0.0 {
            let w = weight.map_or(1.0, |w| w[j]);
            loss += w * yj * -f64::from(p);
        }
    }
    loss
}

/// Soft-target losses of the rows of a log-probability tile `lp` against their packed targets
/// `ys` (as [`cross_entropy_soft`]'s row loop: the same terms in the same order).
fn soft_tile<Y: Copy, O: Out>(
    lp: &[f32],
    ys: &[Y],
    c: usize,
    eps: f64,
    weight: Option<&[f64]>,
    mut o: Option<&mut [O]>,
    conv: impl Fn(Y) -> f64,
) -> BlockSums {
    let mut b = BlockSums::default();
    let tail = eps / c as f64;
    for (l, (row, yrow)) in lp.chunks_exact(c).zip(ys.chunks_exact(c)).enumerate() {
        let loss = soft_row(row, yrow, eps, tail, weight, &conv);
        if let Some(o) = o.as_deref_mut() {
            o[l] = O::from_f64(loss);
        }
        b.sum += loss;
        b.weight += 1.0;
        b.rows += 1;
    }
    b
}

/// Binary cross-entropy with logits, element-wise over `[..., C]`, PyTorch's stable form:
/// loss = (1-y)·x + (1 + (pw-1)·y)·(log1p(exp(-|x|)) + max(-x, 0)), times `weight`.
/// `out` (if any) has one element per input element; Σ weight is the element count.
pub fn bce_with_logits<O: Out>(
    x: &View,
    y: &View,
    weight: Option<&View>,
    pos_weight: Option<&[f64]>,
    out: Option<&mut [O]>,
) -> Result<Total> {
    for (what, v) in [("target", Some(y)), ("weight", weight)] {
        if let Some(v) = v {
            if v.shape() != x.shape() {
                return Err(Error::Shape(format!(
                    "{what} shape {:?} does not match input shape {:?}",
                    v.shape(),
                    x.shape()
                )));
            }
        }
    }
    let c = x.cols();
    if let Some(pw) = pos_weight {
        if pw.len() != c {
            return Err(Error::Value(format!(
                "pos_weight has {} elements but the input's last axis has {c}",
                pw.len()
            )));
        }
    }
    // float64 anywhere (logits, targets or weights) keeps the float64 loop: a target in f64
    // times a logit of 1e3 needs its full precision
    let narrow = |v: &View| v.dtype != DType::F64;
    if narrow(x) && narrow(y) && weight.is_none_or(narrow) && simd::current() != Path::Scalar {
        return bce_vector(x, y, weight, pos_weight, out);
    }
    let per = chunk_per(x);
    let elem = |i: usize, j: usize, xr: &Rows, yr: &Rows, wr: Option<&Rows>| -> f64 {
        let (xv, yv) = (xr.value(i, j), yr.value(i, j));
        let sp = (-xv.abs()).exp().ln_1p() + (-xv).max(0.0);
        let lw = pos_weight.map_or(1.0, |pw| 1.0 + (pw[j] - 1.0) * yv);
        let l = (1.0 - yv) * xv + lw * sp;
        wr.map_or(l, |w| l * w.value(i, j))
    };
    let chunk = |r: Range<usize>, mut o: Option<&mut [O]>| -> Total {
        let (xr, yr) = (Rows::new(x), Rows::new(y));
        let wr = weight.map(Rows::new);
        let mut t = Total::default();
        for (k, i) in r.enumerate() {
            for j in 0..c {
                let l = elem(i, j, &xr, &yr, wr.as_ref());
                if let Some(o) = o.as_deref_mut() {
                    o[k * c + j] = O::from_f64(l);
                }
                t.sum += l;
            }
            t.weight += c as f64;
        }
        t
    };
    let parts = match out {
        Some(o) => {
            if o.len() != x.rows() * c {
                return Err(Error::Shape("output size does not match the input".into()));
            }
            parallel::map_chunks_out(o, c, per, |r, o| chunk(r, Some(o)))
        }
        None => parallel::map_chunks(x.rows(), per, |r| chunk(r, None)),
    };
    Ok(parts.into_iter().fold(Total::default(), |a, p| Total {
        sum: a.sum + p.sum,
        weight: a.weight + p.weight,
    }))
}

/// Elements per chunk of [`bce_vector`]: fixed (reproducible sums), about `CHUNK_BYTES` of f32.
const BCE_CHUNK: usize = parallel::CHUNK_BYTES / 4;
/// Elements per kernel call of [`bce_vector`] (64 KiB of f32 per staged input): a multiple of
/// `kernel::BLOCK`, and `BCE_CHUNK` a multiple of it.
const BCE_SEGMENT: usize = 4 * kernel::BLOCK;
const _: () =
    assert!(BCE_SEGMENT.is_multiple_of(kernel::BLOCK) && BCE_CHUNK.is_multiple_of(BCE_SEGMENT));

/// Binary cross-entropy with logits of 16/32-bit logits on a SIMD path: the flat element range
/// is cut into fixed chunks (a 1-d input is split across threads like any other); each chunk
/// reads packed float32 in place and stages every other input (other dtypes, strided rows,
/// column slices, Fortran order) into f32 scratch, then runs one vector kernel over it.
fn bce_vector<O: Out>(
    x: &View,
    y: &View,
    weight: Option<&View>,
    pos_weight: Option<&[f64]>,
    out: Option<&mut [O]>,
) -> Result<Total> {
    let (c, rows) = (x.cols(), x.rows());
    let n = rows * c;
    let path = simd::current();
    let pw32: Option<Vec<f32>> = pos_weight.map(|p| p.iter().map(|&v| v as f32).collect());
    let chunk = |r: Range<usize>, mut o: Option<&mut [f32]>| -> f64 {
        // Each input as flat runs of elements: packed and column-major inputs for the whole
        // chunk (borrowed when packed float32, else widened or staged as whole rows), the
        // others staged BCE_SEGMENT elements at a time (a tile that stays in L2). The kernel
        // runs segment by segment; segments start at multiples of kernel::BLOCK from the
        // chunk's start, where the kernel starts a new block of f32 lanes anyway, so every
        // layout gives the bits of one call over the chunk (f64 sums of blocks, in order).
        let (e0, i0) = (r.start, r.start / c.max(1));
        let mut s = FlatScratch::default();
        let (mut cx, mut cy, mut cw) = (Vec::new(), Vec::new(), Vec::new());
        let whole = |v: &View| v.whole_chunks(i0);
        let xc = whole(x).then(|| x.chunk_f32(e0, r.end, &mut s, &mut cx));
        let yc = whole(y).then(|| y.chunk_f32(e0, r.end, &mut s, &mut cy));
        let wc = weight.and_then(|w| whole(w).then(|| w.chunk_f32(e0, r.end, &mut s, &mut cw)));
        let (mut sx, mut sy, mut sw, mut sp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut sum = 0.0;
        let mut s0 = e0;
        while s0 < r.end {
            let s1 = r.end.min(s0 + BCE_SEGMENT);
            let xs = if let Some(a) = xc {
                &a[s0 - e0..s1 - e0]
            } else {
                x.stage_flat_f32(s0, s1, &mut s, &mut sx);
                &sx[..]
            };
            let ys = if let Some(a) = yc {
                &a[s0 - e0..s1 - e0]
            } else {
                y.stage_flat_f32(s0, s1, &mut s, &mut sy);
                &sy[..]
            };
            let ws = match (weight, wc) {
                (_, Some(a)) => Some(&a[s0 - e0..s1 - e0]),
                (Some(w), None) => {
                    w.stage_flat_f32(s0, s1, &mut s, &mut sw);
                    Some(&sw[..])
                }
                (None, None) => None,
            };
            // pos_weight laid out per element
            let ps = pw32.as_deref().map(|p| {
                sp.clear();
                sp.extend((s0..s1).map(|e| p[e % c]));
                &sp[..]
            });
            let os = o.as_deref_mut().map(|o| &mut o[s0 - e0..s1 - e0]);
            sum += kernel::bce_elems::<f32>(path, xs, ys, ws, ps, os);
            s0 = s1;
        }
        sum
    };
    let parts: Vec<f64> = match out {
        Some(o) => {
            if o.len() != n {
                return Err(Error::Shape("output size does not match the input".into()));
            }
            let o = O::as_f32(o)
                .ok_or_else(|| Error::Type("16/32-bit input writes float32 losses".into()))?;
            parallel::map_chunks_out(o, 1, BCE_CHUNK, |r, o| chunk(r, Some(o)))
        }
        None => parallel::map_chunks(n, BCE_CHUNK, |r| chunk(r, None)),
    };
    Ok(Total {
        sum: parts.into_iter().sum(),
        weight: n as f64,
    })
}
