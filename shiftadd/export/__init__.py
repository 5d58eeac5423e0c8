"""Export trained models to integer inference: the integer reference network and standalone C."""
from shiftadd.export.cgen import export_c, generate_c
from shiftadd.export.intnet import IntegerNetwork, build_integer_network

__all__ = ["IntegerNetwork", "build_integer_network", "export_c", "generate_c"]
