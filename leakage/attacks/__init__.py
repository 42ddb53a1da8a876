"""The attacks: what every attack is (:mod:`leakage.attacks.family`), and one file per attack: the
optimisation attack (DLG, iDLG, Inverting Gradients, TabLeak), the closed forms (analytic, Cocktail
Party, a malicious server's imprint and trap weights), label restoration and identifiability.

Each reads an :class:`~leakage.records.Observation` and produces the same result record; attacks
read the data, the federated side and the engine, never the report or the doors."""
