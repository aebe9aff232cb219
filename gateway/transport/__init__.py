"""The asyncio edge: UDP and TCP sockets carrying SIP bytes, nothing else."""

from gateway.transport.tcp import TcpTransport
from gateway.transport.udp import UdpTransport

__all__ = ["TcpTransport", "UdpTransport"]
