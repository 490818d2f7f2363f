"""wxens verification."""
