"""The numba kernels of the majority filter of volumes ``(z, y, x)``, per-axis radii.

Three ways to the same map, chosen by :func:`._majority.majority_block3` by measured
cost: counting each window afresh (:func:`_majority_direct3`), a class histogram
sliding along x (:func:`_majority_sliding3`), and separable per-class box counts
(:func:`_majority_boxcount3`). ``_majority_direct3`` and ``_majority_sliding3`` with
``rz = 0`` on a one-slice volume give what the 2-D kernels of :mod:`._majority` give,
but the 2-D kernels stay: on 1024^2 maps these were 2-8 % slower (a loop over ``z``
and 3-D indexing in the innermost loops).
"""

from __future__ import annotations

import numba

__all__: list[str] = []


@numba.njit(cache=True, nogil=True)
def _majority_direct3(block, rz, ry, rx, nodata, counts, out):  # pragma: no cover
    """Count each window afresh: 3 visits of the window's voxels, whatever the classes."""
    d, h, w = block.shape
    for k in range(d):
        k0 = max(k - rz, 0)
        k1 = min(k + rz + 1, d)
        for i in range(h):
            i0 = max(i - ry, 0)
            i1 = min(i + ry + 1, h)
            for j in range(w):
                c = block[k, i, j]
                if c == nodata:
                    out[k, i, j] = nodata
                    continue
                j0 = max(j - rx, 0)
                j1 = min(j + rx + 1, w)
                for e in range(k0, k1):
                    for a in range(i0, i1):
                        for b in range(j0, j1):
                            v = block[e, a, b]
                            if v != nodata:
                                counts[v] += 1
                best_n = 0
                best_v = c
                for e in range(k0, k1):
                    for a in range(i0, i1):
                        for b in range(j0, j1):
                            v = block[e, a, b]
                            if v != nodata:
                                n = counts[v]
                                if n > best_n or (n == best_n and v < best_v):
                                    best_n = n
                                    best_v = v
                out[k, i, j] = c if counts[c] == best_n else best_v
                for e in range(k0, k1):
                    for a in range(i0, i1):
                        for b in range(j0, j1):
                            counts[block[e, a, b]] = 0


@numba.njit(cache=True, nogil=True)
def _majority_sliding3(block, rz, ry, rx, nodata, n_bins, counts, out):  # pragma: no cover
    """Slide a class histogram along each row of a volume, for a moderate class count.

    Per voxel: 2 (2rz+1)(2ry+1) updates and ``n_bins`` bins to scan.
    """
    d, h, w = block.shape
    for k in range(d):
        k0 = max(k - rz, 0)
        k1 = min(k + rz + 1, d)
        for i in range(h):
            i0 = max(i - ry, 0)
            i1 = min(i + ry + 1, h)
            for v in range(n_bins):
                counts[v] = 0
            for b in range(min(rx, w)):
                for e in range(k0, k1):
                    for a in range(i0, i1):
                        v = block[e, a, b]
                        if v != nodata:
                            counts[v] += 1
            for j in range(w):
                enter = j + rx
                if enter < w:
                    for e in range(k0, k1):
                        for a in range(i0, i1):
                            v = block[e, a, enter]
                            if v != nodata:
                                counts[v] += 1
                leave = j - rx - 1
                if leave >= 0:
                    for e in range(k0, k1):
                        for a in range(i0, i1):
                            v = block[e, a, leave]
                            if v != nodata:
                                counts[v] -= 1
                c = block[k, i, j]
                if c == nodata:
                    out[k, i, j] = nodata
                    continue
                best_n = 0
                best_v = c
                for v in range(n_bins):  # ascending: ties go to the smallest ID
                    if counts[v] > best_n:
                        best_n = counts[v]
                        best_v = v
                out[k, i, j] = c if counts[c] == best_n else best_v


@numba.njit(cache=True, nogil=True)
def _majority_boxcount3(block, rz, ry, rx, nodata, n_bins, row, along_x, ring, plane,
                        best_n, best_v, centre_n, out):  # pragma: no cover - compiled
    """Separable per-class box counts over a volume, for few classes.

    Class by class, slice by slice: the window count along x from a zero-padded row
    (``row``; ``rx`` zeros either side stand for voxels beyond the block edge) into
    the slice buffer ``along_x``, a running sum along y into a ``ring`` of the last
    ``2 rz + 2`` slices, and a running sum along z in ``plane``, which then updates the
    running maximum (strict ``>`` in ascending class order: ties go to the smallest
    ID) and the centre class's count. Every pass but the row fill is a whole-row vector
    operation on slice-sized buffers; integer sums, so their order cannot change the
    result. About ``n_bins * (2 rx + 9)`` vector lanes of work per voxel, whatever
    ``ry`` and ``rz``; besides the block, 3 count volumes and ``2 rz + 4`` slices.
    """
    d, h, w = block.shape
    n_ring = ring.shape[0]
    ct = along_x.dtype.type
    one = ct(1)
    zero = ct(0)
    best_n[:] = 0
    best_v[:] = 0
    centre_n[:] = 0
    row[:] = 0
    for v in range(n_bins):
        if v == nodata:
            continue
        vb = block.dtype.type(v)
        vv = ct(v)
        plane[:, :] = 0
        for k in range(-rz, d):  # k < 0: the first slices enter before the first output
            enter = k + rz
            if enter < d:
                for i in range(h):  # along x
                    src = block[enter, i]
                    for j in range(w):
                        row[rx + j] = one if src[j] == vb else zero
                    dst = along_x[i]
                    for j in range(w):
                        dst[j] = row[j]
                    for off in range(1, 2 * rx + 1):
                        for j in range(w):
                            dst[j] += row[j + off]
                acc_slice = ring[enter % n_ring]  # along y: a running sum down the slice
                acc = acc_slice[0]
                acc[:] = 0
                for a in range(min(ry + 1, h)):
                    for j in range(w):
                        acc[j] += along_x[a, j]
                for i in range(1, h):
                    prev = acc_slice[i - 1]
                    acc = acc_slice[i]
                    for j in range(w):
                        acc[j] = prev[j]
                    if i + ry < h:
                        src = along_x[i + ry]
                        for j in range(w):
                            acc[j] += src[j]
                    if i - ry - 1 >= 0:
                        src = along_x[i - ry - 1]
                        for j in range(w):
                            acc[j] -= src[j]
                for i in range(h):  # along z: the entering slice
                    p = plane[i]
                    src = acc_slice[i]
                    for j in range(w):
                        p[j] += src[j]
            leave = k - rz - 1
            if leave >= 0:
                gone = ring[leave % n_ring]
                for i in range(h):
                    p = plane[i]
                    src = gone[i]
                    for j in range(w):
                        p[j] -= src[j]
            if k < 0:
                continue
            for i in range(h):
                p = plane[i]
                bn = best_n[k, i]
                bv = best_v[k, i]
                cn = centre_n[k, i]
                lab = block[k, i]
                for j in range(w):
                    n = p[j]
                    better = n > bn[j]
                    bn[j] = n if better else bn[j]
                    bv[j] = vv if better else bv[j]
                    cn[j] = n if lab[j] == vb else cn[j]
    for k in range(d):
        for i in range(h):
            for j in range(w):
                c = block[k, i, j]
                # a valid centre is counted in its own window, so best_n >= 1 there
                out[k, i, j] = (c if (c == nodata or centre_n[k, i, j] == best_n[k, i, j])
                                else block.dtype.type(best_v[k, i, j]))
