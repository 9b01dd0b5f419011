"""The live view: a self-contained web page and the SSE hub that feeds it (docs/dashboard.md)."""

from callbridge.dashboard.live import LiveHub, Subscription, SubscriptionClosed, TooManySubscribers
from callbridge.dashboard.page import DashboardPage, load_page

__all__ = [
    "DashboardPage",
    "LiveHub",
    "Subscription",
    "SubscriptionClosed",
    "TooManySubscribers",
    "load_page",
]
