"""The public evaluation protocol for multimodal rigid registration (Lu et al., PLOS ONE 2022).

:func:`make_eval` cuts an evaluation set from aligned image pairs in exactly the on-disk
layout of the MultiRegEval releases (github.com/MIDA-group/MultiRegEval), :func:`evaluate`
registers every pair of such a set (ours or a released one, unchanged) and scores it,
:func:`compare` puts several results side by side. ``docs/reproduce.md`` lists the facts
of the public framework this follows and where comir differs by design.

Modules, one job each:

* :mod:`~comir.evaluate.protocol` -- levels, published steps and offsets, ground-truth
  transforms, corners, errors, CSV columns;
* :mod:`~comir.evaluate.make` -- set generation (:func:`make_eval`, two tilings);
* :mod:`~comir.evaluate.sets` -- reading sets (:class:`EvalLevel`, :func:`read_level`,
  :func:`read_patch`);
* :mod:`~comir.evaluate.run` -- registering the pairs (:func:`evaluate`, process pool);
  :mod:`~comir.evaluate.encode` -- CoMIRs of the patches (:func:`patch_encoder`);
  :mod:`~comir.evaluate.shards` -- shard files, resuming, merging;
* :mod:`~comir.evaluate.score` -- ``results.csv``, ``summary.json``, success curves;
* :mod:`~comir.evaluate.compare` -- side-by-side tables and figures.
"""

from __future__ import annotations

from comir.evaluate.compare import compare
from comir.evaluate.encode import patch_encoder
from comir.evaluate.make import make_eval
from comir.evaluate.protocol import (
    DIRECTIONS,
    INFO_COLUMNS,
    PUBLISHED,
    RECOVER_COLUMNS,
    REF_COLUMNS,
    RESULT_COLUMNS,
    ROT_STEP_DEG,
    SUCCESS_FRACTION,
    TILINGS,
    TRANS_COLUMNS,
    TRANS_STEP_300,
    ground_truth_matrices,
    level_ranges,
    success_curve,
    translation_step,
)
from comir.evaluate.run import PairResult, evaluate, registration_pool
from comir.evaluate.score import finish
from comir.evaluate.sets import EvalLevel, find_levels, read_level, read_patch
from comir.evaluate.shards import SHARD_FORMAT, merge_shards, shard_status

__all__ = [
    "DIRECTIONS",
    "INFO_COLUMNS",
    "PUBLISHED",
    "RECOVER_COLUMNS",
    "REF_COLUMNS",
    "RESULT_COLUMNS",
    "ROT_STEP_DEG",
    "SHARD_FORMAT",
    "SUCCESS_FRACTION",
    "TILINGS",
    "TRANS_COLUMNS",
    "TRANS_STEP_300",
    "EvalLevel",
    "PairResult",
    "compare",
    "evaluate",
    "find_levels",
    "finish",
    "ground_truth_matrices",
    "level_ranges",
    "make_eval",
    "merge_shards",
    "patch_encoder",
    "read_level",
    "read_patch",
    "registration_pool",
    "shard_status",
    "success_curve",
    "translation_step",
]
