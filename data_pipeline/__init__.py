"""Truth world, reanalysis readers, regridding, normalisation and training data."""

import os

# Intel MKL (torch's CPU BLAS and FFT) otherwise picks its code path by the memory alignment of
# each operand, so the same state can give different last bits at different offsets within a
# batch. Conditional Numerical Reproducibility mode removes that; MKL reads it once, at its
# first call, so it is set here, before any of our code runs a torch operation.
os.environ.setdefault("MKL_CBWR", "AUTO")
