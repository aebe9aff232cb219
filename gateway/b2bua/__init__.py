"""The back-to-back user agent: two legs per call, trunk/carrier identification, credit enforcement."""

from gateway.b2bua.call import Call, CallState, Leg, passthrough
from gateway.b2bua.core import B2BUA, map_failure
from gateway.b2bua.routing import Origin, identify_source
from gateway.b2bua.stack import SipStack

__all__ = ["B2BUA", "Call", "CallState", "Leg", "Origin", "SipStack", "identify_source", "map_failure",
           "passthrough"]
