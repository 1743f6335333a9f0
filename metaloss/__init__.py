"""metaloss: learn the loss function of an image-fusion network by meta-learning."""

__version__ = "0.1.0"
