"""Small synthetic studies shared by the detector's tests (seconds to generate)."""

from __future__ import annotations

from collections.abc import Callable

from pacs_node.ml.phantom import Phantom, PlantedNodule, generate_phantom

#: Part of a chest on 1.6 mm pixels and 2.5 mm slices: about half a second per study.
SMALL = {"shape_zyx": (100, 160, 160), "spacing_zyx_mm": (2.5, 1.6, 1.6)}


def find_phantom(accept: Callable[[PlantedNodule], bool], *, first_seed: int = 0, tries: int = 40,
                 **kwargs: object) -> tuple[Phantom, PlantedNodule]:
    """The first small phantom (by seed) with a nodule that ``accept`` likes."""
    for seed in range(first_seed, first_seed + tries):
        p = generate_phantom(seed, **{**SMALL, **kwargs})  # type: ignore[arg-type]
        for n in p.nodules:
            if accept(n):
                return p, n
    raise AssertionError(f"no phantom among seeds {first_seed}..{first_seed + tries - 1} has the wanted nodule")
