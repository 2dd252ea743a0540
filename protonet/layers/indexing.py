"""Indexing layers."""
