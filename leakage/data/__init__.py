"""The data: the sources of victims (bundled, torchvision, an image folder, a table, captured
gradients) as a LightningDataModule (:mod:`leakage.data.datamodule`), and the kinds of data
(:mod:`leakage.data.kinds`: images, tables), each describing its dummy, priors, decoding and metrics.

Reads the federated side and the engine; the attacks and reports read this room. A kind never
draws itself: the report's views do (:mod:`leakage.reporting.views`)."""
