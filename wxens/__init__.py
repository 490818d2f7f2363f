"""wxens: huge weather ensembles, verified."""
