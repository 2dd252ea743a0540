"""Affine layers."""
