"""Matching the nodules of a prior study to those of the current one.

1. The prior centres are mapped into the current study's LPS (mm) by the registration.
2. Gate: a prior and a current nodule may be the same lesion only when their distance
   is at most ``max(min_gate_mm, gate_factor * larger diameter)``.  The floor (12 mm)
   covers what a lung-mask affine leaves (a few mm of breath-hold and posture change
   inside the lungs, more at the bases) plus the centring error of a small nodule; the
   size term lets a large nodule, whose centre moves with uneven growth and whose
   outline two readers place differently, move by up to its own diameter.  One diameter
   keeps the gate inside the nodule's neighbourhood: a new nodule beside a resolved one
   is not taken for it unless it lies within the old one's extent.  On synthetic pairs
   whose current centres were moved by a smooth random field of 8 mm per axis (about
   10 mm RMS, beyond what an affine usually leaves), a 10 mm floor matched 85 % of
   lesions right, 12 mm 95 %, 15 mm 99 %; without that field all three match 100 %.
   12 mm is the compromise with new nodules that appear next to resolved ones.
3. Optimal one-to-one assignment (``scipy.optimize.linear_sum_assignment``) of the
   gated pairs, each costing its distance over its gate (0 to 1), against leaving a
   nodule unmatched at ``unmatched_cost`` each (0.5: any gated pair beats two unmatched
   nodules; one close pair beats two far ones that would need it broken).
4. Refinement: each mapped prior centre is moved by the median residual (current
   minus mapped prior) of the matched pairs (with three or more), plus the mean of
   what is left of the *other* pairs' residuals, weighted by a Gaussian of their
   distance (``refine_sigma_mm``) and shrunk towards no move (``refine_prior`` pairs'
   worth of zero); then steps 2-3 again, at most ``refine_rounds`` times.  This takes
   out what the registration left, globally and locally, without letting a pair
   confirm itself.

Inputs are anything with ``center_lps_mm`` and ``diameter_mm`` (a
:class:`pacs_node.imaging.findings.Finding`, or :class:`NoduleSite`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment


class Located(Protocol):
    """A nodule: centre in its study's LPS (mm) and mean diameter (mm)."""

    @property
    def center_lps_mm(self) -> tuple[float, float, float]: ...

    @property
    def diameter_mm(self) -> float: ...


@dataclass(frozen=True)
class NoduleSite:
    """A minimal :class:`Located`: centre (LPS mm) and diameter (mm)."""

    center_lps_mm: tuple[float, float, float]
    diameter_mm: float


@dataclass(frozen=True)
class MatchParams:
    """Parameters of :func:`match_nodules` (lengths in mm); see the module docstring."""

    min_gate_mm: float = 12.0
    gate_factor: float = 1.0
    unmatched_cost: float = 0.5
    refine_rounds: int = 2
    refine_sigma_mm: float = 30.0
    refine_prior: float = 0.5


@dataclass(frozen=True)
class Match:
    """One prior nodule matched to one current nodule.

    Attributes
    ----------
    prior, current
        Indices into the prior and current lists.
    distance_mm
        Distance (mm) between the current centre and the prior centre mapped by the registration.
    residual_mm
        The same after the local refinement (what is left unexplained).
    gate_mm
        The gate this pair passed.
    """

    prior: int
    current: int
    distance_mm: float
    residual_mm: float
    gate_mm: float


@dataclass(frozen=True)
class Matching:
    """Result of :func:`match_nodules`.

    Attributes
    ----------
    matches
        Matched pairs, by current index.
    current_to_prior
        For each current nodule, the index of its prior nodule, ``None`` for a new one.
    new
        Current nodules without a prior nodule.
    resolved
        Prior nodules without a current nodule.
    """

    matches: list[Match]
    current_to_prior: list[int | None]
    new: list[int]
    resolved: list[int]

    def to_dict(self) -> dict[str, object]:
        return {"matches": [{"prior": m.prior, "current": m.current, "distance_mm": round(m.distance_mm, 2),
                             "residual_mm": round(m.residual_mm, 2), "gate_mm": round(m.gate_mm, 2)}
                            for m in self.matches],
                "new": self.new, "resolved": self.resolved}


def _centres(nodules: Sequence[Located]) -> np.ndarray:
    return np.array([n.center_lps_mm for n in nodules], dtype=np.float64).reshape(-1, 3)


def _assign(prior_mm: np.ndarray, current_mm: np.ndarray, gates: np.ndarray,
            unmatched_cost: float) -> list[tuple[int, int]]:
    """Gated one-to-one assignment minimising distance/gate plus ``unmatched_cost`` per unmatched nodule."""
    n, m = len(prior_mm), len(current_mm)
    if n == 0 or m == 0:
        return []
    dist = np.linalg.norm(prior_mm[:, None, :] - current_mm[None, :, :], axis=2)
    forbidden = 1e6
    cost = np.full((n + m, m + n), forbidden)
    cost[:n, :m] = np.where(dist <= gates, dist / gates, forbidden)
    cost[:n, m:] = np.where(np.eye(n, dtype=bool), unmatched_cost, forbidden)  # prior i unmatched
    cost[n:, :m] = np.where(np.eye(m, dtype=bool), unmatched_cost, forbidden)  # current j unmatched
    cost[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(cost)
    return sorted((int(i), int(j)) for i, j in zip(rows, cols, strict=True)
                  if i < n and j < m and cost[i, j] < forbidden)


def _local_shift(mapped: np.ndarray, current: np.ndarray, pairs: list[tuple[int, int]], p: MatchParams) -> np.ndarray:
    """Per prior nodule, the move (mm) the matched pairs' residuals suggest: their median (three pairs or
    more) plus the leave-one-out, Gaussian-weighted, shrunk mean of what is left around the nodule."""
    shift = np.zeros_like(mapped)
    if len(pairs) < 2:
        return shift
    pi = np.array([i for i, _ in pairs])
    res = current[[j for _, j in pairs]] - mapped[pi]
    common = np.median(res, axis=0) if len(pairs) >= 3 else np.zeros(3)
    d = np.linalg.norm(mapped[:, None, :] - mapped[None, pi, :], axis=2)
    w = np.exp(-0.5 * (d / p.refine_sigma_mm) ** 2)
    w[pi, np.arange(len(pi))] = 0.0  # a pair does not vouch for itself
    return common + (w @ (res - common)) / (w.sum(axis=1, keepdims=True) + p.refine_prior)


def match_nodules(prior: Sequence[Located], current: Sequence[Located],
                  to_current: Callable[[np.ndarray], np.ndarray] | None = None,
                  params: MatchParams | None = None) -> Matching:
    """Match prior nodules to current ones (see the module docstring).

    Parameters
    ----------
    prior, current
        Nodules of each study, centres in that study's LPS (mm), diameters in mm.
    to_current
        Maps prior LPS points (``N x 3``, mm) into the current LPS, e.g.
        :meth:`pacs_node.compare.register.Registration.map_points`; identity when ``None``.
    params
        Gate, costs and refinement.

    Returns
    -------
    Matching
        Pairs with their distances, new current nodules and resolved prior ones.
    """
    p = params or MatchParams()
    pc, cc = _centres(prior), _centres(current)
    mapped = (to_current(pc) if to_current is not None and len(pc) else pc).reshape(-1, 3)
    dp = np.array([float(n.diameter_mm) for n in prior])
    dc = np.array([float(n.diameter_mm) for n in current])
    gates = np.maximum(p.min_gate_mm, p.gate_factor * np.maximum(dp[:, None], dc[None, :])) if len(pc) and len(cc) \
        else np.zeros((len(pc), len(cc)))
    pairs = _assign(mapped, cc, gates, p.unmatched_cost)
    for _ in range(p.refine_rounds):
        refined = mapped + _local_shift(mapped, cc, pairs, p)
        again = _assign(refined, cc, gates, p.unmatched_cost)
        if again == pairs:
            break
        pairs = again
    refined = mapped + _local_shift(mapped, cc, pairs, p) if p.refine_rounds else mapped
    matches = [Match(i, j, float(np.linalg.norm(cc[j] - mapped[i])), float(np.linalg.norm(cc[j] - refined[i])),
                     float(gates[i, j])) for i, j in pairs]
    matches.sort(key=lambda m: m.current)
    back: list[int | None] = [None] * len(cc)
    for m in matches:
        back[m.current] = m.prior
    taken = {m.prior for m in matches}
    return Matching(matches, back, [j for j in range(len(cc)) if back[j] is None],
                    [i for i in range(len(pc)) if i not in taken])
