"""The engine: the plumbing every room runs on: optimizers, distances, stopping, the best iterate,
seeding, memory estimates and the allocator, precision, processes (distributed), interrupts, target
models, input files, range checks, one-line errors and reconstruction metrics.

Reads no other room of the package."""
