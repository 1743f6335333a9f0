"""metaloss.utils."""
