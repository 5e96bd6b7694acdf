"""vsbench: verification-centric benchmarking of sparse certified-robust networks."""
__version__ = "0.1.0"
