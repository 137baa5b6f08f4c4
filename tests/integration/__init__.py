"""Shared helpers for the node/workflow tests and the real-ComfyUI integration test."""
