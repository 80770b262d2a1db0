"""Calibration of cost models from measurements, and comparison of simulation with real runs."""
