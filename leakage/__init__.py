"""leakage: how much federated-learning updates leak a client's data.

The command line is ``leakage fit`` / ``leakage sweep``; from Python, :func:`client_update`,
:func:`invert` and :func:`report` drive the same engine (:mod:`leakage.api`); ``leakage audit`` and
:func:`audit` check, on the client's side, the model a server sent (:mod:`leakage.audit`; the name
``leakage.audit`` is the function, its package is imported as ``from leakage.audit import ...``).
"""

from leakage.attacks.analytic import AnalyticInversion
from leakage.api import Report, audit, bundled_images, client_update, invert, report
from leakage.attacks.gradient_inversion import GradientInversion
from leakage.attacks.cpa import CocktailPartyAttack
from leakage.federated.fedavg import FedAvg, FedAvgClient
from leakage.attacks.imprint import ImprintAttack
from leakage.attacks.trap_weights import TrapWeightAttack
from leakage.attacks.fishing import FishingAttack
from leakage.federated.server import FishingServer, ImprintServer, TrapWeightServer
from leakage.federated.labeldp import RandomizedResponse, RRWithPrior
from leakage.federated.soteria import Soteria
from leakage.attacks.tokenset import TokenSetAttack
from leakage.attacks.tag import TAG
from leakage.attacks.dager import DagerAttack
from leakage.attacks.decepticons import DecepticonAttack
from leakage.federated.decepticons import DecepticonServer
from leakage.attacks.bottleneck import BottleneckInversion
from leakage.records import InversionResult

__all__ = ["client_update", "invert", "report", "audit", "bundled_images", "FedAvg", "FedAvgClient", "InversionResult", "Report",
           "GradientInversion", "AnalyticInversion", "CocktailPartyAttack", "ImprintAttack", "TrapWeightAttack",
           "ImprintServer", "TrapWeightServer", "FishingAttack", "FishingServer",
           "RandomizedResponse", "RRWithPrior", "Soteria", "TokenSetAttack", "TAG", "DagerAttack", "DecepticonAttack",
           "DecepticonServer", "BottleneckInversion"]
