"""Re-exports for callers of the former `p2p.data.pairs` (temporary; import from the modules).

New homes: `manifest` (SPLITS, Pair, Manifest, load_manifest, iter_pairs, split_of, keys),
`reports` (Problem, InvalidDataset, ImportReport, ValidationReport), `writer` (DatasetWriter),
`sources` (source layouts), `importer` (import_pairs), `validate` (validate_dataset).
"""

from p2p.data.importer import import_pairs
from p2p.data.manifest import MANIFEST, SPLITS, Manifest, Pair, iter_pairs, load_manifest
from p2p.data.reports import ImportReport, InvalidDataset, Problem, ValidationReport
from p2p.data.validate import validate_dataset
from p2p.data.writer import DatasetWriter

__all__ = [
    "MANIFEST",
    "SPLITS",
    "DatasetWriter",
    "ImportReport",
    "InvalidDataset",
    "Manifest",
    "Pair",
    "Problem",
    "ValidationReport",
    "import_pairs",
    "iter_pairs",
    "load_manifest",
    "validate_dataset",
]
