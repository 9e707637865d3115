"""Signals governance sends; the engine listens (governance never imports the engine)."""

from django.dispatch import Signal

# sent on commit after a stop switch is released: kwargs scope, target
stop_released = Signal()
