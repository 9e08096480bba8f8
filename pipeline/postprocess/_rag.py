"""The greedy merge loop of region merging, on a compact region adjacency graph.

:func:`merge_loop` merges the cheapest pair of touching regions, again and again (ties:
the lower node ID, then the higher), exactly as :func:`build_hierarchy
<pipeline.postprocess._hierarchy.build_hierarchy>` defines it. Three things keep it
lean on large graphs (millions of leaves, as on noise):

- **Memory**: the graph is flat arrays (int32 where the graph allows), about 40 bytes
  per edge and 150 per node with the inputs and outputs: each node has a block of its
  edge IDs in one pool; a merged node lives on in the slot of one child (its ID in
  ``lab``), and the other child's edges are appended to its block (moved to the pool's
  end, twice as large, when full; the pool is repacked when it runs out). An edge to a
  common neighbour is combined, its border summed, and dies; dead edges leave a block
  when it is next read. Typed dictionaries per node, as before, took 1.4-2.5 kB per
  leaf. A node's fields are one row of a table (and an edge's, of another): a node
  looked at touches a page or two, whatever its fields.
- **Bounded** (with a :class:`Store` of files and a ``pause``, :func:`merge_loop`):
  every array the graph needs comes from the store, the large nodes' heaps included
  (blocks of an arena that is repacked into a new one between steps), and the loop
  pauses after a number of nodes, edges or merges, or of edges looked at by merges,
  so that the caller can drop the pages it touched; inside a merge (the largest
  regions' look at millions of edges), it drops them itself (:func:`_keep`).
- **Time**: each node keeps its best neighbour, and an indexed heap of the nodes orders
  them by it. A region with thousands of neighbours that absorbs small ones one by one
  (on noise, Ward's merging grows such regions: 10,848 neighbours among 141 k leaves)
  would re-cost every one of its edges at every merge: 54 million re-costs there, and
  quadratic growth. A node with ``giant`` neighbours or more therefore keeps its edges in
  a heap of its own, keyed by *lower bounds* of their Ward costs: while the node's mean
  stays within ``budget`` of an anchor, ``|mean - mean_h| >= |anchor - mean_h| -
  budget`` (triangle inequality) and ``na nb / (na + nb)`` only grows. Its best is found
  by taking entries off that heap and computing their exact cost until the best exact
  cost is below the next bound; only edges that change (moved over from an absorbed
  node, or whose other end changed) get new entries. When the mean leaves its budget,
  the node takes a new anchor with twice the budget; when the entries taken off since
  the anchor outnumber twice its edges, a new anchor with a quarter of it: the two
  costs stay balanced. An edge between two large nodes is re-costed whenever either
  end changes. The bounds only skip work: every merge is chosen by exact costs,
  computed as before, so the hierarchy is the same, bit for bit (tested against a brute
  force with every threshold). ``baatz_schape`` has no such bound (its shape terms move
  with every merge), so there every node re-costs its edges.
- **Keys that do not move**: the heap of nodes orders them by ``(cost, lower ID, higher
  ID)`` as stored when their best was found, not as read through the labels. Reading
  the labels, a merge changed the keys of the nodes still waiting to be looked at again,
  and the heap could come out of order: the loop before this one chose a wrong pair on
  4 of 200 small grids with tied costs.

Nodes whose best is a large node are not told when the large node changes: they leave
the edges to large nodes to the large node's own heap. Large nodes whose best is a node
that merges are listed per node (``bhead``), so they alone are looked at again.
Compiled with numpy's error model (no check for division by zero, which the costs
never divide by): with the checks, one cost call took 179 ns instead of 7 in a
micro-benchmark.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numba
import numpy as np
from numba import types
from numba.extending import overload
from numba.typed import List

__all__ = ["GIANT_DEGREE", "merge_loop"]

#: a node with this many neighbours or more keeps its edges in a heap of lower bounds
GIANT_DEGREE = 128
#: a large node's budget: this many times the shift of its mean by its last merge
BUDGET_STEPS = 3.0
#: relative slack of the lower bounds, far above float64 rounding
_SLACK = 1e-9
#: nodes, edges or merges between two calls of :func:`merge_loop`'s ``pause``
STEP = 1 << 16
#: entries of a new pool beyond half as many as it holds again (tests set it to 0 to
#: repack often)
POOL_SPARE = 1024
#: entries of the large nodes' heaps' arena beyond four times what they hold, with a
#: store that is not memory (tests set it low to repack often)
HEAP_ARENA = 1 << 16
#: edges looked at by one loop between two readings of the process's file-backed
#: memory, inside a merge (see :func:`_keep`; a power of two)
KEEP_EVERY = 256


# -- dropping pages inside the loop ------------------------------------------------------
# A merge of the largest regions (re-anchoring a heap of millions of entries) reads the
# graph at random for seconds: the caller's pause cannot come in the middle of it. So each
# loop over edges reads, every ``KEEP_EVERY`` edges, how much file-backed memory the
# process holds (``/proc/self/statm``), and drops its pages (``madvise(MADV_DONTNEED)``)
# once that is ``budget`` above its floor, as the caller's pause does between steps.
# ``keep`` = ``(state, buffer, regions)``: ``state`` = [statm file descriptor (-1: never
# drop), budget, floor (bytes; shared with the caller's pause), KEEP_EVERY - 1, drops
# done, page size, the buffer's address]; ``regions``: row 0 ``[count, 0]``, then
# ``(address, length)`` of every mapping whose pages go (the store keeps it current).
# A loop tests its index against the mask (a counter in memory, written at every edge,
# cost the in-memory loop 20 %), and the loop of merges its merge count (small merges,
# whose loops never reach the mask, add up between two pauses otherwise).
# Written by hand: numba binds neither call; both are declared by name, looked up in the
# process when the code loads (the cache stays valid), and exist on Linux only.

if sys.platform.startswith("linux"):
    _madvise = types.ExternalFunction(
        "madvise", types.int32(types.intp, types.intp, types.int32))
    _pread = types.ExternalFunction(
        "pread", types.intp(types.int32, types.intp, types.intp, types.intp))

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def _keep_now(keep):  # pragma: no cover - compiled
        state, buf, regions = keep
        if state[0] < 0:
            return
        got = _pread(np.int32(state[0]), state[6], buf.size, 0)
        field = 0
        pages = 0
        for r in range(got):  # "size resident shared ...": the third, in pages
            ch = buf[r]
            if ch == 32:
                field += 1
                if field == 3:
                    break
            elif field == 2:
                pages = pages * 10 + (ch - 48)
        now = pages * state[5]
        state[2] = min(state[2], now)
        if now - state[2] > state[1]:
            for r in range(1, regions[0, 0] + 1):
                _madvise(regions[r, 0], regions[r, 1], 4)  # MADV_DONTNEED
            state[4] += 1
else:  # pragma: no cover - not Linux: the caller's pauses alone drop pages
    @numba.njit(cache=True, nogil=True)
    def _keep_now(keep):
        pass


def _keep_mask(graph):  # pragma: no cover - compiled through its overload
    """``KEEP_EVERY - 1``: a loop calls :func:`_keep` when its index ANDs to it."""


def _keep(graph, r, mask):  # pragma: no cover - compiled through its overload
    """At every ``KEEP_EVERY``-th edge ``r`` of a loop, drop the pages if they are many.

    Compiled apart for a graph with a ``keep`` (a tenth member) and one without (in
    memory): there it is nothing. A ``keep`` in every graph cost the in-memory loop
    20 % (three more arrays passed, and counted, at every call).
    """


@overload(_keep_mask, inline="always")
def _keep_mask_impl(graph):  # pragma: no cover - compiled
    if len(graph) > 9:
        return lambda graph: graph[9][0][3]
    return lambda graph: 0


@overload(_keep, inline="always")
def _keep_impl(graph, r, mask):  # pragma: no cover - compiled
    if len(graph) > 9:
        def keep(graph, r, mask):
            if (r & mask) == mask:
                _keep_now(graph[9])
        return keep
    return lambda graph, r, mask: None


class Store(Protocol):
    """Where :func:`merge_loop`'s arrays live (:class:`~._bounded.Paged` has the same)."""

    def empty(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...

    def full(self, name: str, shape: tuple[int, ...], dtype: Any,
             value: Any) -> np.ndarray: ...

    def drop(self, name: str) -> None: ...


class InMemory:
    """:func:`merge_loop`'s default :class:`Store`: arrays in this process's memory."""

    def empty(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def full(self, name: str, shape: tuple[int, ...], dtype: Any, value: Any) -> np.ndarray:
        return np.full(shape, value, dtype)

    def drop(self, name: str) -> None:
        pass


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _box(lo, hi, ndim):  # pragma: no cover - compiled
    """Perimeter of a bounding box (its surface in a volume)."""
    e0 = hi[0] - lo[0] + 1
    e1 = hi[1] - lo[1] + 1
    if ndim == 2:
        return 2.0 * (e0 + e1)
    e2 = hi[2] - lo[2] + 1
    return 2.0 * (e0 * e1 + e1 * e2 + e0 * e2)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _terms(i, cnt, ssq, per, blo, bhi, ndim):  # pragma: no cover - compiled
    """Return a node's colour, compactness and smoothness terms (n sd, l n^(1-1/d), n l/box)."""
    ni = cnt[i]
    colour = 0.0
    for f in range(ssq.shape[1]):
        colour += math.sqrt(ssq[i, f] / ni) * ni
    root = 0.5 if ndim == 2 else 2.0 / 3.0  # n l / n^root
    return colour, per[i] * ni ** (1.0 - root), ni * per[i] / _box(blo[i], bhi[i], ndim)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _cost(i, j, slot, nodes):  # pragma: no cover - compiled
    """Return the fusion cost of nodes ``i`` and ``j`` sharing the border of edge ``slot``.

    ``nodes``: the node and edge arrays and the criterion's weights, as
    :func:`merge_loop` packs them. Callers pass the lower node first, so a pair has
    one cost, bit for bit, whichever side asks.
    """
    cnt, mu, ssq, per, blo, bhi, elen, esum, epair, baatz, shape, compact, boundary, \
        ndim = nodes
    ni = cnt[i]
    nj = cnt[j]
    nm = ni + nj
    w = ni * nj / nm
    if not baatz:
        d = 0.0
        for f in range(mu.shape[1]):
            d += (mu[i, f] - mu[j, f]) ** 2
        c = w * d
    else:
        colour_m = 0.0
        for f in range(mu.shape[1]):
            s_m = ssq[i, f] + ssq[j, f] + w * (mu[i, f] - mu[j, f]) ** 2
            colour_m += math.sqrt(s_m / nm) * nm
        ci, pi, si = _terms(i, cnt, ssq, per, blo, bhi, ndim)
        cj, pj, sj = _terms(j, cnt, ssq, per, blo, bhi, ndim)
        per_m = per[i] + per[j] - 2.0 * elen[slot]
        lo = np.minimum(blo[i], blo[j])
        hi = np.maximum(bhi[i], bhi[j])
        root = 0.5 if ndim == 2 else 2.0 / 3.0  # n l / n^root
        h_colour = colour_m - ci - cj
        h_compact = per_m * nm ** (1.0 - root) - pi - pj
        h_smooth = nm * per_m / _box(lo, hi, ndim) - si - sj
        c = (1.0 - shape) * h_colour + shape * (compact * h_compact
                                                + (1.0 - compact) * h_smooth)
    if boundary > 0:
        c = c * _boundary_factor(slot, esum, epair, boundary) if c >= 0 else \
            c / _boundary_factor(slot, esum, epair, boundary)
    return c


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _boundary_factor(slot, esum, epair, boundary):  # pragma: no cover - compiled
    g = esum[slot] / epair[slot] if epair[slot] > 0 else 0.0
    return 1.0 + boundary * g


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _less(c1, a1, b1, c2, a2, b2):  # pragma: no cover - compiled
    """``(c1, a1, b1) < (c2, a2, b2)``: cost, then the lower node, then the higher."""
    if c1 != c2:
        return c1 < c2
    if a1 != a2:
        return a1 < a2
    return b1 < b2


# -- the heap of the nodes, by their best neighbour -------------------------------------

@numba.njit(cache=True, nogil=True, error_model="numpy")
def _heap_less(u, v, best_c, ids):  # pragma: no cover - compiled
    """Order of two nodes by their best pair; ``ids``: its ``(lower, higher)`` node IDs.

    The pair's IDs are kept as they were when the best was found, so that a merge
    relabelling a node does not change the keys of nodes still waiting to be looked
    at again (a key seen half-changed could leave the heap out of order).
    """
    lo, hi = ids
    return _less(best_c[u], lo[u], hi[u], best_c[v], lo[v], hi[v])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sift_down(heap, pos, size, k, best_c, ids):  # pragma: no cover - compiled
    u = heap[k]
    while True:
        c = 2 * k + 1
        if c >= size:
            break
        if c + 1 < size and _heap_less(heap[c + 1], heap[c], best_c, ids):
            c += 1
        if not _heap_less(heap[c], u, best_c, ids):
            break
        heap[k] = heap[c]
        pos[heap[k]] = k
        k = c
    heap[k] = u
    pos[u] = k


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sift(heap, pos, size, k, best_c, ids):  # pragma: no cover - compiled
    """Restore the heap property of a valid heap whose slot ``k`` changed."""
    u = heap[k]
    moved = False
    while k > 0:
        p = (k - 1) >> 1
        if not _heap_less(u, heap[p], best_c, ids):
            break
        heap[k] = heap[p]
        pos[heap[k]] = k
        k = p
        moved = True
    heap[k] = u
    pos[u] = k
    if not moved:
        _sift_down(heap, pos, size, k, best_c, ids)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _heap_fix(u, heap, pos, hsz, best):  # pragma: no cover - compiled
    """Put node ``u`` where its best belongs: in (or out of) the heap, sifted."""
    best_c, best_n, ids = best[0], best[1], (best[3], best[4])
    size = hsz[0]
    k = pos[u]
    if best_n[u] < 0:
        if k >= 0:
            pos[u] = -1
            size -= 1
            if k != size:
                heap[k] = heap[size]
                pos[heap[k]] = k
                _sift(heap, pos, size, k, best_c, ids)
            hsz[0] = size
        return
    if k < 0:
        heap[size] = u
        pos[u] = size
        size += 1
        hsz[0] = size
        k = size - 1
    _sift(heap, pos, size, k, best_c, ids)


# -- the graph ------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True, error_model="numpy")
def _block(u, graph):  # pragma: no cover - compiled
    """Return ``u``'s live edges (a view of its block), dead ones dropped in place."""
    start, length, ea, pool = graph[0], graph[1], graph[4], graph[3][0]
    s = start[u]
    m = 0
    mask = _keep_mask(graph)
    for r in range(length[u]):
        _keep(graph, r, mask)
        k = pool[s + r]
        if ea[k] >= 0:
            pool[s + m] = k
            m += 1
    length[u] = m
    return pool[s:s + m]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gather(u, graph):  # pragma: no cover - compiled
    """Return ``u``'s live neighbours and edges, ``(deg, 2)``."""
    ea, eb = graph[4], graph[5]
    ks = _block(u, graph)
    out = np.empty((ks.size, 2), np.int64)
    for r in range(ks.size):
        k = ks[r]
        out[r, 0] = ea[k] + eb[k] - u
        out[r, 1] = k
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _find_edge(u, t, graph):  # pragma: no cover - compiled
    """Return the live edge between ``u`` and ``t`` (-1: none), looking through ``u``'s."""
    start, length, pool, ea, eb = graph[0], graph[1], graph[3][0], graph[4], graph[5]
    s = start[u]
    mask = _keep_mask(graph)
    for r in range(length[u]):
        _keep(graph, r, mask)
        k = pool[s + r]
        if ea[k] >= 0 and ea[k] + eb[k] - u == t:
            return k
    return -1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _repack(start, length, cap, old, new, at, lo, hi):  # pragma: no cover - compiled
    """Copy the blocks of nodes ``lo:hi`` from pool ``old`` into ``new``, tightly.

    ``at[0]``: where the next block goes (carried from one range of nodes to the next).
    """
    p = at[0]
    for u in range(lo, hi):
        ln = length[u]
        new[p:p + ln] = old[start[u]:start[u] + ln]
        start[u] = p
        cap[u] = ln
        p += ln
    at[0] = p


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _append(u, k, graph):  # pragma: no cover - compiled
    """Add edge ``k`` to ``u``'s block; a full block moves to the pool's end, twice as large.

    The loop made sure, before the merge, that the pool has room (:func:`_room`).
    """
    start, length, cap, P, pend = graph[0], graph[1], graph[2], graph[3], graph[8]
    pool = P[0]
    if length[u] == cap[u]:
        need = max(4, 2 * cap[u])
        at = pend[0]
        pool[at:at + length[u]] = pool[start[u]:start[u] + length[u]]
        pend[1] += cap[u]
        start[u] = at
        cap[u] = need
        pend[0] = at + need
    pool[start[u] + length[u]] = k
    length[u] += 1


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _room(i, j, graph):  # pragma: no cover - compiled
    """Pool entries that merging ``i`` and ``j`` may take, at most.

    Appending the ``length`` entries of one block to a block of capacity ``cap``
    moves it (doubling) until it holds ``cap + length``: the new blocks take less than
    ``4 (cap + length) + 8`` entries in all.
    """
    cap = graph[2]
    return 4 * (cap[i] + cap[j]) + 16


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _edge_between(h, u, graph, gidx, glist):  # pragma: no cover - compiled
    """Return the live edge between ``h`` and ``u`` (-1: none), walking a short list.

    A small node has fewer than ``giant`` neighbours; two large nodes find each other
    in the shorter of their lists of edges to large nodes.
    """
    ea, eb = graph[4], graph[5]
    if gidx[h] < 0:
        return _find_edge(h, u, graph)
    if gidx[u] < 0:
        return _find_edge(u, h, graph)
    GL, glen = glist
    x = h if glen[gidx[h]] <= glen[gidx[u]] else u
    t = u if x == h else h
    a = GL[gidx[x]]
    for r in range(glen[gidx[x]]):
        k = a[r]
        if ea[k] >= 0 and (ea[k] == t or eb[k] == t):
            return k
    return -1


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _pair_cost(u, g, e, nodes, lab):  # pragma: no cover - compiled
    """Return the cost of ``u`` and ``g``, computed with the lower node (by ID) first."""
    if lab[u] < lab[g]:
        return _cost(u, g, e, nodes)
    return _cost(g, u, e, nodes)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _offer(u, g, e, c, best, lab):  # pragma: no cover - compiled
    """Make ``g``, at cost ``c`` over edge ``e``, the best neighbour of ``u`` if it beats it.

    ``best``: ``(cost, neighbour, edge, lower ID, higher ID)`` arrays of the nodes' bests.
    """
    best_c, best_n, best_e, best_lo, best_hi = best
    lo, hi = min(lab[u], lab[g]), max(lab[u], lab[g])
    if best_n[u] < 0 or _less(c, lo, hi, best_c[u], best_lo[u], best_hi[u]):
        best_c[u] = c
        best_n[u] = g
        best_e[u] = e
        best_lo[u] = lo
        best_hi[u] = hi
        return True
    return False


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _rescan(u, graph, nodes, best, lab, gidx):  # pragma: no cover
    """Find the best neighbour of a small node among its small neighbours again."""
    ea, eb = graph[4], graph[5]
    best[1][u] = -1
    ks = _block(u, graph)
    for r in range(ks.size):
        k = ks[r]
        g = ea[k] + eb[k] - u
        if gidx[g] < 0:
            _offer(u, g, k, _pair_cost(u, g, k, nodes, lab), best, lab)


# -- a large node's heap of its edges, keyed by lower bounds of their costs -------------

@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _lh_less(K, E, p, q):  # pragma: no cover - compiled
    return _less(K[p], E[p, 0], E[p, 1], K[q], E[q, 0], E[q, 1])


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _lh_swap(K, E, p, q):  # pragma: no cover - compiled
    K[p], K[q] = K[q], K[p]
    for c in range(4):
        E[p, c], E[q, c] = E[q, c], E[p, c]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lh_down(K, E, size, k):  # pragma: no cover - compiled
    while True:
        c = 2 * k + 1
        if c >= size:
            break
        if c + 1 < size and _lh_less(K, E, c + 1, c):
            c += 1
        if not _lh_less(K, E, c, k):
            break
        _lh_swap(K, E, c, k)
        k = c


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _grown(a, used):  # pragma: no cover - compiled
    """Return ``a`` with room for more: twice its ``used`` entries and some, copied."""
    b = np.empty((2 * used + 16,) + a.shape[1:], a.dtype)
    b[:used] = a[:used]
    return b


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _lh_room(s):  # pragma: no cover - compiled
    """Entries a heap of ``s`` entries gets when it grows or is repacked."""
    return 2 * s + 16


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lh_block(gi, size, keep, giants):  # pragma: no cover - compiled
    """Give large node ``gi``'s heap a block of ``size`` entries, its first ``keep`` copied.

    The block comes from the arena (``giants[4:7]``: keys, entries and ``[end,
    entries outside]``) where it has room, else from memory; :func:`merge_loop`
    repacks the heaps into a new arena between steps (:func:`_lh_repack`).
    """
    HK, HE, AK, AE, aend = giants[0], giants[1], giants[4], giants[5], giants[6]
    at = aend[0]
    if at + size <= AK.size:
        K = AK[at:at + size]
        E = AE[at:at + size]
        aend[0] = at + size
    else:
        K = np.empty(size)
        E = np.empty((size, 4), AE.dtype)
        aend[1] += size
    if keep > 0:
        K[:keep] = HK[gi][:keep]
        E[:keep] = HE[gi][:keep]
    HK[gi] = K
    HE[gi] = E


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lh_repack(giants, AK, AE, at, lo, hi, limit):  # pragma: no cover - compiled
    """Copy the heaps of large nodes ``lo:hi`` into a new arena, tightly, with room.

    ``at[0]``: where the next block goes (carried from one call to the next). Stops
    once ``limit`` entries are copied (the heaps of large regions are large) and
    returns the next large node to copy (``hi``: done).
    """
    HK, HE, hsize = giants[0], giants[1], giants[2]
    p = at[0]
    first = p
    for gi in range(lo, hi):
        if p - first >= limit:
            at[0] = p
            return gi
        if HK[gi].size == 0:  # absorbed by another large node
            continue
        s = hsize[gi]
        size = _lh_room(s)
        K = AK[p:p + size]
        E = AE[p:p + size]
        K[:s] = HK[gi][:s]
        E[:s] = HE[gi][:s]
        HK[gi] = K
        HE[gi] = E
        p += size
    at[0] = p
    return hi


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lh_live(giants, lo, hi):  # pragma: no cover - compiled
    """Entries the heaps of large nodes ``lo:hi`` take once repacked."""
    HK, hsize = giants[0], giants[2]
    total = 0
    for gi in range(lo, hi):
        if HK[gi].size > 0:
            total += _lh_room(hsize[gi])
    return total


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lh_push(gi, key, lo, hi, e, st, giants):  # pragma: no cover - compiled
    HK, HE, hsize = giants[0], giants[1], giants[2]
    s = hsize[gi]
    if s == HK[gi].size:
        _lh_block(gi, _lh_room(s), s, giants)
    K = HK[gi]
    E = HE[gi]
    K[s] = key
    E[s, 0] = lo
    E[s, 1] = hi
    E[s, 2] = e
    E[s, 3] = st
    hsize[gi] = s + 1
    k = s
    while k > 0:
        p = (k - 1) >> 1
        if not _lh_less(K, E, k, p):
            break
        _lh_swap(K, E, k, p)
        k = p


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lh_pop(gi, giants):  # pragma: no cover - compiled
    HK, HE, hsize = giants[0], giants[1], giants[2]
    K = HK[gi]
    E = HE[gi]
    s = hsize[gi] - 1
    hsize[gi] = s
    if s > 0:
        K[0] = K[s]
        E[0] = E[s]
        _lh_down(K, E, s, 0)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lh_compact(gi, giants, graph):  # pragma: no cover - compiled
    """Drop the entries that no longer stand for a live edge as it is."""
    HK, HE, hsize = giants[0], giants[1], giants[2]
    ea, stamp = graph[4], graph[7]
    K = HK[gi]
    E = HE[gi]
    s = 0
    mask = _keep_mask(graph)
    for r in range(hsize[gi]):
        _keep(graph, r, mask)
        k = E[r, 2]
        if ea[k] >= 0 and stamp[k] == E[r, 3]:
            K[s] = K[r]
            E[s] = E[r]
            s += 1
    hsize[gi] = s
    for r in range(s // 2 - 1, -1, -1):
        _lh_down(K, E, s, r)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _drift(u, mu, anchor):  # pragma: no cover - compiled
    d = 0.0
    for f in range(mu.shape[1]):
        d += (mu[u, f] - anchor[u, f]) ** 2
    return math.sqrt(d)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _bound(u, h, k, nodes, anchor, budget):  # pragma: no cover - compiled
    """Return a lower bound of the Ward cost of large node ``u`` and small node ``h``.

    Valid as long as ``u``'s mean stays within ``budget[u]`` of its anchor and ``h``
    and the edge do not change: ``|mu_u' - mu_h| >= |anchor - mu_h| - budget``, and
    ``n_u n_h / (n_u + n_h)`` only grows with ``n_u``.
    """
    cnt, mu, esum, epair, boundary = nodes[0], nodes[1], nodes[7], nodes[8], nodes[12]
    d = 0.0
    for f in range(mu.shape[1]):
        d += (anchor[u, f] - mu[h, f]) ** 2
    d = math.sqrt(d)
    lb = (d - budget[u]) - _SLACK * (1.0 + d + budget[u])
    if lb <= 0:
        return 0.0
    w = cnt[u] * cnt[h] / (cnt[u] + cnt[h])
    c = w * lb * lb * (1.0 - _SLACK)
    if boundary > 0:
        c *= _boundary_factor(k, esum, epair, boundary)
    return c


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _enter(u, h, k, c, nodes, lab, graph, giants, anchor, budget, gidx):  # pragma: no cover
    """Give large node ``u`` an entry for its edge ``k`` to ``h`` (exact cost ``c``, or nan)."""
    deg, stamp = graph[6], graph[7]
    gi = gidx[u]
    if gidx[h] >= 0:  # two large nodes: re-costed whenever either changes
        key = c if c == c else _pair_cost(u, h, k, nodes, lab)
    else:
        key = _bound(u, h, k, nodes, anchor, budget)
    _lh_push(gi, key, min(lab[u], lab[h]), max(lab[u], lab[h]), k, stamp[k], giants)
    if giants[2][gi] > 2 * deg[u] + 64:  # stale entries at most as many as live ones
        _lh_compact(gi, giants, graph)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _bl_set(g, target, blist):  # pragma: no cover - compiled
    """Move large node ``g`` to the list of the nodes whose best is ``target``."""
    bhead, bnext, bprev, bin_ = blist
    t = bin_[g]
    if t >= 0:
        p = bprev[g]
        nx = bnext[g]
        if p >= 0:
            bnext[p] = nx
        else:
            bhead[t] = nx
        if nx >= 0:
            bprev[nx] = p
    bin_[g] = target
    if target >= 0:
        nx = bhead[target]
        bnext[g] = nx
        bprev[g] = -1
        if nx >= 0:
            bprev[nx] = g
        bhead[target] = g


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _settle(u, nodes, lab, graph, giants, anchor, budget, gidx, best, blist, popk,
            pope, stats):  # pragma: no cover - compiled
    """Find large node ``u``'s best neighbour from its heap of bounds; exact costs decide.

    ``popk``, ``pope``: scratch for the entries taken off; returned, grown if need be.
    """
    ea, eb, stamp = graph[4], graph[5], graph[7]
    HK, HE, hsize = giants[0], giants[1], giants[2]
    gi = gidx[u]
    stats[0] += 1
    if giants[3][u] > 2 * graph[6][u] + 64:  # loose bounds cost more than a new anchor
        _reanchor(u, nodes, lab, graph, giants, anchor, budget, gidx, 0.25 * budget[u],
                  stats)
    have = False
    bc = np.inf
    bn = -1
    be = -1
    blo = 0
    bhi = 0
    npop = 0
    mask = _keep_mask(graph)
    looked = 0
    while hsize[gi] > 0:
        looked += 1
        _keep(graph, looked, mask)
        K = HK[gi]
        E = HE[gi]
        k = E[0, 2]
        if ea[k] < 0 or stamp[k] != E[0, 3]:
            _lh_pop(gi, giants)
            continue
        if have and _less(bc, blo, bhi, K[0], E[0, 0], E[0, 1]):
            break
        if npop == popk.size:
            popk = _grown(popk, npop)
            pope = _grown(pope, npop)
        old_key = K[0]
        _lh_pop(gi, giants)
        h = eb[k] if ea[k] == u else ea[k]
        c = _pair_cost(u, h, k, nodes, lab)
        # its entry goes back once the best is known (pushed now, it would come off again)
        popk[npop] = c if gidx[h] >= 0 else max(old_key, _bound(u, h, k, nodes, anchor,
                                                                 budget))
        pope[npop] = k
        npop += 1
        stats[1] += 1
        giants[3][u] += 1
        lo = min(lab[u], lab[h])
        hi = max(lab[u], lab[h])
        if not have or _less(c, lo, hi, bc, blo, bhi):
            have = True
            bc, bn, be, blo, bhi = c, h, k, lo, hi
    for r in range(npop):
        k = pope[r]
        h = eb[k] if ea[k] == u else ea[k]
        _lh_push(gi, popk[r], min(lab[u], lab[h]), max(lab[u], lab[h]), k, stamp[k], giants)
    best[0][u] = bc
    best[1][u] = bn
    best[2][u] = be
    best[3][u] = blo
    best[4][u] = bhi
    _bl_set(u, bn, blist)
    return popk, pope


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _improve(h, g, k, c, best, lab, blist, heap, pos, hsz
             ):  # pragma: no cover - compiled
    """Make ``g`` the best of large node ``h`` if their edge ``k``, now ``c``, beats it."""
    if _offer(h, g, k, c, best, lab):
        _bl_set(h, g, blist)
        _heap_fix(h, heap, pos, hsz, best)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _make_giant(u, nodes, lab, graph, giants, anchor, budget, gidx, glist):
    # pragma: no cover - compiled
    """Give node ``u`` a heap of its own, with bounds anchored at its mean."""
    HK, HE, hsize = giants[0], giants[1], giants[2]
    GL, glen = glist
    gi = len(HK)
    HK.append(np.empty(0))
    HE.append(np.empty((0, 4), gidx.dtype))  # int32 where the graph allows
    _lh_block(gi, 16, 0, giants)
    GL.append(np.empty(8, gidx.dtype))
    hsize[gi] = 0
    glen[gi] = 0
    gidx[u] = gi
    mu = nodes[1]
    for f in range(mu.shape[1]):
        anchor[u, f] = mu[u, f]
    budget[u] = 0.0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gl_add(u, k, gidx, glist):  # pragma: no cover - compiled
    GL, glen = glist
    gi = gidx[u]
    a = GL[gi]
    s = glen[gi]
    if s == a.size:
        a = _grown(a, s)
        GL[gi] = a
    a[s] = k
    glen[gi] = s + 1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gl_live(u, gidx, glist, ea):  # pragma: no cover - compiled
    """Return the live edges between ``u`` and other large nodes (dead ones dropped)."""
    GL, glen = glist
    gi = gidx[u]
    a = GL[gi]
    s = 0
    for r in range(glen[gi]):
        if ea[a[r]] >= 0:
            a[s] = a[r]
            s += 1
    glen[gi] = s
    return a[:s].copy()


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _reanchor(u, nodes, lab, graph, giants, anchor, budget, gidx, step, stats):
    # pragma: no cover - compiled
    """Anchor ``u`` at its mean with budget ``step``; rebuild its heap with new bounds."""
    stamp = graph[7]
    mu = nodes[1]
    for f in range(mu.shape[1]):
        anchor[u, f] = mu[u, f]
    budget[u] = step
    gi = gidx[u]
    giants[2][gi] = 0
    giants[3][u] = 0
    nb = _gather(u, graph)
    stats[2] += 1
    stats[3] += nb.shape[0]
    mask = _keep_mask(graph)
    for r in range(nb.shape[0]):
        _keep(graph, r, mask)
        h = nb[r, 0]
        k = nb[r, 1]
        key = _pair_cost(u, h, k, nodes, lab) if gidx[h] >= 0 else \
            _bound(u, h, k, nodes, anchor, budget)
        _lh_push(gi, key, min(lab[u], lab[h]), max(lab[u], lab[h]), k, stamp[k], giants)


# -- the loop, in steps whose arrays the caller provides ---------------------------------

@numba.njit(cache=True, nogil=True, error_model="numpy")
def _count(ea, eb, deg, lo, hi):  # pragma: no cover - compiled
    for k in range(lo, hi):
        deg[ea[k]] += 1
        deg[eb[k]] += 1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _starts(deg, start, cap, lab, lo, hi):  # pragma: no cover - compiled
    """Each node's block in the pool (``start[lo - 1]`` is set), its capacity, its ID."""
    for u in range(lo, hi):
        if u > 0:
            start[u] = start[u - 1] + deg[u - 1]
        cap[u] = deg[u]
        lab[u] = u


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fill(ea, eb, start, length, pool, lo, hi):  # pragma: no cover - compiled
    for k in range(lo, hi):
        for x in (ea[k], eb[k]):
            pool[start[x] + length[x]] = k
            length[x] += 1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _first_giants(lo, hi, giant, nodes, lab, graph, giants, anchor, budget, gidx, glist):
    # pragma: no cover - compiled
    deg = graph[6]
    for u in range(lo, hi):
        if deg[u] >= giant:
            _make_giant(u, nodes, lab, graph, giants, anchor, budget, gidx, glist)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _giant_edges(lo, hi, ea, eb, gidx, glist):  # pragma: no cover - compiled
    for k in range(lo, hi):
        if gidx[ea[k]] >= 0 and gidx[eb[k]] >= 0:
            _gl_add(ea[k], k, gidx, glist)
            _gl_add(eb[k], k, gidx, glist)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _first_bests(lo, hi, nodes, lab, graph, giants, anchor, budget, gidx, best):
    # pragma: no cover - compiled
    """Each small node's best neighbour; each large node's heap of bounds."""
    for u in range(lo, hi):
        if gidx[u] < 0:
            _rescan(u, graph, nodes, best, lab, gidx)
        else:
            nb = _gather(u, graph)
            for r in range(nb.shape[0]):
                _enter(u, nb[r, 0], nb[r, 1], np.nan, nodes, lab, graph, giants, anchor,
                       budget, gidx)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _first_settles(lo, hi, nodes, lab, graph, giants, anchor, budget, gidx, best, blist,
                   stats):  # pragma: no cover - compiled
    popk = np.empty(64)
    pope = np.empty(64, np.int64)
    for u in range(lo, hi):
        if gidx[u] >= 0:
            popk, pope = _settle(u, nodes, lab, graph, giants, anchor, budget, gidx,
                                   best, blist, popk, pope, stats)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _heap_add(lo, hi, best_n, heap, pos, hsz):  # pragma: no cover - compiled
    for u in range(lo, hi):
        if best_n[u] >= 0:
            heap[hsz[0]] = u
            pos[u] = hsz[0]
            hsz[0] += 1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _heapify(lo, hi, heap, pos, hsz, best):  # pragma: no cover - compiled
    """Sift down slots ``hi - 1`` to ``lo`` (called from the last range to the first)."""
    for k in range(hi - 1, lo - 1, -1):
        _sift_down(heap, pos, hsz[0], k, best[0], (best[3], best[4]))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _live(length, lo, hi):  # pragma: no cover - compiled
    total = 0
    for u in range(lo, hi):
        total += length[u]
    return total


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _work(stats):  # pragma: no cover - compiled
    """Edges the loop has looked at so far: costed, rescanned, moved or re-anchored."""
    return stats[1] + stats[3] + stats[4] + stats[5] + stats[6] + stats[7]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _merges(n, limit, wlimit, mstate, graph, nodes, lab, best, heap, pos, hsz, gidx, giants,
            glist, blist, anchor, budget, dirty, stats, out, giant, steps):
    # pragma: no cover - compiled
    """Up to ``limit`` merges of the loop (see the module), from merge ``mstate[0] - n``.

    Returns 0 after ``limit`` merges or once they have looked at ``wlimit`` edges or
    more (:func:`_work`: a merge of large nodes touches thousands), 2 once the heap is
    empty, and 1 where the next
    merge may need more room in the pool than is left (``pend[2]`` entries): the
    caller repacks it into a new one (:func:`_repack`) and calls again.
    """
    start, length, cap, P, ea, eb, deg, stamp, pend = graph[:9]
    cnt, mu, ssq, per, blo, bhi, elen, esum, epair, baatz = nodes[:10]
    best_c, best_n, best_e = best[0], best[1], best[2]
    HK, HE, hsize = giants[0], giants[1], giants[2]
    GL, glen = glist
    bhead, bnext = blist[0], blist[1]
    out_a, out_b, out_c, out_s = out
    ne = ea.size
    has_len = elen.size == ne and ne > 0
    has_con = esum.size == ne and ne > 0
    nan = np.nan
    nf = mu.shape[1]
    m_mu = np.empty(nf)
    m_ssq = np.empty(nf)
    old_mu = np.empty(nf)
    redo = np.empty(16, np.int64)
    popk = np.empty(64)
    pope = np.empty(64, np.int64)
    m = mstate[0]
    w0 = _work(stats)
    mask = _keep_mask(graph)
    while hsz[0] > 0:
        if m - mstate[0] == limit or _work(stats) - w0 >= wlimit:
            break
        # every KEEP_EVERY merges too: many small merges (each loop under KEEP_EVERY
        # edges reads nothing) held 0.57 GiB of pages between two pauses at 16384^2
        _keep(graph, m, mask)
        u = heap[0]
        v = best_n[u]
        c = best_c[u]
        eij = best_e[u]
        i, j = (u, v) if lab[u] < lab[v] else (v, u)  # the lower ID first
        if pend[0] + _room(i, j, graph) > P[0].size:  # the caller repacks the pool first
            pend[2] = _room(i, j, graph)
            mstate[0] = m
            return 1
        for x in (i, j):
            if pos[x] >= 0:
                best_n[x] = -1
                _heap_fix(x, heap, pos, hsz, best)
        # the large nodes whose best was i or j look again at the end
        nredo = 0
        for x in (i, j):
            g = bhead[x]
            while g >= 0:
                if g != i and g != j:
                    if nredo == redo.size:
                        redo = _grown(redo, nredo)
                    redo[nredo] = g
                    nredo += 1
                    dirty[g] = m
                g = bnext[g]
        gi_, gj_ = gidx[i] >= 0, gidx[j] >= 0
        if gi_ != gj_:
            big, small = (i, j) if gi_ else (j, i)
        else:
            big, small = (i, j) if deg[i] >= deg[j] else (j, i)
        for x in (i, j):
            if gidx[x] >= 0:
                _bl_set(x, -1, blist)
        ni = cnt[i]
        nj = cnt[j]
        nm = ni + nj
        for f in range(nf):
            m_mu[f] = (ni * mu[i, f] + nj * mu[j, f]) / nm
            old_mu[f] = mu[big, f]
        if baatz:
            w = ni * nj / nm
            for f in range(nf):
                m_ssq[f] = ssq[i, f] + ssq[j, f] + w * (mu[i, f] - mu[j, f]) ** 2
            per_m = per[i] + per[j] - 2.0 * elen[eij]
            for d in range(blo.shape[1]):
                blo[big, d] = min(blo[i, d], blo[j, d])
                bhi[big, d] = max(bhi[i, d], bhi[j, d])
            per[big] = per_m
            for f in range(nf):
                ssq[big, f] = m_ssq[f]
        cnt[big] = nm
        for f in range(nf):
            mu[big, f] = m_mu[f]
        idx = m - n
        out_a[idx] = lab[i]
        out_b[idx] = lab[j]
        out_c[idx] = c
        out_s[idx] = np.int64(nm)
        lab[big] = m
        lab[small] = -1

        # move the small child's edges over to the big one
        nbs = _gather(small, graph)
        touched = np.empty((nbs.shape[0], 3), np.int64)  # neighbour, edge, rewired
        nt = 0
        for r in range(nbs.shape[0]):
            _keep(graph, r, mask)
            h = nbs[r, 0]
            k = nbs[r, 1]
            if h == big:
                ea[k] = -1
                deg[big] -= 1
                continue
            kb = _edge_between(h, big, graph, gidx, glist)
            if kb >= 0:  # a common neighbour: the two borders become one
                if has_len:
                    elen[kb] += elen[k]
                if has_con:
                    esum[kb] += esum[k]
                    epair[kb] += epair[k]
                ea[k] = -1
                deg[h] -= 1
                touched[nt, 0], touched[nt, 1], touched[nt, 2] = h, kb, 0
            else:
                if ea[k] == small:
                    ea[k] = big
                else:
                    eb[k] = big
                _append(big, k, graph)
                deg[big] += 1
                touched[nt, 0], touched[nt, 1], touched[nt, 2] = h, k, 1
            nt += 1
        pend[1] += cap[small]
        length[small] = 0
        cap[small] = 0
        deg[small] = 0
        if gidx[small] >= 0:  # a large node absorbed by a larger one: drop its heap
            gs = gidx[small]
            HK[gs] = np.empty(0)
            HE[gs] = np.empty((0, 4), gidx.dtype)
            GL[gs] = np.empty(0, gidx.dtype)
            hsize[gs] = 0
            glen[gs] = 0
        best_n[big] = -1

        if gidx[big] < 0:  # small nodes: every edge of the merged node is re-costed
            nb = _gather(big, graph)
            stats[4] += nb.shape[0]
            for r in range(nb.shape[0]):
                h = nb[r, 0]
                k = nb[r, 1]
                stamp[k] += 1
                ch = _cost(h, big, k, nodes)  # lab[h] < m: the lower node first
                if gidx[h] >= 0:
                    _enter(h, big, k, ch, nodes, lab, graph, giants, anchor, budget, gidx)
                    if dirty[h] != m:
                        _improve(h, big, k, ch, best, lab, blist, heap,
                                 pos, hsz)
                    continue
                _offer(big, h, k, ch, best, lab)
                if best_n[h] == i or best_n[h] == j:  # its best is gone or changed
                    _rescan(h, graph, nodes, best, lab, gidx)
                    stats[5] += deg[h]
                    _heap_fix(h, heap, pos, hsz, best)
                elif _offer(h, big, k, ch, best, lab):
                    _heap_fix(h, heap, pos, hsz, best)
            if deg[big] >= giant:
                stats[8] += 1
                _make_giant(big, nodes, lab, graph, giants, anchor, budget, gidx, glist)
                for r in range(nb.shape[0]):
                    h = nb[r, 0]
                    k = nb[r, 1]
                    if gidx[h] >= 0:
                        _gl_add(big, k, gidx, glist)
                        _gl_add(h, k, gidx, glist)
                    _enter(big, h, k, nan, nodes, lab, graph, giants, anchor, budget, gidx)
                    if gidx[h] < 0 and best_n[h] == big:
                        _rescan(h, graph, nodes, best, lab, gidx)
                        stats[5] += deg[h]
                        _heap_fix(h, heap, pos, hsz, best)
                popk, pope = _settle(big, nodes, lab, graph, giants, anchor, budget,
                                       gidx, best, blist, popk, pope, stats)
        else:  # a large node: only the moved edges and those to large nodes
            for r in range(nt):
                _keep(graph, r, mask)
                h = touched[r, 0]
                k = touched[r, 1]
                if gidx[h] >= 0:
                    if touched[r, 2] == 1:  # a new edge between large nodes
                        _gl_add(big, k, gidx, glist)
                        if gidx[small] < 0:
                            _gl_add(h, k, gidx, glist)
                    continue
                stamp[k] += 1
                if best_n[h] == small:
                    _rescan(h, graph, nodes, best, lab, gidx)
                    stats[5] += deg[h]
                    _heap_fix(h, heap, pos, hsz, best)
            step = 0.0
            for f in range(nf):
                step += (mu[big, f] - old_mu[f]) ** 2
            if _drift(big, mu, anchor) > budget[big]:
                # the mean left its budget: a new anchor, and twice the room
                _reanchor(big, nodes, lab, graph, giants, anchor, budget, gidx,
                          max(steps * math.sqrt(step), 2.0 * budget[big]), stats)
            else:
                for r in range(nt):
                    h = touched[r, 0]
                    if gidx[h] < 0:
                        _enter(big, h, touched[r, 1], nan, nodes, lab, graph, giants,
                               anchor, budget, gidx)
            gl = _gl_live(big, gidx, glist, ea)
            stats[6] += gl.size
            stats[7] += nt
            for r in range(gl.size):
                _keep(graph, r, mask)
                k = gl[r]
                h = eb[k] if ea[k] == big else ea[k]
                stamp[k] += 1
                ch = _cost(h, big, k, nodes)
                _enter(big, h, k, ch, nodes, lab, graph, giants, anchor, budget, gidx)
                _enter(h, big, k, ch, nodes, lab, graph, giants, anchor, budget, gidx)
                if dirty[h] != m:
                    _improve(h, big, k, ch, best, lab, blist, heap,
                             pos, hsz)
            popk, pope = _settle(big, nodes, lab, graph, giants, anchor, budget, gidx,
                                   best, blist, popk, pope, stats)
        for r in range(nredo):
            g = redo[r]
            stats[9] += 1
            popk, pope = _settle(g, nodes, lab, graph, giants, anchor, budget, gidx,
                                   best, blist, popk, pope, stats)
            _heap_fix(g, heap, pos, hsz, best)
        _heap_fix(big, heap, pos, hsz, best)
        m += 1
    mstate[0] = m
    return 2 if hsz[0] == 0 else 0


def _ranges(total: int, step: int, pause: Callable[[], None]) -> Iterator[tuple[int, int]]:
    for lo in range(0, total, step):
        yield lo, min(lo + step, total)
        pause()


def merge_loop(n: int, cnt: np.ndarray, mu: np.ndarray, ssq: np.ndarray, per: np.ndarray,
               blo: np.ndarray, bhi: np.ndarray, a: np.ndarray, b: np.ndarray,
               elen: np.ndarray, esum: np.ndarray, epair: np.ndarray, baatz: bool,
               shape: float, compact: float, boundary: float, ndim: int, giant: int,
               steps: float, store: Store | None = None,
               pause: Callable[[], None] | None = None, step: int | None = None,
               stamp: np.ndarray | None = None) -> tuple:
    """Greedy merging, cheapest pair first (see the module); returns the merges.

    ``a``, ``b``: the edges' endpoints (0-based, ``a < b``; overwritten), and
    ``stamp`` zeros (made here if not given): columns of one table of the edges, a
    row an edge, where the caller can (as ``cnt`` and ``mu`` of the nodes); ``elen``
    (only read with ``baatz``), ``esum`` and ``epair`` (only with ``boundary``) per
    edge, summed when edges combine. ``giant``: the degree from which a node keeps a
    heap of bounds; ``steps``: a large node's budget in shifts of its mean (at least).

    ``store`` makes the loop's arrays (default: in memory; the run gives file-backed
    ones, :class:`~pipeline.postprocess._bounded.Paged`),
    and ``pause()`` is called after every ``step`` nodes or edges, or ``step / 256``
    merges or ``step / 16`` edges looked at in merges (each touches pages all over the
    graph; the run
    drops the pages it touched there). A pause with a ``keep`` (see :func:`_keep`) also
    drops them inside a merge. The merges are the same either way.
    Returns ``(child_a, child_b, cost, size, work)``: per merge (0-based node IDs), and
    counters of the work done (for the debug log).
    """
    store = store or InMemory()
    step = STEP if step is None else step

    def alloc(name: str, shape: tuple[int, ...], dtype: Any, fill: Any = None) -> np.ndarray:
        assert store is not None
        return store.empty(name, shape, dtype) if fill is None else \
            store.full(name, shape, dtype, fill)

    # a pause also after ``step / 16`` edges looked at: between two pauses, the pages
    # touched stay near the budget even where merges of large nodes touch thousands
    wlimit = (1 << 62) if pause is None else max(1, step // 16)
    pause = pause or (lambda: None)
    ne = a.size
    it = a.dtype  # int32 where the graph allows: half the memory
    ea, eb = a, b  # the edges' endpoints are rewritten as nodes merge: used up
    # a node's fields side by side, a row a node: looking at a node touches a page or
    # two, not one a field (with the graph in files, a page not held is a fault)
    fields = ("deg", "start", "cap", "lab", "length", "best_lo", "best_hi", "spent",
              "best_n", "best_e", "pos", "gidx", "bhead", "bnext", "bprev", "bin", "dirty")
    table = alloc("nodes", (n, len(fields)), it, 0)
    for lo, hi in _ranges(n, step, pause):
        table[lo:hi, fields.index("best_n"):] = -1  # none yet
    col = {f: table[:, c] for c, f in enumerate(fields)}
    reals = alloc("nodes_f", (n, 2 + mu.shape[1]), np.float64, 0)  # best cost, budget, anchor
    for lo, hi in _ranges(n, step, pause):
        reals[lo:hi, 0] = np.inf
    deg = col["deg"]
    for lo, hi in _ranges(ne, step, pause):
        _count(ea, eb, deg, lo, hi)
    start = col["start"]  # each node's block of edge IDs in the pool
    cap = col["cap"]
    lab = col["lab"]
    for lo, hi in _ranges(n, step, pause):
        _starts(deg, start, cap, lab, lo, hi)
    length = col["length"]
    P = List()
    P.append(alloc("pool0", (2 * ne + ne // 2 + POOL_SPARE,), it))
    for lo, hi in _ranges(ne, step, pause):
        _fill(ea, eb, start, length, P[0], lo, hi)
    pend = np.array([2 * ne, 0, 0], np.int64)  # the pool's end, its unused entries, need
    stamp = alloc("stamp", (ne,), it, 0) if stamp is None else stamp
    # the caller's pause may also drop pages inside a merge (:func:`_keep`)
    keep = getattr(pause, "keep", None)
    graph: tuple = (start, length, cap, P, ea, eb, deg, stamp, pend)
    if keep is not None:
        assert KEEP_EVERY & (KEEP_EVERY - 1) == 0, "KEEP_EVERY: a power of two"
        keep[0][3] = KEEP_EVERY - 1
        graph = (*graph, keep)
    best = (reals[:, 0], col["best_n"], col["best_e"], col["best_lo"], col["best_hi"])
    heap = alloc("heap", (n,), it)
    pos = col["pos"]
    hsz = np.zeros(1, np.int64)
    gidx = col["gidx"]
    anchor = reals[:, 2:]
    budget = reals[:, 1]
    # a large node's heap: blocks of an arena the store makes (in memory, each its own
    # array), repacked into a new arena between steps; its edges to other large nodes
    # (few: in memory)
    ityp = numba.from_dtype(it)
    arena = not isinstance(store, InMemory)
    heaps = HEAP_ARENA if arena else 0
    giants = (List.empty_list(types.float64[::1]), List.empty_list(ityp[:, ::1]),
              alloc("hsize", (n,), it, 0),
              col["spent"],  # entries taken off since its anchor
              alloc("heaps_k0", (heaps,), np.float64), alloc("heaps_e0", (heaps, 4), it),
              np.zeros(2, np.int64))  # the arena's end, entries outside it
    generations = [0, 0]  # of the pool, of the heaps' arena

    def repack_heaps(giants: tuple) -> tuple:
        """Move the heaps to a new arena once half of it is used or heaps lie outside it."""
        AK, aend = giants[4], giants[6]
        if not arena or (aend[1] == 0 and aend[0] <= AK.size // 2):
            return giants
        count = len(giants[0])
        live = sum(_lh_live(giants, lo, hi) for lo, hi in _ranges(count, step, pause))
        generations[1] += 1
        g = generations[1]
        size = 4 * live + HEAP_ARENA
        K, E = alloc(f"heaps_k{g}", (size,), np.float64), alloc(f"heaps_e{g}", (size, 4), it)
        at = np.zeros(1, np.int64)
        gi = 0
        while gi < count:  # a pause every few MB copied: late heaps are large
            gi = _lh_repack(giants, K, E, at, gi, count, 4 * step)
            pause()
        aend[0], aend[1] = at[0], 0
        store.drop(f"heaps_k{g - 1}")
        store.drop(f"heaps_e{g - 1}")
        return giants[:4] + (K, E, aend)

    glist = (List.empty_list(ityp[::1]), alloc("glen", (n,), it, 0))
    blist = tuple(col[f"b{name}"] for name in ("head", "next", "prev", "in"))
    dirty = col["dirty"]
    stats = np.zeros(10, np.int64)
    nodes = (cnt, mu, ssq, per, blo, bhi, elen, esum, epair, baatz, shape, compact,
             boundary, ndim)
    for lo, hi in _ranges(n, step, pause):
        _first_giants(lo, hi, giant, nodes, lab, graph, giants, anchor, budget, gidx, glist)
        giants = repack_heaps(giants)
    for lo, hi in _ranges(ne, step, pause):
        _giant_edges(lo, hi, ea, eb, gidx, glist)
    for lo, hi in _ranges(n, step, pause):
        _first_bests(lo, hi, nodes, lab, graph, giants, anchor, budget, gidx, best)
    for lo, hi in _ranges(n, step, pause):
        _first_settles(lo, hi, nodes, lab, graph, giants, anchor, budget, gidx, best, blist,
                       stats)
        giants = repack_heaps(giants)
    for lo, hi in _ranges(n, step, pause):
        _heap_add(lo, hi, best[1], heap, pos, hsz)
    for hi in range(int(hsz[0]) // 2, 0, -step):
        _heapify(max(0, hi - step), hi, heap, pos, hsz, best)
        pause()
    out = (alloc("out_a", (n,), np.int64), alloc("out_b", (n,), np.int64),
           alloc("out_c", (n,), np.float64), alloc("out_s", (n,), np.int64))
    mstate = np.array([n], np.int64)
    while True:
        status = _merges(n, max(1, step // 256), wlimit, mstate, graph, nodes, lab, best,
                         heap, pos, hsz, gidx, giants, glist, blist, anchor, budget, dirty,
                         stats, out, giant, steps)
        if status == 2:
            break
        if status == 1:  # a new pool, every block copied in tightly, with room to spare
            total = sum(_live(length, lo, hi) for lo, hi in _ranges(n, step, pause))
            generations[0] += 1
            generation = generations[0]
            size = total + total // 2 + int(pend[2]) + POOL_SPARE
            new = alloc(f"pool{generation}", (size,), it)
            at = np.zeros(1, np.int64)
            for lo, hi in _ranges(n, step, pause):
                _repack(start, length, cap, P[0], new, at, lo, hi)
            P[0] = new
            pend[0], pend[1] = at[0], 0
            del new
            store.drop(f"pool{generation - 1}")
        giants = repack_heaps(giants)
        pause()
    k = int(mstate[0]) - n
    return out[0][:k], out[1][:k], out[2][:k], out[3][:k], stats
