"""metaloss.meta."""
