"""Calibration: short, real optimizer, attention, layer and roofline timings on the local device.

The only package that runs torch work. torch is imported inside functions, never at import.
"""
