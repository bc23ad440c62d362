"""Shared pure-JAX pieces: linear algebra, HMM message passing, GP kernels, iteration loops.

Models import from here instead of writing their own copies.
"""
