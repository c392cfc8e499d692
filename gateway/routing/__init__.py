"""Choosing a backend: the route table, policies and live health state."""
