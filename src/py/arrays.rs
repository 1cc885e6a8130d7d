//! NumPy arrays -> core views, without copying. The Python layer (`fastnll._arrays`) has
//! already turned bfloat16/float16 into uint16 views and byte-swapped arrays into native-order
//! views with `swap = true`; here the raw pointer, shape and byte strides are read.

use crate::tensor::{DType, IntType, IntView, View};
use numpy::npyffi::_PyArray_GET_ITEM_DATA;
use numpy::{
    Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadwriteArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

fn data_ptr(a: &Bound<'_, PyUntypedArray>) -> *const u8 {
    // SAFETY: `a` is a live ndarray (checked by the extraction) and we hold the GIL.
    unsafe { (*_PyArray_GET_ITEM_DATA(a.as_array_ptr())).data as *const u8 }
}

/// A float view of `a` read in place. The array must outlive the view (the caller holds it).
pub fn float_view<'a>(
    a: &'a Bound<'_, PyUntypedArray>,
    tag: &str,
    swap: bool,
) -> PyResult<View<'a>> {
    let dtype = DType::parse(tag).map_err(|e| PyTypeError::new_err(e.to_string()))?;
    let d = a.dtype();
    let kind_ok = match dtype {
        DType::F32 | DType::F64 => d.kind() == b'f',
        DType::F16 | DType::BF16 => d.kind() == b'u' || d.kind() == b'f' || d.kind() == b'V',
    };
    if !kind_ok || d.itemsize() != dtype.size() {
        return Err(PyTypeError::new_err(format!(
            "internal: array of dtype kind {:?} and itemsize {} passed as {tag}",
            d.kind() as char,
            d.itemsize()
        )));
    }
    // SAFETY: pointer, shape and strides come from the same live ndarray, which NumPy
    // guarantees addresses readable memory for every index in its shape.
    unsafe { View::new(data_ptr(a), dtype, a.shape(), a.strides(), swap) }
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// An integer target view (native byte order; the Python layer ensures it).
pub fn int_view<'a>(a: &'a Bound<'_, PyUntypedArray>) -> PyResult<IntView<'a>> {
    let d = a.dtype();
    let ty = match (d.kind(), d.itemsize()) {
        (b'i', 1) => IntType::I8,
        (b'i', 2) => IntType::I16,
        (b'i', 4) => IntType::I32,
        (b'i', 8) => IntType::I64,
        (b'u', 1) => IntType::U8,
        (b'u', 2) => IntType::U16,
        (b'u', 4) => IntType::U32,
        (b'u', 8) => IntType::U64,
        (k, s) => {
            return Err(PyTypeError::new_err(format!(
                "target must hold integer class indices, got dtype kind {:?} size {s}",
                k as char
            )))
        }
    };
    if d.is_native_byteorder() == Some(false) {
        return Err(PyValueError::new_err(
            "internal: target must be in native byte order",
        ));
    }
    // SAFETY: as in `float_view`.
    Ok(unsafe { IntView::new(data_ptr(a), ty, a.shape(), a.strides()) })
}

/// A writable float output allocated by the Python layer, borrowed through rust-numpy's
/// dynamic borrow checking (so it cannot alias another Rust borrow of the same array).
pub enum OutBuf<'py> {
    F32(PyReadwriteArrayDyn<'py, f32>),
    F64(PyReadwriteArrayDyn<'py, f64>),
}

pub fn out_buf<'py>(a: &Bound<'py, PyUntypedArray>) -> PyResult<OutBuf<'py>> {
    if let Ok(g) = rw::<f32>(a) {
        return Ok(OutBuf::F32(g));
    }
    rw::<f64>(a).map(OutBuf::F64)
}

/// A writable array of element type `T`.
pub fn rw<'py, T: Element>(
    a: &Bound<'py, PyUntypedArray>,
) -> PyResult<PyReadwriteArrayDyn<'py, T>> {
    let arr = a
        .cast::<PyArrayDyn<T>>()
        .map_err(|_| PyValueError::new_err("internal: output array of the wrong dtype"))?;
    arr.try_readwrite()
        .map_err(|e| PyValueError::new_err(format!("internal: output array not writable: {e}")))
}

/// The contiguous elements of a writable array.
pub fn contig<'a, T: Element>(g: &'a mut PyReadwriteArrayDyn<'_, T>) -> PyResult<&'a mut [T]> {
    g.as_slice_mut()
        .map_err(|_| PyValueError::new_err("internal: output must be C-contiguous"))
}

/// A contiguous float64 vector (weights, values to rank): read in place when aligned and in
/// native byte order, else copied (an unpickled array can be misaligned).
pub fn f64_slice<'a>(a: &'a Bound<'_, PyUntypedArray>) -> PyResult<std::borrow::Cow<'a, [f64]>> {
    let d = a.dtype();
    if !a.is_c_contiguous() || d.kind() != b'f' || d.itemsize() != 8 || a.ndim() != 1 {
        return Err(PyValueError::new_err(
            "internal: expected a 1-d C-contiguous float64 array",
        ));
    }
    let p = data_ptr(a) as *const f64;
    let swap = d.is_native_byteorder() == Some(false);
    if !swap && (p as usize).is_multiple_of(std::mem::align_of::<f64>()) {
        // SAFETY: a contiguous, aligned 1-d native float64 array that the caller holds for
        // the call.
        return Ok(std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(p, a.len())
        }));
    }
    // SAFETY: a.len() contiguous 8-byte elements from p (any alignment: read_unaligned).
    let v = (0..a.len())
        .map(|i| {
            let x = unsafe { p.add(i).read_unaligned() };
            if swap {
                f64::from_bits(x.to_bits().swap_bytes())
            } else {
                x
            }
        })
        .collect();
    Ok(std::borrow::Cow::Owned(v))
}
