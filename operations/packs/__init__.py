"""Workflow packs: a workflow definition, its agents and reference data, installed by a management command.

A pack is a package whose import registers its agents. ``SELFOPS_PACKS`` (settings) lists the packs every process
imports at start, so web and workers know the same agents.
"""

from importlib import import_module

from django.conf import settings


def load_installed_packs() -> list:
    return [import_module(name) for name in getattr(settings, "SELFOPS_PACKS", ["operations.packs.claims"])]
