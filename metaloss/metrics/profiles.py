"""Metric profiles: which formulas a table of fusion metrics was computed with.

There is no single standard for infrared–visible fusion metrics; published numbers come from
code bases that disagree (sum or mean over the two sources, MI units, SSIM window and data range,
per-channel evaluation of colour images). A :class:`Profile` names one code base's conventions
and lists its metrics, each with its direction (higher or lower is better).

- ``cddfuse`` (default): CDDFuse's ``utils/Evaluator.py`` — grey 0–255 images, 12 metrics.
- ``vifb``: the VIFB MATLAB toolkit — each colour channel of the fused image, averaged; 13 metrics.
- ``tdfusion``: TDFusion's ``Evaluator.py`` — CDDFuse's, with VIF and SSIM averaged over the two
  sources (and SSIM on uint8 images, data range 255).
- ``mefb``: the MEFB MATLAB toolkit (multi-exposure and multi-focus benchmarks) — 20 metrics, each
  on the images as read (:mod:`metaloss.metrics.mefb`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from metaloss.metrics import cddfuse as _cdd
from metaloss.metrics import tdfusion as _td
from metaloss.metrics import vifb as _vifb
from metaloss.metrics._ops import cached, rgb_to_gray_bt601_f32, rgb_to_gray_matlab

__all__ = ["DEFAULT_PROFILE", "PROFILES", "MetricSpec", "Profile", "get_profile"]


class MetricFn(Protocol):
    """A metric's kernel: ``fn(fused, ir, vi, cache) -> [B]`` values (``cache``: see ``_ops.cached``, or None)."""

    def __call__(self, f: Tensor, ir: Tensor, vi: Tensor, cache: dict | None, /) -> Tensor: ...


PrepareFn = Callable[[Tensor, Tensor, Tensor, str], "tuple[Tensor, Tensor, Tensor]"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a profile.

    ``fn(fused, ir, vi, cache)`` takes the profile-prepared float64 tensors ``[B, C, H, W]``
    (sources may have batch 1) and a cache for source-only work (or None) and returns ``[B]``.
    ``sources`` names the preparation variant the metric needs (only the ``vifb`` profile has more
    than one: MATLAB's ``rgb2gray`` rounds for uint8 input).
    ``min_size``: the smallest image side the metric gives a finite value for (its window, its
    differences or its scales need that many pixels); a run checks its validation images against it.
    """

    name: str
    fn: MetricFn = field(repr=False)
    higher_is_better: bool
    description: str
    sources: str = "default"
    min_size: int = 1

    @property
    def direction(self) -> str:
        """'higher' or 'lower' (which is better)."""
        return "higher" if self.higher_is_better else "lower"


@dataclass(frozen=True)
class Profile:
    """A named set of metric conventions (see the module docstring)."""

    name: str
    description: str
    specs: tuple[MetricSpec, ...]
    prepare: PrepareFn = field(repr=False)
    #: Names the reference code uses, where they differ from ours (e.g. VIFB's "Variance").
    reference_names: Mapping[str, str] = field(default_factory=dict)
    #: How the reference code reads an image file: ``"gray"`` (CDDFuse's ``image_read_cv2(path,
    #: 'GRAY')``) or ``"matlab"`` (MATLAB's ``imread``: the stored channels in RGB order).
    reads: str = "gray"

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names in table order."""
        return tuple(s.name for s in self.specs)

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return {s.name: s.higher_is_better for s in self.specs}

    def __getitem__(self, name: str) -> MetricSpec:
        for s in self.specs:
            if s.name == name:
                return s
        for s in self.specs:  # case-insensitive, and the reference code's spelling
            if s.name.lower() == name.lower() or self.reference_names.get(s.name, "").lower() == name.lower():
                return s
        raise KeyError(f"profile {self.name!r} has no metric {name!r}; it has {', '.join(self.metrics)}")

    def __contains__(self, name: object) -> bool:
        try:
            self[str(name)]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[MetricSpec]:
        return iter(self.specs)

    def resolve(self, metrics: str | Sequence[str] | None) -> list[MetricSpec]:
        """Specs for ``metrics`` (all when None), in the order given; unknown names raise KeyError."""
        if metrics is None:
            return list(self.specs)
        if isinstance(metrics, str):
            metrics = [metrics]
        out: list[MetricSpec] = []
        for m in metrics:
            s = self[m]
            if s not in out:
                out.append(s)
        return out


# ------------------------------------------------------------------------------------ preparation
def _drop_alpha(x: Tensor) -> Tensor:
    return x[:, :3] if x.shape[1] == 4 else x


def _gray_cddfuse(x: Tensor) -> Tensor:
    """Grey as CDDFuse's ``image_read_cv2(path, 'GRAY')`` makes it: colour → float32 BT.601 → round."""
    x = _drop_alpha(x)
    if x.shape[1] == 1:
        return x
    return torch.round(rgb_to_gray_bt601_f32(x))


def _prepare_gray(f: Tensor, ir: Tensor, vi: Tensor, variant: str) -> tuple[Tensor, Tensor, Tensor]:
    return _gray_cddfuse(f), _gray_cddfuse(ir), _gray_cddfuse(vi)


def _prepare_vifb(f: Tensor, ir: Tensor, vi: Tensor, variant: str) -> tuple[Tensor, Tensor, Tensor]:
    f, ir, vi = _drop_alpha(f), _drop_alpha(ir), _drop_alpha(vi)
    k = f.shape[1]
    if k == 3:
        # Colour fused image: channel k against VI(:,:,k) and IR(:,:,k) (a grey source is used for
        # every channel, as VIFB does for the grey IR).
        ir = ir.expand(-1, 3, -1, -1) if ir.shape[1] == 1 else ir
        vi = vi.expand(-1, 3, -1, -1) if vi.shape[1] == 1 else vi
        return f, ir, vi
    # Grey fused image: VIFB's metrics convert colour sources with rgb2gray, which rounds when the
    # source is still uint8 in that metric's code ("uint8") and does not when it was made double.
    as_uint8 = variant == "uint8"
    ir = rgb_to_gray_matlab(ir, uint8=as_uint8) if ir.shape[1] == 3 else ir
    vi = rgb_to_gray_matlab(vi, uint8=as_uint8) if vi.shape[1] == 3 else vi
    return f, ir, vi


# ---------------------------------------------------------------------------------------- specs
def _grey(kernel: Callable[..., Tensor], uses_sources: bool = True) -> MetricFn:
    if uses_sources:
        return lambda f, ir, vi, cache=None: kernel(f, ir, vi, cache=cache)[:, 0]
    return lambda f, ir, vi, cache=None: kernel(f)[:, 0]


def _channel(x: Tensor, k: int, cache: dict | None) -> Tensor:
    """Channel ``k`` of a source as ``[B, 1, H, W]``; the same tensor object on every call with the
    same cache (the cache keys source-only work by tensor identity), and channel 0 for a grey
    source expanded to colour."""
    if x.shape[1] == 1 or x.stride(1) == 0:
        k = 0
    if cache is None:
        return x[:, k : k + 1]
    key = ("channel", id(x), k)
    hit = cache.get(key)
    if hit is None or hit[0] is not x:
        hit = (x, x[:, k : k + 1])
        cache[key] = hit
    return hit[1]


def _per_channel(kernel: Callable[..., Tensor], uses_sources: bool = True) -> MetricFn:
    """VIFB's colour rule: the metric of each channel, averaged. Channels are evaluated one at a
    time (a smaller working set is much faster on the CPU)."""

    def fn(f: Tensor, ir: Tensor, vi: Tensor, cache: dict | None = None) -> Tensor:
        vals = []
        for k in range(f.shape[1]):
            fk = _channel(f, k, cache)  # a stable object, so metrics can share work on it
            if uses_sources:
                v = kernel(fk, _channel(ir, k, cache), _channel(vi, k, cache), cache=cache)
            else:
                v = kernel(fk)
            vals.append(v[:, 0])
        return torch.stack(vals, dim=1).mean(dim=1)

    return fn


def _matlab_grey(x: Tensor, uint8: bool, cache: dict | None) -> Tensor:
    """A colour image as MATLAB's ``rgb2gray`` makes it (rounded when ``uint8``: the image is still
    uint8 there), cached by tensor identity; a grey image as is."""
    if x.shape[1] == 1:
        return x
    return cached(cache, f"matlab-rgb2gray-{uint8}", x, lambda: rgb_to_gray_matlab(x, uint8=uint8))


def _mefb_rule(
    kernel: Callable[..., Tensor],
    uses_sources: bool = True,
    *,
    uint8_sources: bool = True,
    rgb2gray_fused: bool = False,
) -> MetricFn:
    """MEFB's colour rule, which each of its ``metricsX(imgA, imgB, F)`` repeats on the uint8 arrays
    ``imread`` gives, around a per-channel ``kernel``:

    - colour F with two grey sources: F's first channel (``rgb2gray_fused``: F through ``rgb2gray``,
      unrounded, as ``metricsAvg_gradient`` does);
    - grey F: the metric once, colour sources through ``rgb2gray`` (rounded when the ``.m`` converts
      them while uint8: ``uint8_sources``; where MATLAB fails on this combination, rounded);
    - otherwise the metric of each channel k on ``A(:,:,k)``, ``B(:,:,k)``, ``F(:,:,k)``, averaged; a
      grey source with a colour one (where MATLAB fails) serves every channel.
    """
    per_channel = _per_channel(kernel, uses_sources)

    def fn(f: Tensor, a: Tensor, b: Tensor, cache: dict | None = None) -> Tensor:
        if f.shape[1] == 3 and a.shape[1] == 1 and b.shape[1] == 1:
            f = rgb_to_gray_matlab(f, uint8=False) if rgb2gray_fused else f[:, :1]
        elif f.shape[1] == 1 and uses_sources:
            a, b = _matlab_grey(a, uint8_sources, cache), _matlab_grey(b, uint8_sources, cache)
        return per_channel(f, a, b, cache)

    return fn


_CDDFUSE_SPECS = (
    MetricSpec("EN", _grey(_cdd.entropy, False), True, "entropy of the fused image (bits)"),
    MetricSpec("SD", _grey(_cdd.std, False), True, "standard deviation of the fused image"),
    MetricSpec("SF", _grey(_cdd.spatial_frequency, False), True, "spatial frequency", min_size=2),
    MetricSpec("AG", _grey(_cdd.average_gradient, False), True, "average gradient", min_size=2),
    MetricSpec("MI", _grey(_cdd.mutual_information), True, "mutual information, MI(F,A)+MI(F,B), nats"),
    MetricSpec("SCD", _grey(_cdd.scd), True, "sum of the correlations of differences", min_size=2),
    MetricSpec("VIF", _grey(_cdd.vif), True, "pixel-domain VIF, VIFp(A,F)+VIFp(B,F)", min_size=41),
    MetricSpec("Qabf", _grey(_cdd.qabf), True, "edge-information preservation (Xydeas–Petrović)", min_size=2),
    MetricSpec("SSIM", _grey(_cdd.ssim), True, "SSIM(F,A)+SSIM(F,B), 7×7 uniform window, data_range=2", min_size=7),
    MetricSpec("CC", _grey(_cdd.cc), True, "correlation coefficient, mean over the sources", min_size=2),
    MetricSpec("PSNR", _grey(_cdd.psnr), True, "10·log10(max(F)²/MSE), dB"),
    MetricSpec("MSE", _grey(_cdd.mse), False, "mean squared error, mean over the sources"),
)


def _replace(specs: tuple[MetricSpec, ...], **new: MetricSpec) -> tuple[MetricSpec, ...]:
    return tuple(new.get(s.name, s) for s in specs)


_TDFUSION_SPECS = _replace(
    _CDDFUSE_SPECS,
    VIF=MetricSpec("VIF", _grey(_td.vif), True, "pixel-domain VIF, mean of VIFp(A,F) and VIFp(B,F)", min_size=41),
    SSIM=MetricSpec("SSIM", _grey(_td.ssim), True, "mean of SSIM(F,A), SSIM(F,B) on uint8, data_range=255", min_size=7),
)

_VIFB_SPECS = (
    MetricSpec("EN", _per_channel(_vifb.entropy, False), True, "entropy (bits)"),
    MetricSpec(
        "MI", _per_channel(_vifb.mutual_information), True, "MI(VI,F)+MI(IR,F), min–max normalised, nats", "uint8"
    ),
    MetricSpec("AG", _per_channel(_vifb.average_gradient, False), True, "average gradient, Σ/((M−1)(N−1))", min_size=2),
    MetricSpec("SD", _per_channel(_vifb.std, False), True, "standard deviation (VIFB's 'Variance')"),
    MetricSpec(
        "SF", lambda f, ir, vi, cache=None: _vifb.spatial_frequency(f), True, "spatial frequency, denominators M·N"
    ),
    MetricSpec("EI", _per_channel(_vifb.edge_intensity, False), True, "edge intensity (mean Sobel magnitude)"),
    MetricSpec("CE", _per_channel(_vifb.cross_entropy), False, "cross entropy, mean over the sources (bits)", "uint8"),
    MetricSpec(
        "Qabf", _per_channel(_vifb.qabf), True, "edge-information preservation (Xydeas–Petrović)", "double", min_size=2
    ),
    MetricSpec(
        "SSIM", _per_channel(_vifb.ssim), True, "SSIM(VI,F)+SSIM(IR,F), 11×11 Gaussian window", "uint8", min_size=11
    ),
    MetricSpec("PSNR", _per_channel(_vifb.psnr), True, "20·log10(255/sqrt(e)), e as in RMSE, dB", "double"),
    MetricSpec("RMSE", _per_channel(_vifb.rmse), False, "mean over the sources of sqrt(Σ(S−F)²)/(M·N)", "double"),
    MetricSpec("Qcb", _per_channel(_vifb.qcb), True, "Chen–Blum perceptual quality", "double", min_size=2),
    MetricSpec("Qcv", _per_channel(_vifb.qcv), False, "Chen–Varshney regional distortion", "double", min_size=2),
)

#: Our metric name → VIFB's (``metrics<Name>.m``; the keys of ``matlab_metrics.json``).
VIFB_NAMES = {
    "EN": "Entropy",
    "MI": "Mutinf",
    "AG": "Avg_gradient",
    "SD": "Variance",
    "SF": "Spatial_frequency",
    "EI": "Edge_intensity",
    "CE": "Cross_entropy",
    "Qabf": "Qabf",
    "SSIM": "Ssim",
    "PSNR": "Psnr",
    "RMSE": "Rmse",
    "Qcb": "Qcb",
    "Qcv": "Qcv",
}

# The mefb metrics build on the colour rules above, so their module comes after them.
from metaloss.metrics.mefb import MEFB_NAMES, MEFB_SPECS  # noqa: E402
from metaloss.metrics.mefb import prepare as _prepare_mefb  # noqa: E402

PROFILES: dict[str, Profile] = {
    "cddfuse": Profile(
        "cddfuse",
        "CDDFuse utils/Evaluator.py: grey 0-255, MI in nats, VIF and SSIM summed over the sources, "
        "SSIM data_range=2 (scikit-image 0.19 on float32)",
        _CDDFUSE_SPECS,
        _prepare_gray,
    ),
    "vifb": Profile(
        "vifb",
        "VIFB MATLAB toolkit: every colour channel of the fused image, averaged; MI in nats on "
        "min-max normalised images; SSIM 11x11 Gaussian, summed over the sources",
        _VIFB_SPECS,
        _prepare_vifb,
        VIFB_NAMES,
        reads="matlab",
    ),
    "tdfusion": Profile(
        "tdfusion",
        "TDFusion Evaluator.py: as cddfuse, but VIF and SSIM are the mean over the two sources "
        "(SSIM on uint8, data_range=255)",
        _TDFUSION_SPECS,
        _prepare_gray,
    ),
    "mefb": Profile(
        "mefb",
        "MEFB MATLAB toolkit (multi-exposure; MFIFB uses the same code): each metric on the images as "
        "imread gives them, per colour channel averaged; 20 metrics with MEF-SSIM",
        MEFB_SPECS,
        _prepare_mefb,
        MEFB_NAMES,
        reads="matlab",
    ),
}

DEFAULT_PROFILE = "cddfuse"


def get_profile(profile: str | Profile) -> Profile:
    """The :class:`Profile` named ``profile`` (or ``profile`` itself)."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile.lower()]
    except KeyError:
        raise KeyError(f"unknown metric profile {profile!r}; known: {', '.join(PROFILES)}") from None
