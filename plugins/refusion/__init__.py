"""ReFusion: a loss generator driven by reconstructing the source images."""
