"""Tango devices over the tango-dqm core: the only package that imports ``tango``."""
