//! Exact order statistics of a large float64 array (the percentiles of `compare`'s per-row KL
//! and Δp): a radix pre-selection, then a partial sort of only the values that can hold the
//! requested ranks.
//!
//! Pass 1 counts the values per bucket of the top 16 bits of an order-preserving key (sign,
//! exponent and 4 mantissa bits: a bucket spans a factor 2^(1/16) of magnitude), on the pool.
//! The prefix sums name the bucket of each requested rank. Pass 2 copies the values of those
//! buckets (at most one per rank) out, and a multi-select (`select_nth_unstable`) on each
//! bucket finds the ranks. A bucket holding more than 1/32 of the values is narrowed by the
//! next 16 bits of the key instead (another counting pass), so what is copied stays small
//! even when most values are equal (KL of identical dumps: all 0). For a continuous
//! distribution the work is two streaming reads instead of a partial sort of the whole array.

use crate::error::{Error, Result};
use crate::parallel;

const BITS: u32 = 16;
const BUCKETS: usize = 1 << BITS;

/// An order-preserving u64 key of a non-NaN f64 (-0.0 and +0.0 are the same key).
#[inline]
fn key(x: f64) -> u64 {
    let b = (x + 0.0).to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

/// The f64 of a key (the inverse of [`key`]).
fn from_key(k: u64) -> f64 {
    f64::from_bits(if k >> 63 == 1 { k ^ (1 << 63) } else { !k })
}

/// The values of rank `ks` (0-based, ascending order of value) of `v`, which must hold no NaN;
/// `ks` in any order, each < `v.len()`. `v` is only read; what is copied out is the wanted
/// buckets of at most `v.len() / 32` values each (a larger one is narrowed by the next 16 key
/// bits instead, one more pass: all-equal values cost passes, not a copy). -0.0 is returned
/// as 0.0.
///
/// # Errors
/// A rank out of range, or a NaN in `v` (named by its position).
pub fn order_stats(v: &[f64], ks: &[usize]) -> Result<Vec<f64>> {
    let n = v.len();
    if let Some(&k) = ks.iter().find(|&&k| k >= n) {
        return Err(Error::Value(format!(
            "rank {k} is out of range for {n} values"
        )));
    }
    let (out, nan) = select_ranks(v, |_| ks.to_vec());
    if nan > 0 {
        let i = v.iter().position(|x| x.is_nan()).unwrap_or(0);
        return Err(Error::Value(format!(
            "order statistics of values holding NaN (at position {i})"
        )));
    }
    Ok(out)
}

/// Quantiles of the non-NaN values of `v` by linear interpolation between order statistics
/// (NumPy's default "linear" rule, llama.cpp's): for q in `qs`, h = q·(m - 1) over the m
/// values that are not NaN, the value of rank floor(h) plus (h - floor(h)) times the step to
/// the next rank. NaN values are skipped in every pass (no copy without them). Returns the
/// quantiles (NaN for no values) and m.
///
/// # Errors
/// A q outside [0, 1].
pub fn quantiles(v: &[f64], qs: &[f64]) -> Result<(Vec<f64>, usize)> {
    if let Some(q) = qs.iter().find(|q| !(0.0..=1.0).contains(*q)) {
        return Err(Error::Value(format!("quantile {q} is outside [0, 1]")));
    }
    let rank = |q: f64, m: usize| -> (usize, f64) {
        let h = q * (m - 1) as f64;
        let i = (h.floor() as usize).min(m - 1);
        (i, h - i as f64)
    };
    let mut valid = 0;
    let (at, _) = select_ranks(v, |m| {
        valid = m;
        if m == 0 {
            return Vec::new();
        }
        let mut ks: Vec<usize> = qs
            .iter()
            .flat_map(|&q| {
                let (i, _) = rank(q, m);
                [i, (i + 1).min(m - 1)]
            })
            .collect();
        ks.sort_unstable();
        ks.dedup();
        ks
    });
    if valid == 0 {
        return Ok((vec![f64::NAN; qs.len()], 0));
    }
    // `at` follows the sorted distinct ranks the closure returned
    let mut ks: Vec<usize> = qs
        .iter()
        .flat_map(|&q| {
            let (i, _) = rank(q, valid);
            [i, (i + 1).min(valid - 1)]
        })
        .collect();
    ks.sort_unstable();
    ks.dedup();
    let value = |k: usize| at[ks.binary_search(&k).unwrap_or(0)];
    let out = qs
        .iter()
        .map(|&q| {
            let (i, f) = rank(q, valid);
            let a = value(i);
            if f == 0.0 || i + 1 >= valid {
                a
            } else {
                (1.0 - f) * a + f * value(i + 1)
            }
        })
        .collect();
    Ok((out, valid))
}

/// The values of the ranks (among the non-NaN values of `v`) that `ranks_of` returns given
/// their number, in its order, and the number of NaN values.
fn select_ranks(v: &[f64], ranks_of: impl FnOnce(usize) -> Vec<usize>) -> (Vec<f64>, usize) {
    select_ranks_by(v, ranks_of, COPY_MAX)
}

/// Arrays of at most this many values are copied (at most 512 KiB) and multi-selected
/// directly: the radix passes' histograms (512 KiB per thread, zeroed, merged and summed)
/// cost more than the copy below about this size (2 ms per call for 16777 values, the
/// per-row KL of a [16777, 1000] comparison, against 0.2 ms).
const COPY_MAX: usize = BUCKETS;

/// [`select_ranks`] with the size up to which the values are copied instead of pre-selected.
fn select_ranks_by(
    v: &[f64],
    ranks_of: impl FnOnce(usize) -> Vec<usize>,
    copy_max: usize,
) -> (Vec<f64>, usize) {
    if v.len() <= copy_max {
        let mut w: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        let nan = v.len() - w.len();
        let ks = ranks_of(w.len());
        let mut distinct = ks.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut got = Vec::with_capacity(distinct.len());
        multiselect(&mut w, &distinct, 0, &mut got);
        got.sort_unstable_by_key(|&(k, _)| k);
        let out = ks
            .iter()
            .map(|k| got[got.partition_point(|&(j, _)| j < *k)].1 + 0.0)
            .collect();
        return (out, nan);
    }
    let first = count_pass(v, 0, 0);
    let nan = first.nan as usize;
    let ks = ranks_of(v.len() - nan);
    let mut out = vec![f64::NAN; ks.len()];
    let ranks: Vec<(usize, u64)> = ks.iter().map(|&k| k as u64).enumerate().collect();
    if !ranks.is_empty() {
        let small = ((v.len() - nan) / 32).max(4096);
        narrow(v, 0, 0, &ranks, small, &mut out, Some(first));
    }
    (out, nan)
}

/// One counting pass: per chunk of the pool's split, the counts of the 16-bit digit after
/// the `bits`-bit `prefix` of the keys of the non-NaN values holding that prefix, and the
/// number of NaN values.
struct Counts {
    per: usize,
    parts: Vec<Vec<u64>>,
    hist: Vec<u64>,
    nan: u64,
}

fn count_pass(v: &[f64], prefix: u64, bits: u32) -> Counts {
    let shift = 64 - bits - BITS;
    let inside = move |k: u64| bits == 0 || k >> (64 - bits) == prefix;
    // one chunk per thread for the counts (a 512 KiB histogram each: per 1 MiB chunk they
    // would add half the input)
    let per = v
        .len()
        .div_ceil(parallel::num_threads().max(1))
        .max(1 << 16);
    let res = parallel::map_chunks(v.len(), per, |r| {
        // two counts past the buckets, NaN's and the values outside the prefix: every value
        // is counted somewhere, with a select instead of a branch per value (on the first
        // pass, where every value is inside, measured the same as the branches)
        let mut h = vec![0u64; BUCKETS + 2];
        for &x in &v[r] {
            let k = key(x);
            let d = ((k >> shift) as usize) & (BUCKETS - 1);
            let at = if x.is_nan() {
                BUCKETS
            } else if inside(k) {
                d
            } else {
                BUCKETS + 1
            };
            h[at] += 1;
        }
        let nan = h[BUCKETS];
        h.truncate(BUCKETS);
        (h, nan)
    });
    let mut hist = vec![0u64; BUCKETS];
    let mut nan = 0;
    let mut parts = Vec::with_capacity(res.len());
    for (h, n) in res {
        nan += n;
        for (a, &b) in hist.iter_mut().zip(&h) {
            *a += b;
        }
        parts.push(h);
    }
    Counts {
        per,
        parts,
        hist,
        nan,
    }
}

/// Resolves `ranks` ((output slot, rank among the values whose key starts with the `bits`-bit
/// `prefix`)) into `out`: one counting pass over the next 16 key bits (or `first`, already
/// taken), then the values of each small wanted bucket copied out (on the pool, each chunk
/// into its own exact range) and multi-selected (a bucket per task); a large one narrowed
/// again.
fn narrow(
    v: &[f64],
    prefix: u64,
    bits: u32,
    ranks: &[(usize, u64)],
    small: usize,
    out: &mut [f64],
    first: Option<Counts>,
) {
    let shift = 64 - bits - BITS;
    let inside = move |k: u64| bits == 0 || k >> (64 - bits) == prefix;
    let digit = move |k: u64| ((k >> shift) as usize) & (BUCKETS - 1);
    let counts = first.unwrap_or_else(|| count_pass(v, prefix, bits));
    let hist = &counts.hist;
    let mut below = vec![0u64; BUCKETS];
    let mut acc = 0u64;
    for (b, &c) in below.iter_mut().zip(hist) {
        *b = acc;
        acc += c;
    }
    // the last non-empty bucket starting at or below the rank
    let find = |r: u64| below.partition_point(|&s| s <= r) - 1;
    let mut wanted: Vec<usize> = ranks.iter().map(|&(_, r)| find(r)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut collect: Vec<usize> = Vec::new();
    for &b in &wanted {
        let here: Vec<(usize, u64)> = ranks
            .iter()
            .filter(|&&(_, r)| find(r) == b)
            .map(|&(s, r)| (s, r - below[b]))
            .collect();
        let full = prefix << BITS | b as u64;
        if bits + BITS == 64 {
            // the whole key is known: every value in this bucket is the same
            for (s, _) in here {
                out[s] = from_key(full) + 0.0;
            }
        } else if hist[b] as usize > small {
            narrow(v, full, bits + BITS, &here, small, out, None);
        } else {
            collect.push(b);
        }
    }
    if collect.is_empty() {
        return;
    }
    // the small wanted buckets' values into buffers of their exact size: chunk c of the
    // counting split writes bucket b's values from Σ_{c' < c} parts[c'][b] on
    let mut slot = vec![0u32; BUCKETS];
    for (s, &b) in collect.iter().enumerate() {
        slot[b] = s as u32 + 1;
    }
    let mut vals: Vec<Vec<f64>> = collect
        .iter()
        .map(|&b| vec![0.0; hist[b] as usize])
        .collect();
    let mut starts: Vec<Vec<usize>> = Vec::with_capacity(counts.parts.len());
    let mut run = vec![0usize; collect.len()];
    for part in &counts.parts {
        starts.push(run.clone());
        for (r, &b) in run.iter_mut().zip(&collect) {
            *r += part[b] as usize;
        }
    }
    let dst = Dst(vals.iter_mut().map(Vec::as_mut_ptr).collect());
    let per = counts.per;
    parallel::map_chunks(v.len(), per, |r| {
        let mut at = starts[r.start / per].clone();
        for &x in &v[r] {
            let k = key(x);
            if x.is_nan() || !inside(k) {
                continue;
            }
            let s = slot[digit(k)] as usize;
            if s != 0 {
                // SAFETY: chunk c writes bucket s - 1 at its own range [starts[c], starts[c]
                // + its count), within the buffer of hist[b] values (the counting pass
                // counted exactly these values, by the same split).
                unsafe { dst.at(s - 1).add(at[s - 1]).write(x) };
                at[s - 1] += 1;
            }
        }
    });
    let jobs: Vec<(Vec<f64>, usize)> = vals.into_iter().zip(collect.iter().copied()).collect();
    let found = parallel::map_items(jobs, 1, |(mut vb, b)| {
        let mut local: Vec<usize> = ranks
            .iter()
            .filter(|&&(_, r)| find(r) == b)
            .map(|&(_, r)| (r - below[b]) as usize)
            .collect();
        local.sort_unstable();
        local.dedup();
        let mut got = Vec::new();
        multiselect(&mut vb, &local, 0, &mut got);
        (b, got)
    });
    for (b, got) in found {
        for &(s, r) in ranks.iter().filter(|&&(_, r)| find(r) == b) {
            let want = (r - below[b]) as usize;
            if let Some(&(_, x)) = got.iter().find(|&&(j, _)| j == want) {
                out[s] = x + 0.0;
            }
        }
    }
}

/// The collection buffers' pointers, shared by the pool's chunks (each writes its own range).
struct Dst(Vec<*mut f64>);

impl Dst {
    fn at(&self, s: usize) -> *mut f64 {
        self.0[s]
    }
}
// SAFETY: the chunks write disjoint ranges of the buffers (see `narrow`), which outlive the
// parallel pass.
unsafe impl Sync for Dst {}
unsafe impl Send for Dst {}

/// The values of the sorted, distinct ranks `ranks` (relative to `offset`) of `v`, appended
/// to `out` as (rank, value); `v` is reordered.
fn multiselect(v: &mut [f64], ranks: &[usize], offset: usize, out: &mut Vec<(usize, f64)>) {
    if ranks.is_empty() {
        return;
    }
    let m = ranks.len() / 2;
    let k = ranks[m] - offset;
    let (left, kth, right) = v.select_nth_unstable_by(k, f64::total_cmp);
    out.push((ranks[m], *kth));
    multiselect(left, &ranks[..m], offset, out);
    multiselect(right, &ranks[m + 1..], offset + k + 1, out);
}

/// A log-spaced histogram's layout: `nb` bins of |v| on edges lo·10^(k / per_decade),
/// k = 0..=nb, with a zero bin (|v| < lo) and an overflow bin (|v| >= the last edge, or
/// inf); `signed` keeps the sign (negative bins mirrored below the zero bin).
#[derive(Clone, Copy, Debug)]
pub struct LogBins {
    pub lo: f64,
    pub per_decade: u32,
    pub nb: usize,
    pub signed: bool,
}

impl LogBins {
    /// Number of counts: [zero, bins.., overflow], or [-overflow, -bins (descending |v|)..,
    /// zero, +bins.., +overflow] when signed.
    pub fn len(&self) -> usize {
        if self.signed {
            2 * self.nb + 3
        } else {
            self.nb + 2
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Most copies of the bins in [`count_log_bins`] (value i adds to copy i % ways).
const WAYS: usize = 4;
/// Values whose bins [`count_log_bins`] takes together before their rare settles.
const BLK: usize = 64;

/// [`log_hist`] of one chunk, given the edges and the log2 table.
#[inline(always)]
fn count_log_bins(
    v: &[f64],
    b: LogBins,
    edges: &[f64],
    table: &[[f64; 2]; 256],
) -> (Vec<u64>, u64) {
    let nb = b.nb;
    assert!(nb >= 1 && edges.len() == nb + 1);
    let (lo, top) = (edges[0], edges[nb]);
    let pd = f64::from(b.per_decade);
    let (l2lo, scale) = (lo.log2(), pd * std::f64::consts::LOG10_2);
    // the estimate's error in bins (interpolation 2.8e-6 in log2, rounding), with margin: an
    // estimate this close to a bin edge is settled on the edges table
    let near = 1e-5 * scale + 1e-9;
    let z = nb as i64 + 1;
    let len = b.len();
    // `ways` copies of the bins, value i adding to copy i % ways: values falling in one bin
    // (most of them, for close models) do not wait on each other's increment; one copy when
    // the bins are many or the values few (the copies' zeroing and merge would dominate)
    let ways = if len <= 1 << 16 && v.len() >= 16 * len {
        WAYS
    } else {
        1
    };
    // each copy has one more count: the NaN values' (so the count loop has no test)
    let stride = len + 1;
    let mut hs = vec![0u64; ways * stride];
    let place = |x: f64, k: i64| -> usize {
        let idx = if !b.signed {
            k + 1
        } else if k < 0 {
            z
        } else if x > 0.0 {
            z + 1 + k
        } else {
            z - 1 - k
        };
        idx as usize
    };
    // the bin of one value without branches (a flag where the estimate is too near an edge
    // and must be settled on the edges table); NaN gets the count past the bins
    let bin = |x: f64| -> (usize, bool) {
        let a = x.abs();
        // signed integer conversions (one instruction each, unlike u64 <-> f64); the
        // estimate is computed for every value (zero, inf and NaN give some number, replaced
        // below)
        let bits = a.to_bits();
        let e = (((bits >> 52) & 0x7ff) as i64 - 1023) as f64;
        let [t0, t1] = table[((bits >> 44) & 0xff) as usize];
        let f = ((bits & ((1 << 44) - 1)) as i64) as f64 * (1.0 / (1u64 << 44) as f64);
        let est = (e + t0 + t1 * f - l2lo) * scale;
        // clamped to the bins (NaN to 0: `max` takes the number), then an exact conversion
        // (a saturating `as` cast is several instructions and keeps the loop scalar)
        let kf = est.max(0.0).min((nb - 1) as f64).trunc();
        // SAFETY: kf is an integer in [0, nb - 1], nb <= 2^24
        let k0 = unsafe { kf.to_int_unchecked::<i64>() };
        let frac = est - kf;
        let inside = a >= lo && a < top;
        #[allow(clippy::needless_bitwise_bool)] // no branches in the loop, on purpose
        let unsure = inside & !((frac > near) & (frac < 1.0 - near));
        // k: -1 zero bin, 0..nb - 1 bins, nb overflow
        let k = if inside {
            k0
        } else if a >= top {
            nb as i64
        } else {
            -1
        };
        (if x.is_nan() { len } else { place(x, k) }, unsure)
    };
    // blocks of values: their bins first (a loop without branches), then the rare settles,
    // then the counts (copy j % ways for value j, no test in the loop)
    let mut idx = [0usize; BLK];
    let mut unsure = [false; BLK];
    for blk in v.chunks(BLK) {
        let mut any = false;
        if let Ok(full) = <&[f64; BLK]>::try_from(blk) {
            // a fixed trip count: the loop vectorises whole (with the slice's length it kept
            // a scalar copy of the bin arithmetic)
            for j in 0..BLK {
                (idx[j], unsure[j]) = bin(full[j]);
                any |= unsure[j];
            }
        } else {
            for (j, &x) in blk.iter().enumerate() {
                (idx[j], unsure[j]) = bin(x);
                any |= unsure[j];
            }
        }
        if any {
            for (j, &x) in blk.iter().enumerate() {
                if unsure[j] {
                    let k0 = if b.signed {
                        idx[j].abs_diff(z as usize) - 1
                    } else {
                        idx[j] - 1
                    };
                    idx[j] = place(x, settle(x.abs(), k0, edges) as i64);
                }
            }
        }
        let got = &idx[..blk.len()];
        if ways == WAYS {
            let (h0, rest) = hs.split_at_mut(stride);
            let (h1, rest) = rest.split_at_mut(stride);
            let (h2, h3) = rest.split_at_mut(stride);
            let mut q = got.chunks_exact(WAYS);
            for g in &mut q {
                h0[g[0]] += 1;
                h1[g[1]] += 1;
                h2[g[2]] += 1;
                h3[g[3]] += 1;
            }
            for &i in q.remainder() {
                h0[i] += 1;
            }
        } else {
            for &i in got {
                hs[i] += 1;
            }
        }
    }
    let mut h = hs[..len].to_vec();
    let mut nan = hs[len];
    for w in 1..ways {
        for (t, c) in h.iter_mut().zip(&hs[w * stride..w * stride + len]) {
            *t += c;
        }
        nan += hs[w * stride + len];
    }
    (h, nan)
}

/// [`count_log_bins`] compiled for the SIMD path (the bin loop vectorises: f64 lanes and
/// gathers of the table); the same arithmetic on every path.
fn count_log_bins_on(
    path: crate::simd::Path,
    v: &[f64],
    b: LogBins,
    edges: &[f64],
    table: &[[f64; 2]; 256],
) -> (Vec<u64>, u64) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(v: &[f64], b: LogBins, e: &[f64], t: &[[f64; 2]; 256]) -> (Vec<u64>, u64) {
        count_log_bins(v, b, e, t)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    unsafe fn avx512(v: &[f64], b: LogBins, e: &[f64], t: &[[f64; 2]; 256]) -> (Vec<u64>, u64) {
        count_log_bins(v, b, e, t)
    }
    // SAFETY: a Path other than Scalar is only selected after `Path::available` confirmed
    // the CPU has its features.
    match path {
        #[cfg(target_arch = "x86_64")]
        crate::simd::Path::Avx512 => unsafe { avx512(v, b, edges, table) },
        #[cfg(target_arch = "x86_64")]
        crate::simd::Path::Avx2 => unsafe { avx2(v, b, edges, table) },
        _ => count_log_bins(v, b, edges, table),
    }
}

/// The bin k (edges[k] <= a < edges[k + 1]) of lo <= a < the last edge, from a guess.
#[cold]
fn settle(a: f64, mut k: usize, edges: &[f64]) -> usize {
    let nb = edges.len() - 1;
    k = k.min(nb - 1);
    while k > 0 && a < edges[k] {
        k -= 1;
    }
    while k + 1 < nb && a >= edges[k + 1] {
        k += 1;
    }
    k
}

/// Counts of the non-NaN values of `v` in the bins of `b` (see [`LogBins`]) and the number of
/// NaN values. A value on an edge counts in the bin above it. The bin is found from a table
/// estimate of log2 |v| (within 0.003) and settled against the edges, so it is exact with
/// respect to the edges table whatever the rounding of a logarithm.
///
/// # Errors
/// A layout that is not finite and positive, or of more than 2^24 bins.
pub fn log_hist(v: &[f64], b: LogBins) -> Result<(Vec<u64>, u64)> {
    if !(b.lo.is_finite() && b.lo > 0.0) || b.per_decade == 0 || b.nb == 0 || b.nb > 1 << 24 {
        return Err(Error::Value(format!(
            "a log histogram needs lo > 0, per_decade > 0 and 1..=2^24 bins, got {b:?}"
        )));
    }
    let pd = f64::from(b.per_decade);
    let edges: Vec<f64> = (0..=b.nb)
        .map(|k| b.lo * 10f64.powf(k as f64 / pd))
        .collect();
    // log2(1 + j/256) and the secant slope to the next entry: log2 of the mantissa by linear
    // interpolation (error below (1/256)²/(8 ln 2) = 2.8e-6)
    let mut table = [[0f64; 2]; 256];
    for (j, t) in table.iter_mut().enumerate() {
        let (a, b) = (
            (1.0 + j as f64 / 256.0).log2(),
            (1.0 + (j + 1) as f64 / 256.0).log2(),
        );
        *t = [a, b - a];
    }
    let per = v
        .len()
        .div_ceil(parallel::num_threads().max(1))
        .max(1 << 16);
    let parts = parallel::map_chunks(v.len(), per, |r| {
        count_log_bins_on(crate::simd::current(), &v[r], b, &edges, &table)
    });
    let mut total = vec![0u64; b.len()];
    let mut nan = 0;
    for (h, n) in parts {
        nan += n;
        for (t, c) in total.iter_mut().zip(h) {
            *t += c;
        }
    }
    Ok((total, nan))
}

#[cfg(test)]
mod tests {
    use super::order_stats;

    fn sorted(v: &[f64]) -> Vec<f64> {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.iter().map(|x| x + 0.0).collect()
    }

    /// Uniform values in [0, 1) from a seeded LCG.
    fn uniform(mut seed: u64) -> impl FnMut() -> f64 {
        move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn order_stats_match_a_full_sort() {
        let mut next = uniform(3);
        let mut cases: Vec<Vec<f64>> = vec![
            vec![1.0],
            vec![0.0, -0.0, 0.0, -0.0],
            vec![2.5; 5000],
            vec![-3.0; 300_000],
            vec![
                f64::INFINITY,
                f64::NEG_INFINITY,
                0.0,
                1e-300,
                -1e300,
                5e-324,
            ],
        ];
        // continuous, heavy-tailed and signed values, with ties; 3 M values span several chunks
        cases.push(
            (0..3_000_000)
                .map(|_| (next() * 30.0 - 25.0).exp())
                .collect(),
        );
        cases.push((0..200_001).map(|_| (next() - 0.5) * 1e-3).collect());
        cases.push((0..100_000).map(|_| (next() * 8.0).floor() - 4.0).collect());
        // most values equal, the rest spread: the big bucket is narrowed, the others collected
        cases.push(
            (0..400_000)
                .map(|i| if i % 3 == 0 { next() * 1e-9 } else { 0.0 })
                .collect(),
        );
        for v in &cases {
            let s = sorted(v);
            let n = v.len();
            let ks: Vec<usize> = [
                0,
                1,
                n / 1000,
                n / 10,
                n / 2,
                n / 2 + 1,
                n.saturating_sub(2),
                n - 1,
                0,
            ]
            .into_iter()
            .map(|k| k.min(n - 1))
            .collect();
            let got = order_stats(v, &ks).unwrap();
            for (k, g) in ks.iter().zip(&got) {
                assert_eq!(g.to_bits(), s[*k].to_bits(), "n={n} k={k}");
            }
        }
        assert!(order_stats(&[1.0, f64::NAN], &[0]).is_err());
        assert!(order_stats(&[1.0], &[1]).is_err());
        assert!(order_stats(&[], &[]).unwrap().is_empty());
    }

    #[test]
    fn the_copy_and_the_radix_preselection_give_the_same_order_statistics() {
        use super::select_ranks_by;
        let mut next = uniform(11);
        let mut cases: Vec<Vec<f64>> = vec![
            vec![f64::NAN, 0.5, -0.0, f64::NAN, 0.0, -2.0, f64::INFINITY],
            (0..50_000).map(|_| (next() * 30.0 - 25.0).exp()).collect(),
            (0..50_000)
                .map(|i| {
                    if i % 5 == 0 {
                        f64::NAN
                    } else {
                        (next() * 4.0).floor()
                    }
                })
                .collect(),
        ];
        cases.push((0..3000).map(|_| -next()).collect());
        for v in &cases {
            let m = v.iter().filter(|x| !x.is_nan()).count();
            let ks = |m: usize| vec![m - 1, 0, m / 2, m / 2, m / 3, m.saturating_sub(2)];
            let (copied, n1) = select_ranks_by(v, ks, usize::MAX);
            let (radix, n2) = select_ranks_by(v, ks, 0);
            assert_eq!((n1, n2), (v.len() - m, v.len() - m));
            let clean: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
            let s = sorted(&clean);
            let want: Vec<u64> = ks(m).iter().map(|&k| s[k].to_bits()).collect();
            let bits = |x: &[f64]| x.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&copied), want, "copied, {} values", v.len());
            assert_eq!(bits(&radix), want, "radix, {} values", v.len());
        }
    }

    #[test]
    fn log_hist_counts_by_the_edges() {
        use super::{log_hist, LogBins};
        let b = LogBins {
            lo: 1e-3,
            per_decade: 10,
            nb: 60,
            signed: true,
        };
        let edges: Vec<f64> = (0..=60)
            .map(|k| 1e-3 * 10f64.powf(f64::from(k) / 10.0))
            .collect();
        let mut v = vec![0.0, -0.0, 5e-4, f64::NAN, f64::INFINITY, -1e9, 1e3, 1e4];
        for (k, &e) in edges.iter().enumerate().take(60) {
            v.push(e); // on an edge: the bin above
            v.push(-e * 1.000_001);
            let _ = k;
        }
        let (h, nan) = log_hist(&v, b).unwrap();
        assert_eq!(nan, 1);
        assert_eq!(h.len(), 123);
        let z = 61;
        assert_eq!(h[z], 3); // 0, -0, 5e-4
        assert_eq!(h[z + 1 + 60], 3); // inf, 1e3 (the last edge), 1e4
        assert_eq!(h[0], 1); // -1e9
        for k in 0..60 {
            assert_eq!(h[z + 1 + k], 1, "bin {k}");
            assert_eq!(h[z - 1 - k], 1, "bin -{k}");
        }
        assert_eq!(h.iter().sum::<u64>() + nan, v.len() as u64);
        // enough values for the copies of the bins (4 ways): the same counts, 20 times over
        let many: Vec<f64> = (0..20).flat_map(|_| v.iter().copied()).collect();
        let (h20, nan20) = log_hist(&many, b).unwrap();
        assert_eq!(nan20, 20 * nan);
        assert_eq!(h20, h.iter().map(|c| 20 * c).collect::<Vec<_>>());
    }
}
