"""Distributed training: launcher environment checks, strategies, exact resume, atomic checkpoints, export."""
