"""metaloss.metrics."""
