"""Quantize a gesture CNN for the ESP32-S3 with esp-ppq and check the chip against the simulator."""

__version__ = "1.0.0"
