"""metaloss.models."""
