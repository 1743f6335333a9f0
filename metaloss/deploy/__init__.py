"""Deployment: using a trained model, a layer on top of the core that the core never imports.

* :mod:`metaloss.deploy.model`: :func:`load_model` (a checkpoint or a pretrained model → networks);
* :mod:`metaloss.deploy.fuse`: :func:`fuse_pair`, :func:`generator_maps`, :func:`fuse_images`,
  :func:`write_png`, :func:`heatmap`; the engine choice;
* :mod:`metaloss.deploy.tiling`: :func:`plan_tiling`, blend tiling and exact tiling (Restormer
  backbones stage by stage in chunks, through ``DualStreamRestormer.run_stages``);
* :mod:`metaloss.deploy.engine`: the fast CPU engine for Restormer backbones;
* :mod:`metaloss.deploy.allocator`: the C-heap policy of a fusing process;
* :mod:`metaloss.deploy.export`: ONNX export and its check.

The checkpoint format and building plugins from a config belong to the core
(:mod:`metaloss.checkpoint`); the networks expose what deployment needs (``metaloss.nn.restormer``:
an attention function per call, ``attention_calls``, ``run_stages``, ``backbones_run_by``).
``metaloss fuse`` and ``metaloss export`` (``metaloss.cli.fuse``, ``metaloss.cli.export``) are its commands.
"""

from metaloss.deploy.fuse import Engine, FusedImage, fuse_images, fuse_pair, generator_maps, heatmap, write_png
from metaloss.deploy.model import FusionModel, InferenceError, NoPretrainedModelError, load_model
from metaloss.deploy.tiling import TilePlan, plan_tiling

__all__ = [
    "Engine",
    "FusedImage",
    "FusionModel",
    "InferenceError",
    "NoPretrainedModelError",
    "TilePlan",
    "fuse_images",
    "fuse_pair",
    "generator_maps",
    "heatmap",
    "load_model",
    "plan_tiling",
    "write_png",
]
