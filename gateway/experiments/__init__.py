"""A/B and A/A experiments between backends (issue 6): arm assignment, sample-ratio checks, analysis."""
