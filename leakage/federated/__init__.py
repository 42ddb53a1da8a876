"""The federated side: the server and its threat model (honest-but-curious or malicious), the
client protocols that turn a batch into the update it shares (FedSGD, FedAvg), the defenses applied
before the attacker observes it, and captured updates read from a file.

Reads the engine only; the data sources, attacks and reports read this room, never the reverse."""
