"""Normative alignment of news predictions: NAILS, Steck's calibrated re-ranking, and both."""
