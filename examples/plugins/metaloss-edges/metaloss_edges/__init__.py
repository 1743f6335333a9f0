"""metaloss-edges: a third-party metaloss plugin.

- ``EdgeTask`` (``metaloss.tasks`` entry point ``edges``): the meta-objective is edge detection on the
  fused image: a small CNN, trained from scratch in the loop, predicts the Sobel edges of the source
  images from the fused image; scored by precision, recall, F1 and IoU of the edge maps.
- ``PixelMLPLossGenerator`` (``metaloss.loss_generators`` entry point ``pixel_mlp``): per-pixel loss
  weights from an MLP on hand-made per-pixel features (intensities, gradient magnitudes, local contrast).

Nothing in metaloss knows about this package: it is found through its entry points.
"""

from metaloss_edges.edges import edge_map, sobel_magnitude
from metaloss_edges.generator import PixelMLPLossGenerator
from metaloss_edges.task import EdgeScores, EdgeTask

__all__ = ["EdgeScores", "EdgeTask", "PixelMLPLossGenerator", "edge_map", "sobel_magnitude"]
__version__ = "0.1.0"
