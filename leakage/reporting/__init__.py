"""The report: the callbacks that score a run and write its files, the dashboards (TensorBoard), the
HTML page, run files, loggers, and each kind's views (:mod:`leakage.reporting.views`), which draw
what a kind describes.

Reads the attacks' results, the data, the federated side and the engine; only the doors read it."""
