"""The model gateway: agents in network-less Workers reach their model API through it.

See ``gateway.server`` for the lifecycle and ``gateway.app`` for what a call goes through;
``gateway.egress`` is the task's proxy to the hosts an operator allows, served beside it.
"""

from gateway.egress import SOCKET_NAME as EGRESS_SOCKET_NAME
from gateway.prices import PriceTable
from gateway.server import SOCKET_NAME, Gateway, socket_path_for
from gateway.settings import GatewaySettings, ModelPrice

__all__ = [
    "EGRESS_SOCKET_NAME",
    "SOCKET_NAME",
    "Gateway",
    "GatewaySettings",
    "ModelPrice",
    "PriceTable",
    "socket_path_for",
]
