"""Matplotlib figures (no pyplot state): training curves, geometry, correlation."""
