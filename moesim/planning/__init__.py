"""Sweeps, results store, cluster sizing search and reports."""
