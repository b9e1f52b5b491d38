"""The model gateway: agents in network-less Workers reach their model API through it.

See ``gateway.server`` for the lifecycle and ``gateway.app`` for what a call goes through.
"""

from gateway.prices import PriceTable
from gateway.server import SOCKET_NAME, Gateway, socket_path_for
from gateway.settings import GatewaySettings, ModelPrice

__all__ = [
    "SOCKET_NAME",
    "Gateway",
    "GatewaySettings",
    "ModelPrice",
    "PriceTable",
    "socket_path_for",
]
