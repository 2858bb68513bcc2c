"""The contracts the C side implements too: tensor files, artifacts, kernel signatures, serial frames, dtypes."""
