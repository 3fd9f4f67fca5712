"""Former home of the training-data code, kept so that old imports keep working.

The code now lives in modules named for what they own:

* :mod:`pacs_node.ml.cases`: where cases come from (LUNA16, DICOM studies, phantom sets);
* :mod:`pacs_node.ml.samples`: the patches sampled from one case, and their fingerprint;
* :mod:`pacs_node.ml.patchstore`: the cache's on-disk form and the streaming reader;
* :mod:`pacs_node.ml.patchcache`: building the cache (resumable, bad cases skipped);
* :mod:`pacs_node.ml.augment`: per-batch augmentation;
* :mod:`pacs_node.ml.batches`: balanced batches and the tensors the network gets.

New code should import from those.
"""

from pacs_node.ml.augment import AugmentParams, augment, symmetry
from pacs_node.ml.batches import batches, center_crop
from pacs_node.ml.cases import DATA_FORMATS, Case, Nodule, PhantomSet, list_cases, load_case_volume, phantom_volume
from pacs_node.ml.patchcache import build_cache
from pacs_node.ml.patchstore import PatchStore
from pacs_node.ml.samples import CACHE_VERSION, SampleParams, build_case, fingerprint

__all__ = [
    "CACHE_VERSION", "DATA_FORMATS", "AugmentParams", "Case", "Nodule", "PatchStore", "PhantomSet", "SampleParams",
    "augment", "batches", "build_cache", "build_case", "center_crop", "fingerprint", "list_cases",
    "load_case_volume", "phantom_volume", "symmetry",
]
