"""wxens forecast."""
