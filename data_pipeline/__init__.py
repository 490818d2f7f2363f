"""wxens data_pipeline."""
