"""metaloss.data."""
