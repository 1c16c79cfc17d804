"""Publish/subscribe on the kosmos subject hierarchy: the embedded broker and its client."""

from kosmos_grpc.bus.backends import open_bus
from kosmos_grpc.bus.broker import BUS_SERVICE, BrokerServer, EventBusServicer
from kosmos_grpc.bus.client import GrpcEventBus
from kosmos_grpc.bus.event import Event
from kosmos_grpc.bus.local import LocalBus
from kosmos_grpc.bus.nats_backend import NatsEventBus
from kosmos_grpc.bus.protocol import EventBus
from kosmos_grpc.bus.subscription import DEFAULT_CAPACITY, Subscription

__all__ = [
    "BUS_SERVICE",
    "DEFAULT_CAPACITY",
    "BrokerServer",
    "Event",
    "EventBus",
    "EventBusServicer",
    "GrpcEventBus",
    "LocalBus",
    "NatsEventBus",
    "Subscription",
    "open_bus",
]
