"""Block conversions: element casts, dequantize, requantize, quantize."""
