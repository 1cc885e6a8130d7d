//! Borrowed views of caller memory with any shape, byte strides, alignment and byte order.
//!
//! The last axis is the class axis; every other axis is flattened into "rows" by index
//! arithmetic, never by copying. A row whose elements are contiguous, aligned and in native
//! byte order is read in place; any other row is gathered into a per-thread scratch buffer of
//! one row (bounded memory, whatever the array's size).

use crate::error::{Error, Result};
use crate::simd::{Elem, BF16, F16};
use std::marker::PhantomData;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }
    pub fn parse(tag: &str) -> Result<DType> {
        match tag {
            "f32" => Ok(DType::F32),
            "f64" => Ok(DType::F64),
            "f16" => Ok(DType::F16),
            "bf16" => Ok(DType::BF16),
            _ => Err(Error::Type(format!(
                "unsupported dtype tag {tag:?}; accepted dtypes: float32, float64, float16, bfloat16"
            ))),
        }
    }
}

/// A storage type a view can hold.
pub trait Storage: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    #[must_use]
    fn bswap(self) -> Self;
}

impl Storage for f32 {
    const DTYPE: DType = DType::F32;
    fn bswap(self) -> Self {
        f32::from_bits(self.to_bits().swap_bytes())
    }
}
impl Storage for f64 {
    const DTYPE: DType = DType::F64;
    fn bswap(self) -> Self {
        f64::from_bits(self.to_bits().swap_bytes())
    }
}
impl Storage for F16 {
    const DTYPE: DType = DType::F16;
    fn bswap(self) -> Self {
        F16(self.0.swap_bytes())
    }
}
impl Storage for BF16 {
    const DTYPE: DType = DType::BF16;
    fn bswap(self) -> Self {
        BF16(self.0.swap_bytes())
    }
}

/// Maps a flat row number to the byte offset of its first element.
#[derive(Clone, Debug)]
pub(crate) struct RowIndex {
    dims: Vec<usize>,
    strides: Vec<isize>,
    /// Some(stride) when all leading axes collapse to one uniform stride.
    uniform: Option<isize>,
    pub rows: usize,
}

impl RowIndex {
    pub fn new(dims: &[usize], strides: &[isize]) -> RowIndex {
        let rows = dims.iter().product();
        // Collapse like NumPy's reshape-without-copy: walk from the innermost leading axis.
        let mut uniform = Some(0isize);
        let mut expected: Option<isize> = None;
        for (&d, &s) in dims.iter().zip(strides).rev() {
            if d == 1 {
                continue;
            }
            match expected {
                None => {
                    uniform = Some(s);
                    expected = Some(s * d as isize);
                }
                Some(e) if e == s => expected = Some(s * d as isize),
                Some(_) => {
                    uniform = None;
                    break;
                }
            }
        }
        RowIndex {
            dims: dims.to_vec(),
            strides: strides.to_vec(),
            uniform,
            rows,
        }
    }

    #[inline]
    pub fn offset(&self, mut i: usize) -> isize {
        if let Some(s) = self.uniform {
            return i as isize * s;
        }
        let mut off = 0isize;
        for (&d, &s) in self.dims.iter().zip(&self.strides).rev() {
            off += (i % d) as isize * s;
            i /= d;
        }
        off
    }

    /// The N-d position of a flat row number (for error messages).
    pub fn position(&self, mut i: usize) -> Vec<usize> {
        let mut p = vec![0; self.dims.len()];
        for (k, &d) in self.dims.iter().enumerate().rev() {
            if d > 0 {
                p[k] = i % d;
                i /= d;
            }
        }
        p
    }
}

/// A float array `[..., C]`.
#[derive(Clone, Debug)]
pub struct View<'a> {
    ptr: *const u8,
    pub dtype: DType,
    shape: Vec<usize>,
    col_stride: isize,
    pub(crate) index: RowIndex,
    swap: bool,
    /// Rows can be borrowed as slices.
    direct: bool,
    /// Rows follow each other with no gap: runs of rows can be borrowed as one slice.
    packed: bool,
    _life: PhantomData<&'a [u8]>,
}

// SAFETY: a View only reads through its pointer; the caller of `View::new` guarantees the
// memory stays valid for 'a (the bindings hold the array object for the whole call).
unsafe impl Send for View<'_> {}
unsafe impl Sync for View<'_> {}

impl<'a> View<'a> {
    /// # Safety
    /// `ptr` with `shape` and byte `strides` must address readable memory for `'a` (a NumPy
    /// array's data, or a slice). Zero, negative and unaligned strides are all allowed.
    pub unsafe fn new(
        ptr: *const u8,
        dtype: DType,
        shape: &[usize],
        strides: &[isize],
        swap: bool,
    ) -> Result<View<'a>> {
        if shape.len() != strides.len() {
            return Err(Error::Shape("shape and strides differ in length".into()));
        }
        let (shape, strides) = if shape.is_empty() {
            (vec![1usize], vec![dtype.size() as isize])
        } else {
            (shape.to_vec(), strides.to_vec())
        };
        let nd = shape.len();
        let size = dtype.size() as isize;
        let col_stride = strides[nd - 1];
        let index = RowIndex::new(&shape[..nd - 1], &strides[..nd - 1]);
        let aligned = (ptr as usize).is_multiple_of(dtype.size())
            && strides[..nd - 1].iter().all(|s| s % size == 0);
        let direct = !swap && aligned && (col_stride == size || shape[nd - 1] <= 1);
        let row_bytes = shape[nd - 1] as isize * size;
        let packed = direct
            && col_stride == size
            && matches!(index.uniform, Some(s) if s == row_bytes || index.rows <= 1);
        Ok(View {
            ptr,
            dtype,
            shape,
            col_stride,
            index,
            swap,
            direct,
            packed,
            _life: PhantomData,
        })
    }

    /// A C-contiguous view of a slice, `rows x cols`.
    ///
    /// # Panics
    /// If `data.len() != rows * cols`.
    pub fn from_slice<T: Storage>(data: &'a [T], rows: usize, cols: usize) -> View<'a> {
        assert_eq!(data.len(), rows * cols, "slice length must be rows * cols");
        let s = std::mem::size_of::<T>() as isize;
        // SAFETY: the slice is valid for 'a and holds rows * cols contiguous elements.
        unsafe {
            View::new(
                data.as_ptr() as *const u8,
                T::DTYPE,
                &[rows, cols],
                &[cols as isize * s, s],
                false,
            )
            .expect("consistent shape")
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    pub fn rows(&self) -> usize {
        self.index.rows
    }
    pub fn lead_shape(&self) -> &[usize] {
        &self.shape[..self.shape.len() - 1]
    }
    pub fn is_direct(&self) -> bool {
        self.direct
    }
    pub(crate) fn position(&self, row: usize) -> Vec<usize> {
        self.index.position(row)
    }

    #[inline]
    fn elem_ptr(&self, row: usize, col: usize) -> *const u8 {
        self.ptr
            .wrapping_offset(self.index.offset(row) + col as isize * self.col_stride)
    }

    /// Element (row, col) as `T` (which must match the dtype).
    #[inline]
    pub(crate) fn get<T: Storage>(&self, row: usize, col: usize) -> T {
        debug_assert_eq!(T::DTYPE, self.dtype);
        // SAFETY: row < rows and col < cols are checked by callers; the view's constructor
        // guarantees the address is readable; read_unaligned tolerates any alignment.
        let v = unsafe { (self.elem_ptr(row, col) as *const T).read_unaligned() };
        if self.swap {
            v.bswap()
        } else {
            v
        }
    }

    /// Rows `i..i + count` as one slice, if the rows are packed and in range.
    #[inline]
    pub(crate) fn packed_rows<T: Storage>(&self, i: usize, count: usize) -> Option<&'a [T]> {
        debug_assert_eq!(T::DTYPE, self.dtype);
        if !self.packed || i + count > self.rows() {
            return None;
        }
        // SAFETY: packed rows are contiguous, aligned and native; rows i..i+count exist, so
        // their count * cols elements are readable for 'a.
        Some(unsafe {
            std::slice::from_raw_parts(self.elem_ptr(i, 0) as *const T, count * self.cols())
        })
    }

    /// Rows `i..` as (pointer to row i, row stride in elements) when they can be read in place
    /// by the row kernels: contiguous, aligned, native rows a uniform non-negative stride apart.
    #[inline]
    pub(crate) fn row_run<T: Storage>(&self, i: usize) -> Option<(*const T, usize)> {
        debug_assert_eq!(T::DTYPE, self.dtype);
        let size = self.dtype.size() as isize;
        match self.index.uniform {
            Some(s) if self.direct && s >= 0 && s % size == 0 && i < self.rows() => {
                Some((self.elem_ptr(i, 0) as *const T, (s / size) as usize))
            }
            _ => None,
        }
    }

    /// Rows `i..` as (pointer to row i, column stride in elements) when the input is column
    /// major there (Fortran order, or a transposed array): row i + l at offset l of every
    /// column, aligned and native, so short rows load a column of W rows with one vector load.
    #[inline]
    pub(crate) fn col_run<T: Storage>(&self, i: usize) -> Option<(*const T, usize)> {
        debug_assert_eq!(T::DTYPE, self.dtype);
        let size = self.dtype.size() as isize;
        let aligned = (self.ptr as usize).is_multiple_of(self.dtype.size());
        let cs = self.col_stride;
        match self.index.uniform {
            Some(s) if !self.swap && aligned && s == size && cs > 0 && cs % size == 0 => {
                (i < self.rows()).then(|| (self.elem_ptr(i, 0) as *const T, (cs / size) as usize))
            }
            _ => None,
        }
    }

    /// Element j of the row that starts at `base` (any alignment and byte order).
    #[inline(always)]
    fn at<T: Storage>(&self, base: *const u8, j: usize) -> T {
        // SAFETY: callers pass the start of a row of this view and j < cols; the constructor's
        // contract makes it readable, and read_unaligned tolerates any alignment.
        let v = unsafe {
            (base.wrapping_offset(j as isize * self.col_stride) as *const T).read_unaligned()
        };
        if self.swap {
            v.bswap()
        } else {
            v
        }
    }

    /// Copies rows `i..i + n` into `dst` packed row-major (`dst[r·C + j]`): the staging of a
    /// bounded tile for rows the kernels cannot read in place.
    pub(crate) fn copy_rows<T: Storage>(&self, i: usize, n: usize, dst: &mut Vec<T>) {
        debug_assert_eq!(T::DTYPE, self.dtype);
        let c = self.cols();
        dst.clear();
        if let (Some((p, cs)), true) = (self.col_run::<T>(i), n > 0 && c > 0) {
            // Column major: each column's n values are one run (one or two cache lines for
            // a 16-row tile), columns cs elements apart. A column stride of a page or more
            // defeats the hardware prefetchers (they stay within a page), so every run was a
            // full memory latency: the run COL_AHEAD columns on is prefetched as each one is
            // copied, which keeps enough misses in flight (Fortran-order cross_entropy at
            // C = 32000, one thread: 75 -> 38 ms for 128 MiB). Consecutive columns fill the
            // same n destination lines, so the writes stay in L1.
            dst.reserve(n * c);
            let d = dst.as_mut_ptr();
            for j in 0..c {
                #[cfg(target_arch = "x86_64")]
                {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    const COL_AHEAD: usize = 64;
                    let size = std::mem::size_of::<T>();
                    let q = p.wrapping_add((j + COL_AHEAD) * cs) as *const i8;
                    // SAFETY: a prefetch never faults, whatever the address.
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(q);
                        _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(n * size - 1));
                    }
                }
                // SAFETY: `col_run` checked alignment and order, so rows i..i+n of column j
                // are the n elements from p + j·cs; dst has room for n·c (reserved above).
                unsafe {
                    let col = p.add(j * cs);
                    for r in 0..n {
                        d.add(r * c + j).write(col.add(r).read());
                    }
                }
            }
            // SAFETY: the loop above wrote every one of the n·c elements.
            unsafe { dst.set_len(n * c) };
            return;
        }
        for r in i..i + n {
            let base = self.elem_ptr(r, 0);
            if self.direct {
                // SAFETY: direct rows are contiguous, aligned and native (see `row`).
                dst.extend_from_slice(unsafe { std::slice::from_raw_parts(base as *const T, c) });
            } else {
                dst.extend((0..c).map(|j| self.at::<T>(base, j)));
            }
        }
    }

    /// Copies rows `i..i + n` into `dst` column-major with column stride `cs >= n`
    /// (`dst[j·cs + r]`; rows n..cs padded with a copy of the first element): a short-row tile
    /// whose columns the lanes kernels load without gathers.
    pub(crate) fn copy_cols<T: Storage>(&self, i: usize, n: usize, cs: usize, dst: &mut Vec<T>) {
        debug_assert_eq!(T::DTYPE, self.dtype);
        debug_assert!(cs >= n);
        let c = self.cols();
        dst.clear();
        if n == 0 || c == 0 {
            return;
        }
        let first = self.at::<T>(self.elem_ptr(i, 0), 0);
        dst.resize(cs * c, first);
        for r in 0..n {
            let base = self.elem_ptr(i + r, 0);
            if self.direct {
                // SAFETY: as in `copy_rows`.
                let row = unsafe { std::slice::from_raw_parts(base as *const T, c) };
                for (j, &v) in row.iter().enumerate() {
                    dst[j * cs + r] = v;
                }
            } else {
                for j in 0..c {
                    dst[j * cs + r] = self.at::<T>(base, j);
                }
            }
        }
    }

    /// Elements `j0..j1` of row `i` as f32: borrowed for direct float32 rows, else widened
    /// (any layout, byte order, 16/32/64-bit dtype) into `buf`.
    pub(crate) fn f32_run<'s>(
        &'s self,
        i: usize,
        j0: usize,
        j1: usize,
        buf: &'s mut Vec<f32>,
    ) -> &'s [f32] {
        let base = self.elem_ptr(i, 0);
        if self.dtype == DType::F32 && self.direct {
            // SAFETY: direct rows are contiguous, aligned and native; j1 <= cols.
            return unsafe { std::slice::from_raw_parts((base as *const f32).add(j0), j1 - j0) };
        }
        if self.direct && matches!(self.dtype, DType::F16 | DType::BF16) {
            // SAFETY: as above, for the 16-bit element type the dtype names.
            unsafe {
                match self.dtype {
                    DType::F16 => widen_into(
                        std::slice::from_raw_parts((base as *const F16).add(j0), j1 - j0),
                        buf,
                    ),
                    _ => widen_into(
                        std::slice::from_raw_parts((base as *const BF16).add(j0), j1 - j0),
                        buf,
                    ),
                }
            }
            return buf;
        }
        buf.clear();
        match self.dtype {
            DType::F32 => buf.extend((j0..j1).map(|j| self.at::<f32>(base, j))),
            DType::F64 => buf.extend((j0..j1).map(|j| self.at::<f64>(base, j) as f32)),
            DType::F16 => buf
                .extend((j0..j1).map(|j| half::f16::from_bits(self.at::<F16>(base, j).0).to_f32())),
            DType::BF16 => buf.extend(
                (j0..j1).map(|j| f32::from_bits((self.at::<BF16>(base, j).0 as u32) << 16)),
            ),
        }
        buf
    }

    /// Flat elements `e0..e1` (across rows) as f32 when the rows are packed: borrowed for
    /// float32, widened into `buf` by one typed loop otherwise; None for unpacked views.
    pub(crate) fn flat_f32<'s>(
        &'s self,
        e0: usize,
        e1: usize,
        buf: &'s mut Vec<f32>,
    ) -> Option<&'s [f32]> {
        macro_rules! flat {
            ($t:ty) => {
                &self.packed_rows::<$t>(0, self.rows())?[e0..e1]
            };
        }
        Some(match self.dtype {
            DType::F32 => flat!(f32),
            DType::F64 => {
                let s = flat!(f64);
                buf.clear();
                buf.extend(s.iter().map(|&v| v as f32));
                buf
            }
            DType::F16 => {
                widen_into(flat!(F16), buf);
                buf
            }
            DType::BF16 => {
                widen_into(flat!(BF16), buf);
                buf
            }
        })
    }

    /// Whether elementwise operations take flat elements from row `i` on a whole chunk at a
    /// time ([`View::chunk_f32`]): packed rows (read in place, or widened in one pass) and
    /// column-major rows (staged as whole rows); other layouts are staged in short segments.
    pub(crate) fn whole_chunks(&self, i: usize) -> bool {
        self.packed
            || match self.dtype {
                DType::F32 => self.col_run::<f32>(i).is_some(),
                DType::F16 => self.col_run::<F16>(i).is_some(),
                DType::BF16 => self.col_run::<BF16>(i).is_some(),
                DType::F64 => false,
            }
    }

    /// Flat elements `e0..e1` of a 16/32-bit view as f32: borrowed when the rows are packed
    /// float32, else widened or staged into `buf` (see [`View::stage_flat_f32`]).
    pub(crate) fn chunk_f32<'s>(
        &'s self,
        e0: usize,
        e1: usize,
        s: &mut FlatScratch,
        buf: &'s mut Vec<f32>,
    ) -> &'s [f32] {
        if self.packed {
            if let Some(f) = self.flat_f32(e0, e1, buf) {
                return f;
            }
            unreachable!("packed rows are a flat run");
        }
        self.stage_flat_f32(e0, e1, s, buf);
        buf
    }

    /// Flat elements `e0..e1` (row-major logical order, across rows) of a 16/32-bit view as
    /// f32 in `buf`, whatever the layout: the chunk staging of elementwise operations, which
    /// then run the kernel packed inputs take over the same elements (so every layout gives
    /// the same bits). Column-major rows are staged through [`View::copy_rows`] (whole rows,
    /// each column's run read once, prefetched); other rows are walked run by run.
    pub(crate) fn stage_flat_f32(
        &self,
        e0: usize,
        e1: usize,
        s: &mut FlatScratch,
        buf: &mut Vec<f32>,
    ) {
        buf.clear();
        let c = self.cols();
        if e1 <= e0 || c == 0 {
            return;
        }
        let (i0, i1) = (e0 / c, e1.div_ceil(c));
        let skip = e0 - i0 * c;
        // whole rows only while a row is no longer than the run (at most two partial rows
        // staged in excess); a longer column-major row (a transposed [N, 2] array is [2, N])
        // is walked below, or every chunk would copy its whole row
        let cols = c <= e1 - e0;
        match self.dtype {
            DType::F32 if cols && self.col_run::<f32>(i0).is_some() => {
                self.copy_rows::<f32>(i0, i1 - i0, buf);
                buf.truncate(skip + (e1 - e0));
                buf.drain(..skip);
                return;
            }
            DType::F16 if cols && self.col_run::<F16>(i0).is_some() => {
                self.copy_rows::<F16>(i0, i1 - i0, &mut s.f16);
                widen_into(&s.f16[skip..skip + (e1 - e0)], buf);
                return;
            }
            DType::BF16 if cols && self.col_run::<BF16>(i0).is_some() => {
                self.copy_rows::<BF16>(i0, i1 - i0, &mut s.bf16);
                widen_into(&s.bf16[skip..skip + (e1 - e0)], buf);
                return;
            }
            _ => {}
        }
        // rows read in place a uniform stride apart (rows[::2], x[:, :C] of a wider array, a
        // broadcast row): their runs packed by plain copies, then widened in one pass
        match self.dtype {
            DType::F32 if self.stage_row_runs::<f32>(e0, e1, buf) => return,
            DType::F16 if self.stage_row_runs::<F16>(e0, e1, &mut s.f16) => {
                widen_into(&s.f16, buf);
                return;
            }
            DType::BF16 if self.stage_row_runs::<BF16>(e0, e1, &mut s.bf16) => {
                widen_into(&s.bf16, buf);
                return;
            }
            _ => {}
        }
        let mut e = e0;
        while e < e1 {
            let (i, j0) = (e / c, e % c);
            let j1 = c.min(j0 + (e1 - e));
            buf.extend_from_slice(self.f32_run(i, j0, j1, &mut s.run));
            e += j1 - j0;
        }
    }

    /// Flat elements `e0..e1` packed into `dst` by copies of row runs, when the rows can be
    /// read in place ([`View::row_run`]); false (and `dst` untouched) otherwise.
    fn stage_row_runs<T: Storage>(&self, e0: usize, e1: usize, dst: &mut Vec<T>) -> bool {
        let c = self.cols();
        let i0 = e0 / c;
        let Some((p, st)) = self.row_run::<T>(i0) else {
            return false;
        };
        let n = e1 - e0;
        dst.clear();
        dst.reserve(n);
        let d = dst.as_mut_ptr();
        let (mut q, mut j0, mut k) = (p, e0 % c, 0);
        while k < n {
            let len = (c - j0).min(n - k);
            // SAFETY: `row_run` gave row i0's start and a stride that holds for every row
            // after it; q walks rows i0.. (all exist: e0 + k < e1 <= rows·c), j0 + len <= c,
            // and dst has room for n elements (reserved above).
            unsafe { std::ptr::copy_nonoverlapping(q.add(j0), d.add(k), len) };
            q = q.wrapping_add(st); // (past the last row after the last run: never read)
            k += len;
            j0 = 0;
        }
        // SAFETY: the loop wrote all n elements.
        unsafe { dst.set_len(n) };
        true
    }

    /// Row `i` as f64: borrowed for direct float64 rows, else widened (any layout, byte order
    /// and dtype) into `buf` by one typed loop.
    pub(crate) fn f64_run<'s>(&'s self, i: usize, buf: &'s mut Vec<f64>) -> &'s [f64] {
        let (base, c) = (self.elem_ptr(i, 0), self.cols());
        if self.dtype == DType::F64 && self.direct {
            // SAFETY: direct rows are contiguous, aligned and native.
            return unsafe { std::slice::from_raw_parts(base as *const f64, c) };
        }
        buf.clear();
        if self.direct {
            // in place: one widening loop over the slice (it vectorises)
            // SAFETY: direct rows are contiguous, aligned and native, c elements readable.
            unsafe {
                match self.dtype {
                    DType::F64 => unreachable!("returned above"),
                    DType::F32 => buf.extend(
                        std::slice::from_raw_parts(base as *const f32, c)
                            .iter()
                            .map(|&v| f64::from(v)),
                    ),
                    DType::F16 => buf.extend(
                        std::slice::from_raw_parts(base as *const F16, c)
                            .iter()
                            .map(|v| f64::from(half::f16::from_bits(v.0).to_f32())),
                    ),
                    DType::BF16 => buf.extend(
                        std::slice::from_raw_parts(base as *const BF16, c)
                            .iter()
                            .map(|v| f64::from(f32::from_bits(u32::from(v.0) << 16))),
                    ),
                }
            }
            return buf;
        }
        match self.dtype {
            DType::F64 => buf.extend((0..c).map(|j| self.at::<f64>(base, j))),
            DType::F32 => buf.extend((0..c).map(|j| f64::from(self.at::<f32>(base, j)))),
            DType::F16 => buf.extend(
                (0..c).map(|j| f64::from(half::f16::from_bits(self.at::<F16>(base, j).0).to_f32())),
            ),
            DType::BF16 => {
                buf.extend((0..c).map(|j| {
                    f64::from(f32::from_bits(u32::from(self.at::<BF16>(base, j).0) << 16))
                }));
            }
        }
        buf
    }

    /// Row `i` as a slice: borrowed in place when possible, else gathered into `scratch`.
    #[inline]
    pub(crate) fn row<'s, T: Storage>(&'s self, i: usize, scratch: &'s mut Vec<T>) -> &'s [T] {
        debug_assert_eq!(T::DTYPE, self.dtype);
        let c = self.cols();
        if self.direct {
            // SAFETY: direct means native order, aligned and contiguous along the row, and the
            // constructor's contract makes the c elements readable for 'a.
            return unsafe { std::slice::from_raw_parts(self.elem_ptr(i, 0) as *const T, c) };
        }
        scratch.clear();
        scratch.extend((0..c).map(|j| self.get::<T>(i, j)));
        scratch
    }
}

/// `buf` = `x` widened to f32 by the vector kernel of this CPU.
fn widen_into<T: Elem>(x: &[T], buf: &mut Vec<f32>) {
    buf.clear();
    buf.resize(x.len(), 0.0);
    crate::kernel::widen::<T>(crate::simd::current(), x, buf);
}

/// Reused buffers of [`View::stage_flat_f32`] (one per thread and call).
#[derive(Default)]
pub(crate) struct FlatScratch {
    f16: Vec<F16>,
    bf16: Vec<BF16>,
    run: Vec<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntType {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
}

impl IntType {
    pub fn size(self) -> usize {
        match self {
            IntType::I8 | IntType::U8 => 1,
            IntType::I16 | IntType::U16 => 2,
            IntType::I32 | IntType::U32 => 4,
            IntType::I64 | IntType::U64 => 8,
        }
    }
}

/// An integer array of class indices, `[...]` matching the logits' leading shape.
#[derive(Clone, Debug)]
pub struct IntView<'a> {
    ptr: *const u8,
    ty: IntType,
    shape: Vec<usize>,
    index: RowIndex,
    _life: PhantomData<&'a [u8]>,
}

// SAFETY: read-only access to memory the caller keeps alive for 'a (see `IntView::new`).
unsafe impl Send for IntView<'_> {}
unsafe impl Sync for IntView<'_> {}

impl<'a> IntView<'a> {
    /// # Safety
    /// As for [`View::new`]; native byte order.
    pub unsafe fn new(ptr: *const u8, ty: IntType, shape: &[usize], strides: &[isize]) -> Self {
        IntView {
            ptr,
            ty,
            shape: shape.to_vec(),
            index: RowIndex::new(shape, strides),
            _life: PhantomData,
        }
    }

    pub fn from_slice(data: &'a [i64]) -> IntView<'a> {
        // SAFETY: a contiguous slice valid for 'a.
        unsafe {
            IntView::new(
                data.as_ptr() as *const u8,
                IntType::I64,
                &[data.len()],
                &[8],
            )
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn len(&self) -> usize {
        self.index.rows
    }
    pub fn is_empty(&self) -> bool {
        self.index.rows == 0
    }

    /// Targets `i..i + n` as a slice, if they are packed native int64.
    pub(crate) fn packed_i64(&self, i: usize, n: usize) -> Option<&'a [i64]> {
        let packed = self.ty == IntType::I64
            && (self.ptr as usize).is_multiple_of(8)
            && (self.index.uniform == Some(8) || self.index.rows <= 1);
        if !packed || i + n > self.index.rows {
            return None;
        }
        // SAFETY: packed, aligned int64 targets; rows i..i+n exist and are readable for 'a.
        Some(unsafe { std::slice::from_raw_parts((self.ptr as *const i64).add(i), n) })
    }

    /// Targets `i..i + n` as int64: borrowed when packed native int64, else widened into
    /// `buf`. A u64 above i64::MAX becomes a value that is out of range for any C and is not
    /// `ignore` (so the kernels leave its row to the row kernel, which reports the true value).
    pub(crate) fn to_i64<'s>(
        &'s self,
        i: usize,
        n: usize,
        ignore: i64,
        buf: &'s mut Vec<i64>,
    ) -> &'s [i64] {
        if let Some(s) = self.packed_i64(i, n) {
            return s;
        }
        let big = if ignore == i64::MAX {
            i64::MAX - 1
        } else {
            i64::MAX
        };
        buf.clear();
        // One match on the type, then a tight loop (uniform strides: one add per target).
        macro_rules! widen {
            ($t:ty, $f:expr) => {{
                let f = $f;
                match self.index.uniform {
                    Some(s) => {
                        let p = self.ptr.wrapping_offset(i as isize * s);
                        buf.extend((0..n).map(|k| {
                            // SAFETY: rows i..i+n exist (callers), so each address is readable.
                            let v = unsafe {
                                (p.wrapping_offset(k as isize * s) as *const $t).read_unaligned()
                            };
                            f(v)
                        }));
                    }
                    None => buf.extend((i..i + n).map(|r| {
                        let p = self.ptr.wrapping_offset(self.index.offset(r));
                        // SAFETY: as above.
                        f(unsafe { (p as *const $t).read_unaligned() })
                    })),
                }
            }};
        }
        match self.ty {
            IntType::I8 => widen!(i8, |v: i8| v as i64),
            IntType::I16 => widen!(i16, |v: i16| v as i64),
            IntType::I32 => widen!(i32, |v: i32| v as i64),
            IntType::I64 => widen!(i64, |v: i64| v),
            IntType::U8 => widen!(u8, |v: u8| v as i64),
            IntType::U16 => widen!(u16, |v: u16| v as i64),
            IntType::U32 => widen!(u32, |v: u32| v as i64),
            IntType::U64 => widen!(u64, |v: u64| i64::try_from(v).unwrap_or(big)),
        }
        buf
    }

    /// Target of flat row `i`, widened so that every u64 and i64 value is exact.
    #[inline]
    pub fn get(&self, i: usize) -> i128 {
        let p = self.ptr.wrapping_offset(self.index.offset(i));
        // SAFETY: i < len is checked by callers; IntView::new's contract makes it readable.
        unsafe {
            match self.ty {
                IntType::I8 => (p as *const i8).read_unaligned() as i128,
                IntType::I16 => (p as *const i16).read_unaligned() as i128,
                IntType::I32 => (p as *const i32).read_unaligned() as i128,
                IntType::I64 => (p as *const i64).read_unaligned() as i128,
                IntType::U8 => p.read_unaligned() as i128,
                IntType::U16 => (p as *const u16).read_unaligned() as i128,
                IntType::U32 => (p as *const u32).read_unaligned() as i128,
                IntType::U64 => (p as *const u64).read_unaligned() as i128,
            }
        }
    }
}

/// Checks that targets `[...]` fit logits `[..., C]`.
pub fn check_target_shape(x: &View, t_shape: &[usize], what: &str) -> Result<()> {
    if x.lead_shape() != t_shape {
        return Err(Error::Shape(format!(
            "{what} shape {:?} does not match input shape {:?}: expected {:?} (the input's \
             shape without its last, class axis)",
            t_shape,
            x.shape(),
            x.lead_shape()
        )));
    }
    Ok(())
}
