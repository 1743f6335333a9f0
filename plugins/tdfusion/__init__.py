"""TDFusion: a loss generator driven by a downstream segmentation or detection task."""
