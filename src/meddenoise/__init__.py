"""meddenoise: train, evaluate and audit deep denoisers for medical images."""

__version__ = "0.1.0"
