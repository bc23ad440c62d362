"""Representational similarity analysis and brain-network comparison (placeholder)."""
