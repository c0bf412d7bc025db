"""Thin protocol adapters (HTTP, gRPC) over the one InferenceService."""
