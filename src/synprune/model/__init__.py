"""Models: loading with a tokenizer, unit masking, and reading projection inputs on calibration data."""
