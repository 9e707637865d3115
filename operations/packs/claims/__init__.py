"""The claims demo pack: a property-and-casualty claims workflow, its seven agents, default authority limits and
deterministic reference data. Importing the package registers the agents."""

from operations.packs.claims import (
    agents,  # noqa: F401  (registers the agents)
    ml,  # noqa: F401, E402  (registers the ML agents and their trainers)
)
