"""wxens models."""
