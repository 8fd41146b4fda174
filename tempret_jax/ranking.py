"""Per-query AP and nDCG of EK-100 MIR by counting ranks, not sorting rows (numba kernels).

A query's AP and nDCG depend only on where its relevant items rank (11% of EK-100's test
matrix), so a query's row is never sorted. For a row x of n similarities with m relevant items
(rel > 0):

1. The relevant items are sorted by (descending similarity, column): a bucket sort over
   ``_CELLS * m`` cells of equal width between their largest and smallest similarity, then
   insertion within the cells (`_sort_descending`).
2. Every item j of the row, relevant or not, finds b(j), the number of relevant items ranked
   above it: its cell leaves only the relevant items of the same cell to compare exactly
   (none or one, mostly; a binary search when there are more), and ``count[b(j)] += 1``.
   The cell is floor((top - x) * scale), which never increases with x (rounding keeps order),
   so a relevant item in an earlier cell is strictly larger and one in a later cell strictly
   smaller: only the same cell can hold a tie or a closer call.
3. count[0] + ... + count[i] counts the items ranked above the i-th relevant item (from 0),
   relevant or not, and that item itself: its rank (items above it) is the sum less one.

Ranks are those of a stable sort by descending similarity (ties in column order, -0.0 equal to
0.0), compared in the input's own dtype, so float64 is exact. AP and nDCG then follow the
definitions in docs/design.md, Metrics, summed in float64. The work is linear in the row but
for the relevant items' sort; a row whose similarities crowd into a few cells degrades to a
binary search per item and a merge sort, never to worse.

Queries that are not rows in memory (T2V's, of the transposed view) are copied in tiles of
`_TILE` into a C-ordered scratch, so that the view is read along its memory. The kernels
release the GIL: callers spread query ranges over threads (`metrics.mir_per_row`).
"""

from __future__ import annotations

import collections

import numba
import numpy as np

# Cells per relevant item: about 2% of EK-100's items then meet more than one relevant item
# in their cell (random similarities); more cells cost more than they save.
_CELLS = 16
# Queries copied at once: a transposed view's row is a column, read 16 values to a line.
_TILE = 16

_jit = numba.njit(nogil=True, cache=True)


@numba.njit(nogil=True, cache=True, inline="always")
def _cell(top, x, scale, n_cells):
    """The cell of value x: 0 (at or above ``top``) to n_cells, never increasing with x."""
    d = (top - x) * scale
    if not d > 0:  # also NaN: an infinite difference times a scale of 0
        return 0
    if d >= n_cells:  # also the far tail, where d may be inf
        return n_cells
    return int(d)


@_jit
def _sort_descending(v, order, cells, start, n_cells):
    """Sorts ``v`` (m,) by descending value, ties in position order, into ``order`` (m,
    positions), by ``n_cells`` cells. Fills ``start`` (n_cells + 3,): start[c + 1] is cell c's
    first sorted position and start[c + 2] its end. ``cells`` (m,) is working space. Returns
    (top, scale), which place any value in its cell (`_cell`)."""
    m = v.shape[0]
    top, bottom = v.max(), v.min()
    spread = top - bottom
    # A spread of 0 (all equal) or inf (overflow): one cell, the binary search does the rest.
    scale = n_cells / spread if 0 < spread < np.inf else 0.0
    start[:n_cells + 3] = 0
    for k in range(m):
        cells[k] = _cell(top, v[k], scale, n_cells)
        start[cells[k] + 1] += 1
    total = 0
    for c in range(1, n_cells + 2):  # start[c + 1]: the end of cell c
        total += start[c]
        start[c] = total
    for k in range(m - 1, -1, -1):  # counting sort by cell, stable; start[c + 1] -> its start
        start[cells[k] + 1] -= 1
        order[start[cells[k] + 1]] = k
    start[n_cells + 2] = m
    # Insertion by value: an earlier cell's values are larger, so no item leaves its cell.
    # Crowded cells (values bunched, not equal) would make it quadratic: merge sort instead.
    budget = 8 * m + 64
    for t in range(1, m):
        k = order[t]
        s = t
        while s > 0 and v[order[s - 1]] < v[k]:
            order[s] = order[s - 1]
            s -= 1
        order[s] = k
        budget -= t - s
        if budget < 0:
            order[:m] = np.argsort(-v, kind="mergesort")  # stable: ties in position order
            break
    return top, scale


# Per-thread working space of `score_queries`, sized for a query of n items: allocating it
# per query would cost as much as ranking it.
_Work = collections.namedtuple("_Work", "columns values order cells ranked ranked_columns "
                                        "ranked_rel count start item_cells")


@_jit
def _query_scores(x, r, discount, work):
    """(AP, nDCG) of one query: similarities x (n,), relevances r (n,); NaN where undefined.
    ``discount`` (n,) is 1 / log2(rank + 2)."""
    n = x.shape[0]
    m = 0
    for j in range(n):  # branch-free: most items are not relevant
        work.columns[m] = j
        m += r[j] > 0
    if m == 0:
        return np.nan, np.nan
    columns, values, order = work.columns[:m], work.values[:m], work.order[:m]
    for k in range(m):
        values[k] = x[columns[k]]
    n_cells = _CELLS * m
    top, scale = _sort_descending(values, order, work.cells[:m], work.start, n_cells)
    # The relevant items best first, and one more entry that no item is below, so that the
    # compare after an empty cell needs no branch (its next relevant item is smaller).
    ranked, ranked_columns = work.ranked[:m + 1], work.ranked_columns[:m + 1]
    ranked_rel = work.ranked_rel[:m]
    for i in range(m):
        ranked[i], ranked_columns[i] = values[order[i]], columns[order[i]]
        ranked_rel[i] = r[ranked_columns[i]]
    ranked[m], ranked_columns[m] = -np.inf, n
    count = _count_above(x, ranked, ranked_columns, top, scale, n_cells, work)
    return _scores(ranked_rel, count, discount, work)


@_jit
def _count_above(x, ranked, ranked_columns, top, scale, n_cells, work):
    """count (m + 1,): count[b] is the number of items of x (n,), relevant ones included, that
    have b of the ranked relevant items (m + 1,: values and columns, best first, then the end
    entry) above them. top, scale, n_cells and work.start are `_sort_descending`'s."""
    m = ranked.shape[0] - 1
    count = work.count[:m + 1]
    count[:] = 0
    item_cells, start = work.item_cells, work.start
    for j in range(x.shape[0]):  # apart from the compares below, so that it vectorises
        item_cells[j] = _cell(top, x[j], scale, n_cells)
    for j in range(x.shape[0]):
        v = x[j]
        lo, hi = start[item_cells[j] + 1], start[item_cells[j] + 2]
        if hi - lo > 1:  # a crowded cell (2% of EK-100's items with random similarities)
            while lo < hi:
                mid = (lo + hi) >> 1
                if ranked[mid] > v or (ranked[mid] == v and ranked_columns[mid] < j):
                    lo = mid + 1
                else:
                    hi = mid
            count[lo] += 1
        else:
            above = (ranked[lo] > v) | ((ranked[lo] == v) & (ranked_columns[lo] < j))
            count[lo + above] += 1
    return count


@_jit
def _scores(ranked_rel, count, discount, work):
    """AP and nDCG from the relevant items' relevances in rank order (m,) and the counts
    (m + 1,) of `_count_above`."""
    m = ranked_rel.shape[0]
    counted = 0
    gained = 0.0
    precisions = 0.0
    hits = 0
    dcg = 0.0
    for i in range(m):
        counted += count[i]
        rank = counted - 1  # items above the i-th relevant item
        gained += ranked_rel[i]
        if ranked_rel[i] == 1:  # a hit: precision is the raw relevance so far over the rank
            precisions += gained / (rank + 1)
            hits += 1
        if rank < m:  # nDCG's cut-off: the number of relevant items
            dcg += ranked_rel[i] * discount[rank]
    ideal = work.order[:m]
    _sort_descending(ranked_rel, ideal, work.cells[:m], work.start, 2 * m)
    ideal_dcg = 0.0
    for i in range(m):
        ideal_dcg += ranked_rel[ideal[i]] * discount[i]
    return (precisions / hits if hits > 0 else np.nan,
            dcg / ideal_dcg if ideal_dcg > 0 else np.nan)


@_jit
def score_queries(sim, rel, first, last, ap, ndcg):
    """Writes AP and nDCG of queries first..last - 1 into ``ap`` and ``ndcg``.

    Args:
      sim: (Q, n) similarities, float32 or float64, any layout (T2V: the transposed view).
      rel: (Q, n) relevances, float32 or float64.
      first, last: the query range.
      ap, ndcg: (Q,) float64 outputs; NaN where a query has no hit (AP) or nothing relevant
        (nDCG).
    """
    n = sim.shape[1]
    discount = 1 / np.log2(np.arange(n) + 2.0)
    index = np.empty((5, n + 1), np.int64)
    work = _Work(index[0], np.empty(n, sim.dtype), index[1], index[2],
                 np.empty(n + 1, sim.dtype), index[3], np.empty(n), index[4],
                 np.empty(_CELLS * n + 3, np.int32), np.empty(n, np.int32))
    if sim.flags.c_contiguous and rel.flags.c_contiguous:  # rows along memory: no copy
        for q in range(first, last):
            ap[q], ndcg[q] = _query_scores(sim[q], rel[q], discount, work)
        return
    x_tile = np.empty((_TILE, n), sim.dtype)
    r_tile = np.empty((_TILE, n), rel.dtype)
    for q0 in range(first, last, _TILE):
        size = min(_TILE, last - q0)
        for j in range(n):  # along a transposed view's memory: the tile's queries side by side
            for t in range(size):
                x_tile[t, j] = sim[q0 + t, j]
                r_tile[t, j] = rel[q0 + t, j]
        for t in range(size):
            ap[q0 + t], ndcg[q0 + t] = _query_scores(x_tile[t], r_tile[t], discount, work)
