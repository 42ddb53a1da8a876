"""leakage: how much federated-learning updates leak a client's data.

The command line is ``leakage fit`` / ``leakage sweep``; from Python, :func:`client_update`,
:func:`invert` and :func:`report` drive the same engine (:mod:`leakage.api`).
"""

from .analytic import AnalyticInversion
from .api import InversionResult, Report, bundled_images, client_update, invert, report
from .attack import GradientInversion
from .cpa import CocktailPartyAttack
from .fedavg import FedAvgClient
from .malicious import ImprintAttack, TrapWeightAttack
from .server import ImprintServer, TrapWeightServer

__all__ = ["client_update", "invert", "report", "bundled_images", "FedAvgClient", "InversionResult", "Report",
           "GradientInversion", "AnalyticInversion", "CocktailPartyAttack", "ImprintAttack", "TrapWeightAttack",
           "ImprintServer", "TrapWeightServer"]
