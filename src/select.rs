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
    if let Some(i) = v.iter().position(|x| x.is_nan()) {
        return Err(Error::Value(format!(
            "order statistics of values holding NaN (at position {i})"
        )));
    }
    let mut out = vec![f64::NAN; ks.len()];
    let ranks: Vec<(usize, u64)> = ks.iter().map(|&k| k as u64).enumerate().collect();
    if !ranks.is_empty() {
        narrow(v, 0, 0, &ranks, (n / 32).max(4096), &mut out);
    }
    Ok(out)
}

/// Resolves `ranks` ((output slot, rank among the values whose key starts with the `bits`-bit
/// `prefix`)) into `out`: one counting pass over the next 16 key bits, then the values of
/// each small wanted bucket copied out and multi-selected; a large one narrowed again.
fn narrow(
    v: &[f64],
    prefix: u64,
    bits: u32,
    ranks: &[(usize, u64)],
    small: usize,
    out: &mut [f64],
) {
    let shift = 64 - bits - BITS;
    let inside = move |k: u64| bits == 0 || k >> (64 - bits) == prefix;
    let digit = move |k: u64| ((k >> shift) as usize) & (BUCKETS - 1);
    // one chunk per thread for the counts (a 512 KiB histogram each: per 1 MiB chunk they
    // would add half the input)
    let per = v
        .len()
        .div_ceil(parallel::num_threads().max(1))
        .max(1 << 16);
    // bucket counts per chunk, merged
    let parts = parallel::map_chunks(v.len(), per, |r| {
        let mut h = vec![0u64; BUCKETS];
        for &x in &v[r] {
            let k = key(x);
            if inside(k) {
                h[digit(k)] += 1;
            }
        }
        h
    });
    let mut hist = vec![0u64; BUCKETS];
    for h in &parts {
        for (a, &b) in hist.iter_mut().zip(h) {
            *a += b;
        }
    }
    drop(parts);
    let mut below = vec![0u64; BUCKETS];
    let mut acc = 0u64;
    for (b, &c) in below.iter_mut().zip(&hist) {
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
            narrow(v, full, bits + BITS, &here, small, out);
        } else {
            collect.push(b);
        }
    }
    if collect.is_empty() {
        return;
    }
    // the small wanted buckets' values, straight into buffers of their exact size (one
    // thread: per-thread parts would hold them twice), then each bucket's ranks
    let mut slot = vec![0u32; BUCKETS];
    for (s, &b) in collect.iter().enumerate() {
        slot[b] = s as u32 + 1;
    }
    let mut vals: Vec<Vec<f64>> = collect
        .iter()
        .map(|&b| Vec::with_capacity(hist[b] as usize))
        .collect();
    for &x in v {
        let k = key(x);
        if inside(k) {
            let s = slot[digit(k)] as usize;
            if s != 0 {
                vals[s - 1].push(x);
            }
        }
    }
    for (vb, &b) in vals.iter_mut().zip(&collect) {
        let mut local: Vec<usize> = ranks
            .iter()
            .filter(|&&(_, r)| find(r) == b)
            .map(|&(_, r)| (r - below[b]) as usize)
            .collect();
        local.sort_unstable();
        local.dedup();
        let mut got = Vec::new();
        multiselect(vb, &local, 0, &mut got);
        for &(s, r) in ranks.iter().filter(|&&(_, r)| find(r) == b) {
            let want = (r - below[b]) as usize;
            if let Some(&(_, x)) = got.iter().find(|&&(j, _)| j == want) {
                out[s] = x + 0.0;
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::order_stats;

    fn sorted(v: &[f64]) -> Vec<f64> {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.iter().map(|x| x + 0.0).collect()
    }

    #[test]
    fn order_stats_match_a_full_sort() {
        let mut seed = 3u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
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
}
