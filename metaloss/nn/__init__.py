"""metaloss.nn."""
