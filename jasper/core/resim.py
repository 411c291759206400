"""The relative similarity loss (Jasper's L_resim): its plain O(B^4) definition and the exact O(M log M) kernel
that training runs, M = B(B-1)/2 in-batch text pairs. :mod:`jasper.core.losses` weighs it with the other two losses.

The kernel is tested against the definition for value and gradient on random inputs (tests/test_resim_fast.py).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor


def pair_similarities(vectors: Tensor) -> Tensor:
    """The strict upper triangle of ``V V^T`` as a vector of length ``M = B(B-1)/2``: ``(B, d) -> (M,)``."""
    rows, cols = torch.triu_indices(len(vectors), len(vectors), offset=1, device=vectors.device)
    return (vectors @ vectors.T)[rows, cols]


def relative_similarity_loss_reference(student: Tensor, teacher: Tensor, margin: float = 0.015) -> Tensor:
    """Ranking loss over every two in-batch text pairs, written plainly (O(B^4) memory).

    With ``s, t`` the pair similarities (:func:`pair_similarities`) of student and teacher, over all index pairs
    ``p < q`` of the ``M`` text pairs::

        term(p, q) = relu(s_q - s_p + margin)   if t_q <  t_p   (the teacher ranks pair p above pair q)
                     relu(s_p - s_q + margin)   otherwise       (ties included)

    and the loss is the sum of terms divided by ``M(M-1)/2``. Zero when ``B < 3`` (fewer than two pairs).
    Kept as the definition the fast path is tested against.

    >>> v = F.normalize(torch.randn(5, 8), dim=-1)
    >>> relative_similarity_loss_reference(v, v, margin=0.0)  # a student that equals its teacher
    tensor(0.)
    """
    check_batch(student, teacher)
    s, t = pair_similarities(student), pair_similarities(teacher)
    m = len(s)
    if m < 2:
        return student.sum() * 0.0
    teacher_prefers_p = t.unsqueeze(0) < t.unsqueeze(1)  # [p, q]: t_q < t_p
    s_p, s_q = s.unsqueeze(1), s.unsqueeze(0)
    terms = torch.where(teacher_prefers_p, F.relu(s_q - s_p + margin), F.relu(s_p - s_q + margin))
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool, device=s.device), diagonal=1)
    return terms[upper].sum() / (m * (m - 1) / 2)


def teacher_pair_order(teacher: Tensor) -> Tensor:
    """The teacher's ranking of the in-batch text pairs, for :func:`relative_similarity_loss`: ``(B, d_t) -> (M,)``.

    A permutation of the ``M = B(B-1)/2`` pair indices (:func:`pair_similarities` order) that sorts the teacher's
    pair similarities ascending; tied pairs keep their index order, so of two tied pairs the later index counts as
    ranked above, which is the reference's tie rule. It depends on the teacher only, so compute it once per batch
    and pass it to every head: ``order = teacher_pair_order(t)`` then
    ``relative_similarity_loss(s_head, t, teacher_order=order)`` for each head. No gradient flows to the teacher.

    >>> teacher_pair_order(torch.eye(3))  # all pair similarities tie at 0: index order kept
    tensor([0, 1, 2])
    """
    if teacher.ndim != 2:
        raise ValueError(f"teacher must be a (B, d) matrix, got shape {tuple(teacher.shape)}")
    b = len(teacher)
    with torch.no_grad(), _one_thread_if_small(b * (b - 1) // 2, teacher.device):
        t = _upper_triangle(_compute_dtype(teacher, teacher))
        return torch.sort(
            _sort_key(t), stable=True
        ).indices  # same order as sorting t, integer sorts are faster


def relative_similarity_loss(
    student: Tensor, teacher: Tensor, margin: float = 0.015, teacher_order: Tensor | None = None
) -> Tensor:
    """Relative similarity loss as used in training: same value and gradient as the reference, in O(M) memory.

    ``student (B, d_s)`` and ``teacher (B, d_t)`` are L2-normalised; ``teacher_order`` is
    :func:`teacher_pair_order` of ``teacher`` when the caller already has it (several heads share one teacher).
    Exact, not sampled. Ordered by the teacher, every term is ``relu(s_low - s_high + margin)`` between a pair and
    one ranked above it, so the loss is piecewise linear in ``s``: it needs only, for each pair, how many partners
    above and below it have an active hinge. Those counts come from rank thresholds (one sort, ``searchsorted``)
    and prefix dominance counts on a wavelet tree over the ranks (:func:`_prefix_rank_counts`): O(M log M) time and
    O(M) memory, M = B(B-1)/2, never an M x M matrix. Below 32768 pairs it runs on one intra-op thread.
    float64 inputs are computed in float64, anything else in float32. Gradient flows to ``student`` only. NaN/inf
    student similarities give a NaN loss and gradient, as the reference does: the caller decides what to do.

    >>> s, t = F.normalize(torch.randn(6, 4), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    >>> bool(torch.isclose(relative_similarity_loss(s, t), relative_similarity_loss_reference(s, t)))
    True
    """
    check_batch(student, teacher)
    x = _compute_dtype(student, student)  # (B, d_s), differentiable
    b = len(x)
    m = b * (b - 1) // 2
    if m < 2:
        return x.sum() * 0.0
    if teacher_order is not None and teacher_order.shape != (m,):
        raise ValueError(
            f"teacher_order has shape {tuple(teacher_order.shape)} but a batch of {b} has {m} pairs: "
            "pass teacher_pair_order(teacher) of this batch's teacher"
        )
    with _one_thread_if_small(m, x.device):
        if teacher_order is None:
            teacher_order = teacher_pair_order(teacher)
        return _OrderedHingeMean.apply(x, teacher_order.to(x.device), margin)


_SMALL_PAIRS = 32768  # torch's own grain size: below it, element-wise CPU ops already run on one thread


@contextlib.contextmanager
def _one_thread_if_small(m: int, device: torch.device):
    """Run a CPU problem of ``m < 32768`` pairs on one intra-op thread (restored afterwards).

    Below that size torch already runs element-wise ops on one thread (``at::internal::GRAIN_SIZE``); the few
    others (matmul, sort, boolean indexing) would open a parallel region for microseconds of work, and the region's
    start and barrier then cost more than the work, many times more when the cores are shared with other jobs.
    """
    threads = torch.get_num_threads()
    if m >= _SMALL_PAIRS or device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _compute_dtype(x: Tensor, like: Tensor) -> Tensor:
    """float64 stays float64, float32 stays float32, anything else (bf16, fp16) goes to float32."""
    return x if like.dtype in (torch.float32, torch.float64) else x.float()


def _upper_triangle(vectors: Tensor) -> Tensor:
    """Same values and order as :func:`pair_similarities`, through a boolean mask (B^2 bytes, not 2M int64s)."""
    b = len(vectors)
    upper = torch.ones(b, b, dtype=torch.bool, device=vectors.device).triu_(diagonal=1)
    return (vectors @ vectors.T)[upper]


class _OrderedHingeMean(torch.autograd.Function):
    """``sum_{i<j} relu(u_i - u_j + margin) / (M(M-1)/2)`` with ``u = upper_triangle(X X^T)[order]``.

    Takes the student vectors ``X (B, d)`` so that the backward (``dL/dX = (G + G^T) X`` with ``G (B, B)`` the
    gradient w.r.t. the upper triangle) runs here too, under the same thread policy as the forward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, margin: float) -> Tensor:
        u = _upper_triangle(x.detach()).index_select(0, order)  # (M,) pair similarities in teacher order
        ranked = _ranked_active_counts(u, margin)  # all (M,), indexed by rank of u; None: not all finite
        if ranked is None:  # NaN in, NaN out (and a NaN gradient), as the plain formula gives
            ctx.save_for_backward(x)
            return x.new_tensor(float("nan"))
        sorted_u, low, high, by_rank = ranked
        slope = low - high  # (M,) int32: d(sum of terms) / d u, per rank
        # Each active term is u_low - u_high + margin, so the sum is sum_k u_k * slope_k + margin * #active
        # (the margin rounded as the reference's dtype rounds it).
        margin_t = torch.tensor(margin, dtype=u.dtype).double()
        total = (sorted_u.double() * slope.double()).sum() + margin_t.to(u.device) * low.sum(
            dtype=torch.float64
        )
        pairs_of_pairs = len(u) * (len(u) - 1) / 2
        ctx.save_for_backward(x, order.index_select(0, by_rank), slope)  # pair index of each rank, its slope
        ctx.scale = 1.0 / pairs_of_pairs
        return (total / pairs_of_pairs).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        if len(ctx.saved_tensors) == 1:  # the forward met NaN/inf
            return torch.full_like(ctx.saved_tensors[0], float("nan")), None, None
        x, pair_index, slope = ctx.saved_tensors
        b = len(x)
        with _one_thread_if_small(b * (b - 1) // 2, x.device):
            grad_ranked = slope.to(x.dtype) * (grad_out.to(x.dtype) * ctx.scale)  # (M,) per rank
            grad_pairs = torch.empty_like(grad_ranked).index_copy_(
                0, pair_index, grad_ranked
            )  # (M,) per pair
            upper = torch.ones(b, b, dtype=torch.bool, device=x.device).triu_(diagonal=1)
            grad_sim = torch.zeros(b, b, dtype=x.dtype, device=x.device).masked_scatter_(upper, grad_pairs)
            return (grad_sim + grad_sim.T) @ x, None, None


def _ranked_active_counts(u: Tensor, margin: float) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Active hinge counts of every element of ``u`` (teacher order), listed by the element's rank in ``u``.

    Returns ``(sorted_u, low, high, by_rank)``, all ``(M,)``, or None when ``u`` holds NaN/inf: ``by_rank`` (int64)
    is an ascending argsort of ``u``, ``sorted_u = u[by_rank]``, and for the element at ``i = by_rank[r]``
    (int32 counts)::

        low[r]  = #{j > i: relu(u_i - u_j + margin) > 0}     (active as the lower element of a term)
        high[r] = #{k < i: relu(u_k - u_i + margin) > 0}     (active as the upper element)

    1. Exact hinge boundaries, as ranks: ranks (a permutation of ``0..M-1``) follow ``sorted_u``, and the hinge
       predicate is monotone in the partner's value, so ``qa_i = #{j: relu(u_i - u_j + margin) > 0}`` partners (in
       all) have an active hinge with ``i`` below them, exactly those of rank ``< qa_i``; likewise the ``qb_i`` of
       rank ``< qb_i`` have an inactive one with ``i`` above them (:func:`_hinge_rank_thresholds`).
    2. Only prefix counts remain: ``low_i = qa_i - #{j <= i: rank_j < qa_i}`` and
       ``high_i = i - #{k < i: rank_k < qb_i}``, ``2M`` dominance queries answered together by
       :func:`_prefix_rank_counts` in O(M log M) time and O(M) memory.
    """
    if len(u) >= 2**31 - 1:
        raise ValueError(f"relative_similarity_loss: {len(u)} pairs is more than int32 counts allow")
    sorted_keys, by_rank = torch.sort(_sort_key(u))
    sorted_u = _from_sort_key(sorted_keys, u.dtype)  # u[by_rank], ascending (-0.0 read as 0.0)
    del sorted_keys
    # NaN sorts last, so the two ends decide whether every value is finite.
    if not bool(torch.isfinite(sorted_u[[0, -1]]).all()):
        return None
    qa, qb = _hinge_rank_thresholds(sorted_u, margin)  # (M,) int32 each
    m = len(u)
    ranks = torch.arange(m, dtype=torch.int32, device=u.device)
    rank_of = torch.empty_like(ranks).scatter_(0, by_rank, ranks)  # (M,) rank of the element at each position
    position = by_rank.to(torch.int32)  # (M,) position of the element of each rank
    # Queries in rank order (nearby thresholds, so each level's lookups stay in cache): [0, M) count ranks < qa in
    # positions [0, i]; [M, 2M) ranks < qb in positions [0, i).
    prefix = torch.cat([position + 1, position])  # (2M,)
    below = _prefix_rank_counts(rank_of, prefix, torch.cat([qa, qb]))  # (2M,)
    low = qa.sub_(below[:m])
    high = position.sub_(below[m:])
    return sorted_u, low, high, by_rank


def _prefix_rank_counts(rank_of: Tensor, prefix: Tensor, threshold: Tensor) -> Tensor:
    """``count[k] = #{i < prefix[k]: rank_of[i] < threshold[k]}`` for a permutation ``rank_of`` of ``0..M-1``.

    ``rank_of (M,)``, ``prefix (Q,)`` in ``[0, M]``, ``threshold (Q,)`` in ``[0, M]``, all int32; returns ``(Q,)``
    int32. A wavelet tree over the rank bits, most significant first, kept as one length-``M`` array: at the level
    with shift ``s`` the array holds the ranks stably sorted by ``rank >> s``, so group ``g`` (the ranks
    ``[g 2^s, (g+1) 2^s)``) sits at ``[g 2^s, ...)`` in position order; ranks being a permutation, every group
    start is known without counting. Each query follows its threshold's group down, keeping ``end``, the index in
    this level's array where its prefix's part of the group ends, and ``start``, where the group starts. Per level,
    with ``h = 2^(s-1)`` and ``ones[k]`` the number of ranks with bit ``s-1`` set among the first ``k`` (one
    cumsum); the groups before ``g`` hold ``ones[start] = start / 2`` of them:

    * bit of the threshold clear: the query goes to the lower half, at ``start + zeros in its part``
      ``= (end - ones[end]) + start / 2``;
    * bit set: the prefix's ranks with the bit clear are all below the threshold (counted: ``end - new end + h``),
      and the query goes to the upper half, at ``start + h + ones in its part = ones[end] + h + start / 2``;
    * the ranks are stably partitioned by the bit within each group with the same two formulas (one scatter).

    So one ``table = [k - ones[k] | ones[k] + h]`` (length ``2(M+1)``) gives every new index by one gather.
    ``log2 M`` levels, each about 20 element-wise passes over ``M`` and ``Q`` int32s; no sort.
    """
    m, device = len(rank_of), rank_of.device
    levels = m.bit_length()  # 2^levels > M >= every threshold: one group at the top
    values, next_values = rank_of.clone(), torch.empty_like(rank_of)  # (M,) ranks in this level's order
    slot = torch.arange(m + 1, dtype=torch.int32, device=device)  # (M+1,) 0..M
    table = torch.empty(2 * (m + 1), dtype=torch.int32, device=device)  # [k - ones[k] | ones[k] + h]
    ones = torch.zeros(m + 1, dtype=torch.int32, device=device)
    value_bit, value_base, index = (torch.empty(m, dtype=torch.int32, device=device) for _ in range(3))
    destination = torch.empty(m, dtype=torch.long, device=device)
    end, next_end = prefix.clone(), torch.empty_like(prefix)  # (Q,)
    start, count = torch.zeros_like(prefix), torch.zeros_like(prefix)  # (Q,)
    q_high, q_bit, q_base, q_index = (torch.empty_like(prefix) for _ in range(4))
    for shift in range(levels, 0, -1):
        h = 1 << (shift - 1)
        torch.bitwise_and(values, h, out=value_bit).clamp_(max=1)  # (M,) bit shift-1 of each rank
        torch.cumsum(value_bit, 0, dtype=torch.int32, out=ones[1:])
        torch.sub(slot, ones, out=table[: m + 1])
        torch.add(ones, h, out=table[m + 1 :])
        # Queries.
        torch.bitwise_and(threshold, h, out=q_high)  # h where the threshold's bit is set, else 0
        torch.clamp(q_high, max=1, out=q_bit)
        torch.add(end, q_bit, alpha=m + 1, out=q_index)
        torch.index_select(table, 0, q_index, out=next_end)
        torch.bitwise_right_shift(start, 1, out=q_base)
        next_end.add_(q_base)
        count.addcmul_(end.sub_(next_end).add_(h), q_bit)  # bit set: the prefix's part with the bit clear
        start.add_(q_high)
        end, next_end = next_end, end
        if shift == 1:
            break  # the last partition is not needed
        # Elements: the same formulas with end = own index, start = 2 h (rank >> shift).
        torch.add(slot[:m], value_bit, alpha=m + 1, out=index)
        torch.index_select(table, 0, index, out=next_values)
        torch.bitwise_right_shift(values, shift, out=value_base).bitwise_left_shift_(shift - 1)
        torch.add(next_values, value_base, out=destination)
        next_values.scatter_(0, destination, values)
        values, next_values = next_values, values
    return count


_INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64}


def _sort_key(x: Tensor) -> Tensor:
    """Integers ordered like the floats ``x`` (same width), equal exactly where the floats compare equal.

    Non-negative floats keep their bits; negative ones get their magnitude bits flipped, so that more negative
    means smaller. ``-0.0`` is first turned into ``0.0`` (they compare equal); NaNs land beyond the infinities.
    """
    bits = (x + 0.0).view(_INT_OF[x.dtype])
    return bits ^ ((bits >> (8 * x.element_size() - 1)) & torch.iinfo(bits.dtype).max)


def _from_sort_key(key: Tensor, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`_sort_key` (the bit flip is its own inverse)."""
    return (key ^ ((key >> (8 * key.element_size() - 1)) & torch.iinfo(key.dtype).max)).view(dtype)


def _hinge_rank_thresholds(sorted_u: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """For ascending ``sorted_u (M,)``, per element ``x``: ``qa = #{v: active(x, v)}``, ``qb = #{v: not active(v, x)}``.

    ``active(low, high)`` is the reference's own float expression ``relu(low - high + margin) > 0``, monotone in
    either argument, so both counts are searchsorted-like boundaries in ``sorted_u``. The guesses
    ``searchsorted(sorted_u, x + margin)`` and ``searchsorted(sorted_u, x - margin, right=True)`` are right
    unless a value lies within rounding of the boundary (a neighbour check finds those, typically a handful);
    these few get an exact bisection over the indices, evaluating the predicate itself. Returns two int32 ``(M,)``.
    """
    qa = _count_true_prefix(
        sorted_u,
        torch.searchsorted(sorted_u, sorted_u + margin, out_int32=True),
        lambda v, x: _active(x, v, margin),  # true for the smaller partners v
    )
    qb = _count_true_prefix(
        sorted_u,
        torch.searchsorted(sorted_u, sorted_u - margin, out_int32=True, right=True),
        lambda v, x: ~_active(v, x, margin),  # true for the smaller partners v
    )
    return qa, qb


def _active(low: Tensor, high: Tensor, margin: float) -> Tensor:
    """Whether ``relu(low - high + margin)`` is active, with the reference's exact float expression."""
    return (low - high + margin) > 0


def _count_true_prefix(sorted_u: Tensor, guess: Tensor, pred) -> Tensor:
    """Per element ``x`` of ``sorted_u``: ``#{v in sorted_u: pred(v, x)}`` for ``pred`` true on a prefix of values.

    ``guess (M,)`` int32 is usually right: it is checked against its two neighbours, and the elements where it is
    not get a vectorised bisection over ``[0, M]``.
    """
    m = len(sorted_u)
    below = sorted_u.index_select(0, (guess - 1).clamp_(min=0))
    at = sorted_u.index_select(0, guess.clamp(max=m - 1))
    right = ((guess == 0) | pred(below, sorted_u)) & ((guess == m) | ~pred(at, sorted_u))
    if bool(right.all()):
        return guess
    wrong = (~right).nonzero().squeeze(1)
    x = sorted_u.index_select(0, wrong)
    lo = torch.zeros_like(wrong)  # pred true on [0, lo)
    hi = torch.full_like(wrong, m)  # pred false on [hi, M)
    for _ in range(m.bit_length()):
        mid = (lo + hi) // 2
        open_ = lo < hi
        true_at_mid = pred(sorted_u.index_select(0, mid.clamp(max=m - 1)), x)
        lo = torch.where(open_ & true_at_mid, mid + 1, lo)
        hi = torch.where(open_ & ~true_at_mid, mid, hi)
    return guess.index_copy_(0, wrong, lo.to(guess.dtype))


def check_batch(student: Tensor, teacher: Tensor) -> None:
    if student.ndim != 2 or teacher.ndim != 2 or len(student) != len(teacher):
        raise ValueError(
            f"student and teacher must be (B, d) matrices with the same B, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}: every text needs exactly one teacher vector"
        )
