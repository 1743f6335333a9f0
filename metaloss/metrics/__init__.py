"""Fusion metrics on torch tensors, in named profiles (conventions of a reference code base).

Quick use::

    from metaloss.metrics import evaluate, PROFILES
    vals = evaluate(fused, ir, vi)                      # cddfuse profile, all 12 metrics
    vals = evaluate(fused, ir, vi, profile="vifb", metrics=["Qabf", "SSIM"])
    PROFILES["cddfuse"].higher_is_better["MSE"]         # False

    from metaloss.metrics import evaluate_folders
    res = evaluate_folders("ir/", "vi/", ["fused/A", "fused/B"], profile="tdfusion")
    res.means(), res.best(), res.write_json("metrics.json")

Profiles (see docs/metrics.md): ``cddfuse`` (default; CDDFuse's ``utils/Evaluator.py``),
``vifb`` (the VIFB MATLAB toolkit, per colour channel), ``tdfusion`` (TDFusion's ``Evaluator.py``)
and ``mefb`` (the MEFB MATLAB toolkit's 20 metrics, with MEF-SSIM). Tensors are ``[B, C, H, W]``
on a 0–255 scale; values come back as ``[B]``.
"""

from metaloss.data.pairs import list_images
from metaloss.metrics.api import MIN_SIZE, evaluate
from metaloss.metrics.folders import (
    FolderEvaluation,
    ImageRecord,
    MethodResult,
    evaluate_folders,
    load_image_tensor,
)
from metaloss.metrics.profiles import DEFAULT_PROFILE, PROFILES, VIFB_NAMES, MetricSpec, Profile, get_profile

__all__ = [
    "DEFAULT_PROFILE",
    "MIN_SIZE",
    "PROFILES",
    "VIFB_NAMES",
    "FolderEvaluation",
    "ImageRecord",
    "MethodResult",
    "MetricSpec",
    "Profile",
    "evaluate",
    "evaluate_folders",
    "get_profile",
    "list_images",
    "load_image_tensor",
]
