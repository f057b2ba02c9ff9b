"""Measuring: per-block compute cost, link bandwidth and RTT, and the profile records."""
