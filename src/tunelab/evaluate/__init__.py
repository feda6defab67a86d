"""Evaluation: A1111 prompt syntax, samplers, batched sampling, infotext, XYZ grids, model merge."""
