"""The client's side: audit the model a federated-learning server sent before training on it.

``leakage audit`` (:mod:`leakage.audit.command`) and ``leakage.audit(...)`` (:func:`leakage.audit.run.audit`)
run the checks (:mod:`leakage.audit.structure`, :mod:`leakage.audit.rounds`, :mod:`leakage.audit.batchchecks`) and
the attack the audit fears on the client's own batch (:mod:`leakage.audit.leaks`). A door-level room: it imports the attacks, the
federated side, the data and the report's HTML style; nothing below imports it.
"""

from leakage.audit.base import Check, Finding, Received
from leakage.audit.batchchecks import DSNR, SingleSampleUnits
from leakage.audit.leaks import WhatLeaks
from leakage.audit.result import AuditResult
from leakage.audit.rounds import ReplacedLayers
from leakage.audit.run import audit, default_checks
from leakage.audit.structure import ArchitectureDrift, ClassTargeted, ImprintRows, TransmitSNR, TrapWeights

__all__ = ["audit", "default_checks", "AuditResult", "Check", "Finding", "Received", "ArchitectureDrift", "ReplacedLayers",
           "ImprintRows", "TrapWeights", "ClassTargeted", "TransmitSNR", "DSNR", "SingleSampleUnits", "WhatLeaks"]
